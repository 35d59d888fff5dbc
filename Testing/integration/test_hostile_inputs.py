"""Hostile and unusual inputs, grouped by the classes of issue 10 (data loss and model packages are tested in
test_package*/test_card*). Every case asserts the exit code, the single stderr line, no traceback and the
exact files on disk before and after.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from addiagnosis import RESEARCH_USE
from addiagnosis.cli.main import main
from addiagnosis.errors import InputError
from addiagnosis.io.checks import check_volume
from addiagnosis.io.outputs import STAGING_PREFIX, OutputSet, clean_stale_staging, unique_names
from addiagnosis.io.volume import Volume, read_nifti

from conftest import make_scan

LOGIC = str(Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Logic")


# ------------------------------------------------------------------------------------------------ helpers

def without_qc(err: str) -> str:
    """stderr less the quality-control lines (``<scan>: QC warn|fail ...``): the small 4 mm test scans are too
    coarse for the 2 mm test model, which the CLI rightly says; these tests look at everything else."""
    return "".join(line for line in err.splitlines(True) if not re.search(r": QC (warn|fail) \(", line))

def small_scan(seed=1) -> tuple[np.ndarray, np.ndarray]:
    arr, aff = make_scan("ras-1mm", noise_seed=seed)
    aff = aff.copy()
    aff[:3, :3] *= 4
    return arr[::4, ::4, ::4].copy(), aff


def nifti_bytes(data, affine=None, header_class=nib.Nifti1Image, **fields) -> bytes:
    """A single-file NIfTI image as bytes, header fields then patched raw (no validation by nibabel)."""
    img = header_class(data, np.eye(4) if affine is None else affine)
    blob = img.to_bytes()
    size = int(img.header["sizeof_hdr"])
    hdr = type(img.header)(binaryblock=blob[:size], check=False)
    for key, value in fields.items():
        hdr[key] = value
    return hdr.binaryblock + blob[size:]


def write(path: Path, blob: bytes, gz: bool | None = None) -> Path:
    if gz if gz is not None else str(path).endswith(".gz"):
        blob = gzip.compress(blob, 1)
    path.write_bytes(blob)
    return path


def tree(root: Path) -> list[str]:
    """Every entry under root (hidden ones included), relative, sorted."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_cli(capsys, *argv):
    code = main([str(a) if not isinstance(a, bytes) else os.fsdecode(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code, err, needle):
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("addiagnosis: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in err


def refused(path: Path, needle: str):
    with pytest.raises(InputError) as info:
        read_nifti(path)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = LOGIC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# ------------------------------------------- class 2: batch never overwrites one scan's results with another's
def test_unique_names_are_collision_proof():
    names = unique_names(["x-3.nii.gz", "x.nii.gz", "sub/x.nii.gz", "a/x.nii.gz", "X.nii.gz", "...nii.gz", ".nii.gz",
                          "summary.tsv.nii.gz", "we\nird.nii", os.fsdecode(b"bad\xff.nii.gz")],
                         reserved={"summary.tsv"})
    assert names[:5] == ["x-3", "x", "x-2", "x-4", "X-5"]
    assert names[5] == "_.." and names[6] == "_"
    assert names[7] == "summary.tsv-2"
    assert names[8] == "we_nird" and names[9] == "bad_xff"
    assert len({n.casefold() for n in names}) == len(names)
    for n in names:
        assert "/" not in n and n not in (".", "..") and not n.startswith(".")
        n.encode("utf-8")  # always valid UTF-8


def test_batch_collisions_each_scan_its_own_folder(tmp_path, capsys, tiny_package):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    scans = [src / "x-3.nii.gz", src / "x.nii.gz", src / "sub" / "x.nii.gz", src / "...nii.gz"]
    for k, p in enumerate(scans):
        write(p, nifti_bytes(*small_scan(seed=k + 1)))
    out = src / "cohort"
    code, stdout, err = run_cli(capsys, "batch", *scans, "--model", tiny_package, "--out", out,
                                "--save", "relevance,report", "--workers", "0", "-q")
    assert code == 0 and without_qc(err) == "", err
    rows = {r["path"]: r for r in csv.DictReader(open(out / "results.tsv", encoding="utf-8"), delimiter="\t")}
    assert sorted(r["output"] for r in rows.values()) == ["scans/_..", "scans/x", "scans/x-3", "scans/x~2"]
    for scan in scans:  # each folder holds its own scan's files
        row = rows[str(scan)]
        assert json.loads((out / row["output"] / "report.json").read_text())["scan"]["path"] == str(scan)
        assert sorted(p.name for p in (out / row["output"]).iterdir()) == ["relevance.nii.gz", "report.json"]
    assert sorted(p.name for p in src.iterdir()) == sorted(["x-3.nii.gz", "x.nii.gz", "sub", "...nii.gz", "cohort"])


def test_batch_keeps_the_users_own_entries(tmp_path, capsys, tiny_package):
    a = write(tmp_path / "a.nii.gz", nifti_bytes(*small_scan(1)))
    b = write(tmp_path / "notes.nii.gz", nifti_bytes(*small_scan(2)))
    out = tmp_path / "cohort"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("precious")
    args = ["--model", tiny_package, "--out", out, "--save", "relevance", "--workers", "0", "-q"]
    assert run_cli(capsys, "batch", a, b, *args)[0] == 0
    assert (out / "notes" / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in (out / "scans").iterdir()) == ["a", "notes"]
    # a second run with other scans: its table holds those scans; the user's folder stays
    assert run_cli(capsys, "batch", b, *args)[0] == 0
    rows = list(csv.DictReader(open(out / "results.tsv", encoding="utf-8"), delimiter="\t"))
    assert [r["scan_id"] for r in rows] == ["notes"] and (out / "notes" / "mine.txt").read_text() == "precious"


# ----------------------------------------------------------- class 4: refusals instead of misleading results
def label_volume(dtype):
    labels = np.zeros((40, 48, 40), dtype)
    labels[5:35, 5:40, 5:35] = 2
    labels[10:20, 10:20, 10:20] = 17
    labels[20:30, 20:30, 20:30] = 42
    return labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_label_map_refused_whatever_the_datatype(tmp_path, dtype):
    path = write(tmp_path / "labels.nii.gz", nifti_bytes(label_volume(dtype)))
    refused(path, "label map")


def test_sparse_label_ids_and_masks_refused_but_8bit_scans_accepted(tmp_path):
    aseg = np.zeros((40, 48, 40), np.float32)  # 100 labels spread over 0..2035 (aparc+aseg-like)
    for k, lab in enumerate(np.linspace(1000, 2035, 100).astype(int)):
        aseg[k % 40, :, (k // 40) * 10 : (k // 40) * 10 + 10] = lab
    refused(write(tmp_path / "aparc.nii.gz", nifti_bytes(aseg)), "label map")
    mask = (label_volume(np.uint8) > 0).astype(np.uint8)
    refused(write(tmp_path / "mask.nii.gz", nifti_bytes(mask)), "label map")
    arr, aff = small_scan()
    eight_bit = np.round(arr / arr.max() * 255).astype(np.uint8)
    vol = read_nifti(write(tmp_path / "t1-8bit.nii.gz", nifti_bytes(eight_bit, aff)))
    assert vol.array.max() == 255


def test_complex_and_rgb_refused(tmp_path):
    arr, aff = small_scan()
    refused(write(tmp_path / "c.nii.gz", nifti_bytes(arr.astype(np.complex64) * (1 + 1j), aff)), "complex")
    rgb = np.zeros(arr.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = arr % 256
    refused(write(tmp_path / "rgb.nii.gz", nifti_bytes(rgb, aff)), "RGB")


def test_qform_sform_disagreeing_refused_and_output_keeps_both(tmp_path, capsys, tiny_package):
    arr, aff = small_scan()
    shifted = aff.copy()
    shifted[0, 3] += 40
    img = nib.Nifti1Image(arr, aff)
    img.set_qform(shifted, code=1)
    img.set_sform(aff, code=2)
    bad = tmp_path / "disagree.nii.gz"
    nib.save(img, str(bad))
    refused(bad, "qform and sform disagree by 40.0 mm")
    code, _, err = run_cli(capsys, "diagnose", bad, "--model", tiny_package, "--out", tmp_path / "o")
    one_error(code, err, "qform and sform disagree")
    assert not (tmp_path / "o").exists()
    # within tolerance: accepted, and the output carries the input's own qform and sform (codes included)
    near = aff.copy()
    near[0, 3] += 0.3
    img.set_qform(near, code=1)
    good = tmp_path / "near.nii.gz"
    nib.save(img, str(good))
    out = tmp_path / "res"
    assert run_cli(capsys, "diagnose", good, "--model", tiny_package, "--out", out, "--no-figures")[0] == 0
    src, rel = nib.load(str(good)).header, nib.load(str(out / "relevance.nii.gz")).header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                "qoffset_z", "srow_x", "srow_y", "srow_z"):
        assert np.array_equal(src[key], rel[key]), key
    assert np.array_equal(src.get_qform(), rel.get_qform()) and np.array_equal(src.get_sform(), rel.get_sform())


def test_reused_out_replaces_the_previous_result_set_whole(tmp_path, capsys, tiny_package):
    scan = write(tmp_path / "s.nii.gz", nifti_bytes(*small_scan()))
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out)[0] == 0
    assert tree(out) == ["mine.txt", "overview.png", "relevance.nii.gz", "report.json"]
    assert run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out, "--no-figures")[0] == 0
    assert tree(out) == ["mine.txt", "relevance.nii.gz", "report.json"]  # no stale overview.png
    assert "overview" not in json.loads((out / "report.json").read_text())["files"]


# -------------------------------------------------------- class 5: one bad scan never ends a batch
def geometry_cases(tmp_path) -> dict[str, tuple[Path, str]]:
    arr, aff = small_scan()
    nan_aff = aff.copy()
    nan_aff[0, 0] = np.nan
    cases = {
        "NaN affine": (nifti_bytes(arr, aff, srow_x=nan_aff[0]), "NaN/Inf"),
        "singular affine": (nifti_bytes(arr, aff, srow_x=aff[1], qform_code=0), "singular"),
        "NaN pixdim": (nifti_bytes(arr, aff, pixdim=[1, np.nan, 4, 4, 1, 1, 1, 1]), "voxel size"),
        "zero pixdim": (nifti_bytes(arr, aff, pixdim=[1, 0, 4, 4, 1, 1, 1, 1]), "voxel size"),
        "1e-5 mm spacing": (nifti_bytes(arr, np.diag([1e-5, 1e-5, 1e-5, 1])), "outside 0.01..50 mm"),
        "100 mm spacing": (nifti_bytes(arr, np.diag([100.0, 1, 1, 1])), "outside 0.01..50 mm"),
        "RGB": (nifti_bytes(np.zeros(arr.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), aff), "RGB"),
        "complex": (nifti_bytes(arr.astype(np.complex64), aff), "complex"),
        "4D": (nifti_bytes(np.stack([arr, arr], -1), aff), "4D image"),
        "unknown datatype": (nifti_bytes(arr, aff, datatype=1), "unsupported voxel type"),
        "bad dim[0]": (nifti_bytes(arr, aff, dim=[9, 40, 48, 40, 1, 1, 1, 1]), "dim[0]"),
        "negative dim": (nifti_bytes(arr, aff, dim=[3, 40, -48, 40, 1, 1, 1, 1]), "invalid dimensions"),
        "bad vox_offset": (nifti_bytes(arr, aff, vox_offset=10), "data offset"),
        "infinite intercept": (nifti_bytes(arr, aff, scl_slope=2.0, scl_inter=np.inf), "scaling"),
        "pair header": (nifti_bytes(arr, aff, magic=b"ni1"), ".hdr/.img pair"),
    }
    out = {}
    for k, (name, (blob, needle)) in enumerate(cases.items()):
        out[name] = (write(tmp_path / f"case{k:02d}.nii.gz", blob), needle)
    return out


def test_unusual_geometry_and_datatypes_refused_in_one_line(tmp_path):
    for what, (path, needle) in geometry_cases(tmp_path).items():
        msg = refused(path, needle)
        assert msg.startswith(str(path)), what


def test_batch_one_row_per_bad_scan_and_summary_always_written(tmp_path, capsys, tiny_package, monkeypatch):
    cases = geometry_cases(tmp_path)
    good = write(tmp_path / "good.nii.gz", nifti_bytes(*small_scan()))
    weird = write(tmp_path / os.fsdecode(b"caf\xe9\nname.nii.gz"), nifti_bytes(*small_scan(3)))
    boom = write(tmp_path / "boom.nii.gz", nifti_bytes(*small_scan(4)))
    import addiagnosis.engine as engine

    original = engine.Diagnoser.explain_tensor
    calls = []

    def explain(self, *a, **k):  # an unexpected exception inside the engine for one scan (the third good one)
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("kaboom\nsecond line")
        return original(self, *a, **k)

    monkeypatch.setattr(engine.Diagnoser, "explain_tensor", explain)
    scans = [p for p, _ in cases.values()] + [good, weird, boom]
    out = tmp_path / "cohort"
    code, stdout, err = run_cli(capsys, "batch", *scans, "--model", tiny_package, "--out", out, "--save", "relevance",
                                "--workers", "0", "-q")
    assert code == 0  # failures are rows, counted in the summary line (--strict: exit 2)
    lines = without_qc(err).splitlines()
    assert len(lines) == len(cases) + 1 and all(x.startswith("addiagnosis: error: ") for x in lines)
    assert "Traceback" not in err
    assert f"{len(scans) - len(cases) - 1} of {len(scans)} scans diagnosed, {len(cases) + 1} failed" in stdout
    assert RESEARCH_USE in stdout
    raw = (out / "results.tsv").read_bytes()
    raw.decode("utf-8")  # valid UTF-8 whatever the file names
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter="\t")}
    assert len(rows) == len(scans)
    for what, (path, needle) in cases.items():
        row = rows[str(path)]
        assert row["status"] == "error" and needle in row["error"] and row["output"] == "", what
    assert [rows[str(p)]["status"] for p in (good, boom)] == ["ok", "error"]
    weird_row = rows[next(k for k in rows if k.endswith("caf\\xe9\\nname.nii.gz"))]
    assert weird_row["status"] == "ok" and weird_row["output"] == "scans/caf_xe9_nname"
    assert rows[str(boom)]["error"] == "unexpected error (RuntimeError: kaboom second line)"
    assert sorted(p.name for p in (out / "scans").iterdir()) == ["caf_xe9_nname", "good"]


def test_check_volume_covers_every_source():
    """The engine's entry check refuses a bad Volume whatever made it (Slicer node, web upload)."""
    arr, aff = small_scan()
    ok = Volume(arr.astype(np.float32), aff, "node")
    check_volume(ok)
    for vol, needle in [
        (Volume(np.full((20, 20, 20), 3.0, np.float32), aff, "const"), "same value"),
        (Volume(label_volume(np.float32), aff, "labels"), "label map"),
        (Volume(arr.astype(np.float32), np.diag([0.0, 1, 1, 1]), "flat"), "singular"),
        (Volume(arr.astype(np.complex64), aff, "cplx"), "complex"),
        (Volume(np.where(arr > 0, np.nan, 1).astype(np.float32), aff, "nan"), "NaN/Inf"),
        (Volume(arr[:, :, :1], aff, "slice"), "2D image"),
    ]:
        with pytest.raises(InputError, match=needle):
            check_volume(vol)


def test_diagnoser_refuses_a_constant_volume_from_any_front_end(tiny_package):
    from addiagnosis.engine import get_diagnoser

    _, aff = small_scan()
    with pytest.raises(InputError, match="same value"):
        get_diagnoser(str(tiny_package)).run(Volume(np.zeros((40, 48, 40), np.float32), aff, "slicer-node"))


# ---------------------------------------------------- class 7: memory follows the header, not the stream
def test_compressed_nifti2_accepted(tmp_path):
    arr, aff = small_scan()
    path = write(tmp_path / "two.nii.gz", nifti_bytes(arr, aff, header_class=nib.Nifti2Image))
    vol = read_nifti(path)
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.ijk_to_ras, aff, atol=1e-6)
    big_endian = nib.Nifti1Image(arr.astype(">i2"), aff)
    path = write(tmp_path / "be.nii", big_endian.to_bytes())
    np.testing.assert_array_equal(read_nifti(path).array, arr.astype(np.float32))


def test_declared_size_above_the_limit_refused_before_allocating(tmp_path, monkeypatch):
    arr, aff = small_scan()
    path = write(tmp_path / "s.nii.gz", nifti_bytes(arr, aff))
    monkeypatch.setenv("ADDIAGNOSIS_MAX_VOXELS", "10000")
    refused(path, "limit 1e+04, set ADDIAGNOSIS_MAX_VOXELS")
    monkeypatch.setenv("ADDIAGNOSIS_MAX_VOXELS", "lots")
    refused(path, "ADDIAGNOSIS_MAX_VOXELS='lots' is not a positive number")
    monkeypatch.delenv("ADDIAGNOSIS_MAX_VOXELS")
    huge = nifti_bytes(arr[:8, :8, :8], aff, dim=[3, 2000, 2000, 2000, 1, 1, 1, 1])
    t = time.perf_counter()
    refused(write(tmp_path / "huge.nii.gz", huge), "absurd dimensions")
    assert time.perf_counter() - t < 2


def gzip_bomb(path: Path, arr, aff, zeros: int) -> Path:
    """A valid scan followed by ``zeros`` bytes of zeros in one gzip stream (compresses ~1000:1)."""
    from isal import isal_zlib

    comp = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    chunk = bytes(16 << 20)
    with open(path, "wb") as fh:
        fh.write(comp.compress(nifti_bytes(arr, aff)))
        for _ in range(zeros // len(chunk)):
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())
    return path


def test_gzip_bomb_reads_only_what_the_header_declares(tmp_path):
    import tracemalloc

    arr, aff = make_scan("ras-1mm", noise_seed=1)  # 160x192x160 int16: 9.8 MB declared
    bomb = gzip_bomb(tmp_path / "bomb.nii.gz", arr, aff, 1 << 30)  # + 1 GiB of zeros in the stream
    assert bomb.stat().st_size < 15e6
    tracemalloc.start()
    try:
        vol = read_nifti(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    assert peak < 8 * arr.size  # bytes per declared voxel: int16 data + float32 volume + chunks (~6.1 measured)


# ------------------------------------------------------------- class 8: messages, leftovers, signals
def test_newline_and_undecodable_names_stay_on_one_line(tmp_path, capsys, tiny_package):
    for raw in (b"two\nlines.nii.gz", b"bad\xffbyte.nii.gz", b"tab\there.nii.gz"):
        path = Path(os.fsdecode(bytes(tmp_path) + b"/" + raw))
        path.write_bytes(b"not an image at all")
        code, _, err = run_cli(capsys, "diagnose", path, "--model", tiny_package, "--out", tmp_path / "o")
        one_error(code, err, "not a readable NIfTI")
        assert not (tmp_path / "o").exists()


def test_nibabel_warnings_never_reach_stderr(tmp_path, capsys, tiny_package):
    arr, aff = small_scan()
    # qfac 0 and an unusual xyzt unit make nibabel warn/log on load; the scan is otherwise fine
    path = write(tmp_path / "w.nii.gz", nifti_bytes(arr, aff, pixdim=[0, 4, 4, 4, 1, 1, 1, 1], xyzt_units=255))
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "diagnose", path, "--model", tiny_package, "--out", out, "--no-figures")
    assert code == 0 and without_qc(err) == "", err


def test_failure_removes_created_parents_and_keeps_existing(tmp_path, capsys, tiny_package):
    bad = write(tmp_path / "bad.nii.gz", b"garbage", gz=False)
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "diagnose", bad, "--model", tiny_package, "--out", tmp_path / "a" / "b" / "c")
    one_error(code, err, "not a readable NIfTI")
    assert tree(tmp_path) == before  # a/, a/b/ and a/b/c/ were created by the run and are gone again
    (tmp_path / "keep").mkdir()
    code, _, err = run_cli(capsys, "diagnose", bad, "--model", tiny_package, "--out", tmp_path / "keep" / "new")
    one_error(code, err, "not a readable NIfTI")
    assert tree(tmp_path) == sorted(before + ["keep"])


def test_stale_staging_of_killed_runs_is_cleaned(tmp_path, capsys, tiny_package):
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from addiagnosis.io.outputs import _host

    stale = out / f"{STAGING_PREFIX}{_host()}-{dead.pid}-abc"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "relevance.nii.gz").write_bytes(b"x" * 100)
    alive = out / f"{STAGING_PREFIX}{_host()}-{os.getppid()}-def"
    alive.mkdir()
    old_elsewhere = out / f"{STAGING_PREFIX}otherhost-1-ghi"
    old_elsewhere.mkdir()
    os.utime(old_elsewhere, (time.time() - 3 * 86400,) * 2)
    fresh_elsewhere = out / f"{STAGING_PREFIX}otherhost-2-jkl"
    fresh_elsewhere.mkdir()
    assert sorted(clean_stale_staging(out)) == sorted([stale.name, old_elsewhere.name])
    assert tree(out) == sorted([alive.name, fresh_elsewhere.name])
    scan = write(tmp_path / "s.nii.gz", nifti_bytes(*small_scan()))
    stale.mkdir()
    assert run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out, "--no-figures")[0] == 0
    assert tree(out) == sorted([alive.name, fresh_elsewhere.name, "relevance.nii.gz", "report.json"])


def test_output_set_rolls_back_everything_on_any_exception(tmp_path):
    out = tmp_path / "x" / "y"
    with pytest.raises(KeyboardInterrupt), OutputSet(out) as staged:
        staged.write_text("report.json", "{}")
        with staged.entry("sub") as sub:
            sub.write_text("a.txt", "a")
        raise KeyboardInterrupt
    assert tree(tmp_path) == []
    with pytest.raises(Exception, match="invalid output name"), OutputSet(out) as staged:
        staged.write_text("../escape.txt", "no")
    assert tree(tmp_path) == []


def test_disk_full_leaves_nothing(tmp_path, tiny_package):
    """Writes fail mid-way (a file-size limit stands in for a full disk): one line, exit 2, nothing left."""
    scan = write(tmp_path / "s.nii.gz", nifti_bytes(*small_scan()))
    out = tmp_path / "parent" / "o"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); from addiagnosis.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    before = tree(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code, "diagnose", str(scan), "--model", str(tiny_package),
                           "--out", str(out)], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert without_qc(proc.stderr).count("\n") == 1 and "Traceback" not in proc.stderr
    assert without_qc(proc.stderr).startswith(f"addiagnosis: error: {out}") and "File too large" in proc.stderr
    assert tree(tmp_path) == before


def test_concurrent_runs_into_one_out_both_succeed(tmp_path, tiny_package):
    scans = [write(tmp_path / f"s{k}.nii.gz", nifti_bytes(*small_scan(k + 1))) for k in range(2)]
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "addiagnosis.cli.main", "diagnose", str(s), "--model",
                               str(tiny_package), "--out", str(out), "--no-figures", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
             for s in scans]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for _stdout, stderr, rc in results:
        assert rc == 0 and without_qc(stderr) == "", stderr
    assert tree(out) == ["relevance.nii.gz", "report.json"]
    report = json.loads((out / "report.json").read_text())
    rel = nib.load(str(out / "relevance.nii.gz"))
    assert report["relevance_summary"]["sum"] == pytest.approx(float(rel.get_fdata().sum()), rel=1e-4)


def test_ctrl_c_during_start_up_is_one_line(tmp_path, tiny_package):
    scan = write(tmp_path / "s.nii.gz", nifti_bytes(*small_scan()))
    proc = subprocess.Popen([sys.executable, "-m", "addiagnosis.cli.main", "diagnose", str(scan), "--model",
                             str(tiny_package), "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            # a shell without job control starts background jobs with SIGINT ignored (e.g. CI)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # wait until torch is being imported
        try:
            if "torch" in maps.read_text():
                break
        except OSError:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 2), err
    assert err == "addiagnosis: interrupted\n"
    assert not (tmp_path / "o").exists()


def test_resource_limits_are_posix():  # the subprocess cases above rely on these
    assert hasattr(resource, "RLIMIT_FSIZE") and hasattr(signal, "SIGXFSZ")


def test_atomic_file_replaces_whole_or_leaves_the_old_file(tmp_path):
    from addiagnosis.files import atomic_file

    target = tmp_path / "cache.npy"
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npy") and tmp.name.startswith(".")
        np.save(tmp, np.arange(3))
    assert tree(tmp_path) == ["cache.npy"] and np.load(target).tolist() == [0, 1, 2]
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("killed mid-way")
    assert tree(tmp_path) == ["cache.npy"] and np.load(target).tolist() == [0, 1, 2]


def test_checks_and_outputs_do_not_import_torch():
    code = ("import sys, addiagnosis.io.checks, addiagnosis.io.outputs, addiagnosis.io.volume, addiagnosis.cli.main; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_diagnose_a_scan_whose_name_is_not_utf8(tmp_path, capsys, tiny_package):
    scan = write(Path(os.fsdecode(bytes(tmp_path) + b"/sub\xe9\nject.nii.gz")), nifti_bytes(*small_scan()))
    out = tmp_path / "o"
    code, stdout, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out, "--no-figures")
    assert code == 0 and without_qc(err) == "", err
    assert stdout.splitlines()[0].startswith("sub\\xe9\\nject: predicted ")
    stdout.encode("utf-8")
    assert tree(out) == ["relevance.nii.gz", "report.json"]
    assert json.loads((out / "report.json").read_bytes().decode("ascii"))["input"]["source"] == str(scan)
