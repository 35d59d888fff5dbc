"""Cohort engine: inputs (folder, BIDS, table), bad scans, resume after a kill, shards, regions, compare."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from addiagnosis.cli.main import main
from addiagnosis.cohort.inputs import discover
from addiagnosis.cohort.journal import JOURNAL, Journal
from addiagnosis.cohort.shards import parse_shard
from addiagnosis.errors import InputError

from cohorts import synthetic_groups
from conftest import CLASSES, phantom

CMD = "batch"
LOGIC = Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Logic"


def small_scan(path: Path, seed: int, spacing=(2.2, 2.0, 2.4)) -> Path:
    """A small head phantom (about 80^3 voxels) with its own noise and a small shift: fast to preprocess."""
    rng = np.random.default_rng(seed)
    shape = (72, 100, 70)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2.0) + np.array([0.0, -15.0, 10.0]) + rng.normal(0, 3, 3)
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    img = phantom(ijk @ aff[:3, :3].T + aff[:3, 3]) + rng.normal(0, 8.0, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.clip(img, 0, None).astype(np.int16), aff), str(path))
    return path


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for i in range(6):
        small_scan(root / "site-a" / f"s{i:02d}.nii.gz", seed=i)
    (root / "site-a" / "notes.txt").write_text("not a scan")
    return root


# ------------------------------------------------------------------------------------------ inputs
def test_bids_folder_and_table_discovery(tmp_path):
    bids = tmp_path / "bids"
    small_scan(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 1)
    small_scan(bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", 2)
    small_scan(bids / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii", 3)
    small_scan(bids / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_FLAIR.nii.gz", 4)  # not a T1w: ignored
    small_scan(bids / "derivatives" / "x" / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 5)  # derivatives: ignored
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')
    (bids / "participants.tsv").write_text("participant_id\tgroup\tage\nsub-01\tCN\t71\nsub-02\tAD\t77\n")
    scans = discover([bids])
    assert [(s.scan_id, s.subject, s.session, s.group, s.extra) for s in scans] == [
        ("sub-01", "sub-01", "", "CN", {"age": "71"}),
        ("sub-02_ses-1", "sub-02", "ses-1", "AD", {"age": "77"}),
        ("sub-02_ses-2", "sub-02", "ses-2", "AD", {"age": "77"})]

    plain = tmp_path / "plain"
    small_scan(plain / "a" / "x.nii.gz", 6)
    small_scan(plain / "b" / "x.nii.gz", 7)
    (plain / "b" / "readme.md").write_text("-")
    assert [s.scan_id for s in discover([plain])] == ["a/x", "b/x"]
    assert len({s.name for s in discover([plain])}) == 2  # unique per-scan folder names

    table = tmp_path / "cohort.csv"
    table.write_text("subject,session,diagnosis,file,site\nP1,V1,AD,plain/a/x.nii.gz,A\nP2,,CN,plain/b/x.nii.gz,B\n")
    got = discover([table])
    assert [(s.scan_id, s.group, s.extra, s.path) for s in got] == [
        ("P1_V1", "AD", {"site": "A"}, plain / "a" / "x.nii.gz"), ("P2", "CN", {"site": "B"}, plain / "b" / "x.nii.gz")]

    for bad, expected in [(tmp_path / "x.json", "expected a folder of .nii"), (tmp_path / "empty", "found no")]:
        if bad.suffix:
            bad.write_text("{}")
        else:
            bad.mkdir()
        with pytest.raises(InputError, match=expected):
            discover([bad])
    (tmp_path / "nopath.tsv").write_text("subject\tgroup\nP1\tAD\n")
    with pytest.raises(InputError, match="no path column"):
        discover([tmp_path / "nopath.tsv"])


def test_a_subject_listed_twice(tmp_path, capsys):
    """Same group twice: one warning line naming the subject; two groups: refused in one line naming the subject
    (it would land in either group for compare); two sessions of one subject may differ (a conversion)."""
    bids = tmp_path / "bids"
    small_scan(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 1)
    small_scan(bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz", 2)
    ptsv = bids / "participants.tsv"
    ptsv.write_text("participant_id\tgroup\nsub-01\tCN\nsub-02\tAD\n01\tCN\n")  # "01" is sub-01 too
    lines = []
    scans = discover([bids], log=lines.append)
    assert [(s.scan_id, s.group) for s in scans] == [("sub-01", "CN"), ("sub-02", "AD")]
    assert len(lines) == 1 and "warning" in lines[0] and "sub-01" in lines[0] and "sub-02" not in lines[0]
    ptsv.write_text("participant_id\tgroup\nsub-01\tCN\nsub-02\tAD\nsub-01\tAD\n")
    with pytest.raises(InputError, match=r"subject sub-01 is listed twice with different groups \('CN' and 'AD'\)"):
        discover([bids], log=lines.append)
    code, _, err = run_cli(capsys, CMD, bids, "--out", tmp_path / "res")
    assert code == 2 and err.count("\n") == 1 and "sub-01" in err and not (tmp_path / "res").exists()

    table = tmp_path / "scans.tsv"
    table.write_text("subject\tsession\tgroup\tpath\nP1\tV1\tMCI\tbids/sub-01/anat/sub-01_T1w.nii.gz\n"
                     "P1\tV2\tAD\tbids/sub-02/anat/sub-02_T1w.nii.gz\n")
    lines.clear()
    assert [s.group for s in discover([table], log=lines.append)] == ["MCI", "AD"] and lines == []
    table.write_text("subject\tgroup\tpath\nP1\tMCI\tbids/sub-01/anat/sub-01_T1w.nii.gz\n"
                     "P1\tAD\tbids/sub-02/anat/sub-02_T1w.nii.gz\n")
    with pytest.raises(InputError, match="subject P1 is listed twice"):
        discover([table])


def test_shard_parsing():
    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard(None, {"RANK": "3", "WORLD_SIZE": "4"}) == (4, 4)
    assert parse_shard(None, {}) == (1, 1)
    for bad in ("0/4", "5/4", "x"):
        with pytest.raises(InputError):
            parse_shard(bad, {})


def test_per_scan_label_maps_refused_for_a_model_without_geometry(tmp_path):
    """seed-raw reshapes raw voxels: a per-scan label map cannot be taken onto its grid, so it is refused up front."""
    from addiagnosis.cohort.regions import load_regions

    names = tmp_path / "names.tsv"
    names.write_text("index\tname\n1\thippocampus\n")
    card = {"input_grid": {"shape": [160, 256, 256], "spacing": [1, 1, 1]}, "preprocessing": {"kind": "seed-raw"}}
    with pytest.raises(InputError, match="seed-raw"):
        load_regions(card, None, str(names), per_scan=True)
    card["preprocessing"]["kind"] = "physical"
    assert load_regions(card, None, str(names), per_scan=True).names == ["hippocampus"]


def test_bids_run_carries_participants_and_matches_the_engine(tmp_path, capsys, tiny_package):
    from addiagnosis.engine import Diagnoser
    from addiagnosis.io.volume import read_nifti

    bids = tmp_path / "bids"
    small_scan(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 11)
    small_scan(bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", 12)
    (bids / "participants.tsv").write_text("participant_id\tgroup\tage\nsub-01\tCN\t71\nsub-02\tAD\t77\n")
    out = tmp_path / "res"
    code, stdout, err = run_cli(capsys, CMD, bids, "--model", tiny_package, "--out", out, "--workers", "0",
                                "--method", "lrp-alpha1beta0", "--save", "relevance,report")
    assert code == 0, err
    assert "2 of 2 scans diagnosed, 0 failed" in stdout and "Research use only" in stdout
    rows = read_tsv(out / "results.tsv")
    assert [(r["scan_id"], r["group"], r["age"], r["status"]) for r in rows] == [
        ("sub-01", "CN", "71", "ok"), ("sub-02_ses-1", "AD", "77", "ok")]
    d = Diagnoser(str(tiny_package))
    for r in rows:
        res = d.run(read_nifti(r["path"]), method="lrp-alpha1beta0")
        assert r["predicted"] == res.predicted
        for c in CLASSES:
            assert float(r[f"p_{c}"]) == pytest.approx(res.probabilities[c], abs=2e-6)
        assert float(r["relevance_sum"]) == pytest.approx(res.summary["sum_model_grid"], rel=1e-4)
        rel = nib.load(str(out / r["output"] / "relevance.nii.gz"))
        assert rel.shape == res.relevance.shape and np.allclose(rel.affine, res.relevance.ijk_to_ras, atol=1e-5)
        np.testing.assert_allclose(rel.get_fdata(), res.relevance.array, atol=1e-6 * np.abs(res.relevance.array).max())
        report = json.loads((out / r["output"] / "report.json").read_text())
        assert report["scan"]["scan_id"] == r["scan_id"] and "Research use only" in report["research_use"]


# ------------------------------------------------------------------------------------------ robustness
def test_bad_scans_are_rows_and_the_run_goes_on(tmp_path, capsys, folder, tiny_package):
    data = tmp_path / "data"
    for i in range(3):
        small_scan(data / f"good{i}.nii.gz", 20 + i)
    (data / "corrupt.nii.gz").write_bytes(b"this is not an image at all")
    raw = (data / "good0.nii.gz").read_bytes()
    (data / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (data / os.fsdecode(b"caf\xe9\nname.nii.gz")).write_bytes(raw)  # not UTF-8, a newline: a good scan all the same
    out = tmp_path / "res"
    code, stdout, err = run_cli(capsys, CMD, data, "--model", tiny_package, "--out", out, "--workers", "2")
    assert code == 0, err  # failures are counted, not fatal
    assert "4 of 6 scans diagnosed, 2 failed" in stdout
    text = (out / "results.tsv").read_bytes().decode("utf-8")  # valid UTF-8 whatever the file names
    assert len(text.splitlines()) == 7
    rows = {r["scan_id"]: r for r in read_tsv(out / "results.tsv")}
    assert sorted(rows) == ["caf\\xe9\\nname", "corrupt", "good0", "good1", "good2", "truncated"]
    assert rows["caf\\xe9\\nname"]["status"] == "ok"
    for bad in ("corrupt", "truncated"):
        assert rows[bad]["status"] == "error" and rows[bad]["error"] and "\n" not in rows[bad]["error"]
        assert f"{data / (bad + '.nii.gz')}:" in err
    assert all(rows[g]["status"] == "ok" and rows[g]["predicted"] in CLASSES for g in ("good0", "good1", "good2"))
    assert err.count("addiagnosis: error:") == 2
    # --strict: the same (finished) run now exits 2, without redoing anything
    code, stdout, err = run_cli(capsys, CMD, data, "--model", tiny_package, "--out", out, "--strict")
    assert code == 2 and "(6 already done)" in stdout
    # another method in the same folder is refused in one line
    code, _, err = run_cli(capsys, CMD, data, "--model", tiny_package, "--out", out, "--method", "lrp-epsilon")
    assert code == 2 and err.count("\n") == 1 and "other settings" in err


def test_journal_lines_that_are_not_records_are_skipped(tmp_path, capsys, tiny_package):
    """Valid JSON that is not a record (null, a list, {}, no scan_id, wrong types) is skipped like a torn line:
    counted in one warning line on the re-run, never a crash; the scans it does not name are done again."""
    data = tmp_path / "data"
    for i in range(3):
        small_scan(data / f"s{i}.nii.gz", 70 + i)
    out = tmp_path / "res"
    common = ["--model", tiny_package, "--out", out, "--workers", "0", "-q"]
    assert run_cli(capsys, CMD, data, *common)[0] == 0
    journal = out / JOURNAL
    records = _journal(out)
    kept, lost = records[:2], records[2]
    hostile = ["null", "[1,2]", "{}", '"text"', "42", '{"status": "ok", "sha256": "x"}',
               '{"scan_id": ["s9"], "status": "ok"}', '{"scan_id": "s9", "status": "ok", "finished": "yesterday"}',
               '{"scan_id": "s9", "status": "ok", "stat": ["a"]}', '{"scan_id": "s9", "status": "ok", '
               '"probabilities": {"CN": "high"}}', '{"scan_id": "s9", "status": "maybe"}', "\xff\x00binary"]
    journal.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in kept)
                        + "\n".join(hostile).encode("latin-1") + b"\n")
    code, stdout, err = run_cli(capsys, CMD, data, *common)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"{len(hostile)} line(s)" in warnings[0] and "not scan records" in warnings[0]
    records = _journal(out)
    assert sorted(r["scan_id"] for r in records) == ["s0", "s1", "s2"]  # the lost scan was done again, once
    assert [r for r in records if r["scan_id"] == lost["scan_id"]][0]["sha256"] == lost["sha256"]
    assert [r["status"] for r in read_tsv(out / "results.tsv")] == ["ok"] * 3
    assert run_cli(capsys, "merge", out)[0] == 0


def _crashing_prepare(job):
    """A worker step that dies like a segfault on one scan (os._exit: no exception, no cleanup)."""
    from addiagnosis.cohort import pool

    if "crash" in job.path:
        os._exit(3)
    return pool.real_prepare_job(job)


def test_a_worker_dying_costs_one_scan(tmp_path, monkeypatch, tiny_package):
    from addiagnosis.cohort import pool
    from addiagnosis.cohort.run import Options, run

    data = tmp_path / "data"
    for name in ("a", "b", "crash", "d", "e"):
        small_scan(data / f"{name}.nii.gz", ord(name[0]))
    monkeypatch.setattr(pool, "real_prepare_job", pool.prepare_job, raising=False)
    monkeypatch.setattr(pool, "prepare_job", _crashing_prepare)
    if not sys.platform.startswith("linux"):
        pytest.skip("needs forked workers (Linux, model on the CPU) to run the patched step")
    summary = run(discover([data]), Options(out=tmp_path / "res", model=str(tiny_package), workers=2),
                  log=lambda msg: None)
    assert (summary.ok, summary.failed) == (4, 1)
    rows = {r["scan_id"]: r for r in read_tsv(tmp_path / "res" / "results.tsv")}
    assert rows["crash"]["status"] == "error" and "worker process died" in rows["crash"]["error"]
    ids = [r["scan_id"] for r in _journal(tmp_path / "res")]
    assert sorted(ids) == ["a", "b", "crash", "d", "e"]  # each scan once: retried, never repeated


def _journal(out: Path) -> list[dict]:
    return Journal.read(out / JOURNAL)


def test_resume_after_kill_repeats_and_loses_nothing(tmp_path, tiny_package):
    data = tmp_path / "data"
    n = 10
    for i in range(n):
        small_scan(data / f"s{i:02d}.nii.gz", 40 + i)
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(LOGIC)}
    argv = [sys.executable, "-m", "addiagnosis.cli.main", CMD, str(data), "--model", str(tiny_package), "--out",
            str(out), "--workers", "1", "-q"]

    def start_and_kill(sig, after: int) -> tuple[int, int]:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t0 = time.time()
        while len(_journal(out)) < after and proc.poll() is None and time.time() - t0 < 120:
            time.sleep(0.01)
        at_kill = len(_journal(out))
        os.kill(proc.pid, sig)
        proc.communicate(timeout=60)
        return proc.returncode, at_kill

    code, first = start_and_kill(signal.SIGTERM, 3)  # graceful: the table is written, pending rows marked
    assert code == 130 and 3 <= first < n
    rows = read_tsv(out / "results.tsv")
    assert len(rows) == n and {r["status"] for r in rows} == {"ok", "pending"}
    code, second = start_and_kill(signal.SIGKILL, first + 3)  # hard kill: only the journal survives
    assert code == -signal.SIGKILL and first + 3 <= second < n
    with open(out / JOURNAL, "a") as fh:  # a record torn by the kill must not poison the journal
        fh.write('{"scan_id": "s99", "status": "o')
    code = main(argv[3:])  # finish in this process
    assert code == 0
    records = _journal(out)
    ids = [r["scan_id"] for r in records]
    assert len(ids) == len(set(ids)) == n  # no scan done twice, none lost
    rows = read_tsv(out / "results.tsv")
    assert sorted(r["scan_id"] for r in rows) == sorted(ids) and {r["status"] for r in rows} == {"ok"}
    # moved files are recognised by content: nothing is recomputed
    (data / "s00.nii.gz").rename(data / "moved.nii.gz")
    assert main(argv[3:]) == 0
    assert len(_journal(out)) == n + 1 and _journal(out)[-1]["scan_id"] == "moved"  # an alias, not a rerun
    assert {r["status"] for r in read_tsv(out / "results.tsv")} == {"ok"}


# ------------------------------------------------------------------------------------------ shards
def test_two_shards_merged_equal_one_process(tmp_path, capsys, folder, tiny_package, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--model", tiny_package, "--workers", "0", "-q"]
    assert run_cli(capsys, CMD, folder, "--out", one, *common)[0] == 0
    code, stdout, _ = run_cli(capsys, CMD, folder, "--out", two, "--shard", "2/2", *common)
    assert code == 0 and "shard 2/2: 3 of 3" in stdout
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun rank 0: runs shard 1/2, then merges once all parts are done
    monkeypatch.setenv("RANK", "0")
    code, stdout, _ = run_cli(capsys, CMD, folder, "--out", two, *common)
    assert code == 0 and "all 2 shards merged" in stdout
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert run_cli(capsys, "merge", two)[0] == 0
    a, b = read_tsv(one / "results.tsv"), read_tsv(two / "results.tsv")
    assert len(a) == 6 and list(a[0]) == list(b[0])

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]

    assert strip(a) == strip(b)
    assert sorted(p.name for p in (two / "parts").iterdir()) == ["shard-1-of-2", "shard-2-of-2"]


def test_merge_names_the_missing_shard(tmp_path, capsys, folder, tiny_package):
    out = tmp_path / "res"
    assert run_cli(capsys, CMD, folder, "--out", out, "--shard", "1/3", "--model", tiny_package,
                   "--workers", "0", "-q")[0] == 0
    code, _, err = run_cli(capsys, "merge", out)
    assert code == 2 and "2/3, 3/3" in err and err.count("\n") == 1


@pytest.mark.parametrize("other", [("--method", "lrp-epsilon"), ("--target", "AD")], ids=["method", "target"])
def test_merge_refuses_shards_made_with_other_settings(tmp_path, capsys, folder, tiny_package, other):
    """Shards run apart (another node, started together) each pass the re-run check; merge compares them."""
    import shutil

    out, elsewhere = tmp_path / "res", tmp_path / "elsewhere"
    common = ["--model", tiny_package, "--workers", "0", "-q"]
    assert run_cli(capsys, CMD, folder, "--out", out, "--shard", "1/2", *common)[0] == 0
    assert run_cli(capsys, CMD, folder, "--out", elsewhere, "--shard", "2/2", *other, *common)[0] == 0
    shutil.copytree(elsewhere / "parts" / "shard-2-of-2", out / "parts" / "shard-2-of-2")
    code, _, err = run_cli(capsys, "merge", out)
    key = other[0][2:]
    assert code == 2 and err.count("\n") == 1, err
    assert f"shards 1/2 and 2/2 were made with different settings ({key}: " in err and repr(other[1]) in err
    assert not (out / "results.tsv").exists()
    # the same shard made with the same settings merges
    shutil.rmtree(out / "parts" / "shard-2-of-2")
    assert run_cli(capsys, CMD, folder, "--out", out, "--shard", "2/2", *common)[0] == 0
    assert run_cli(capsys, "merge", out)[0] == 0 and len(read_tsv(out / "results.tsv")) == 6


# ------------------------------------------------------------------------------------------ regions + compare
@pytest.fixture(scope="module")
def ad_cn_results(tmp_path_factory):
    """3 AD + 3 CN synthetic subjects, bundled model, relevance for AD, synthetic MNI label map."""
    from addiagnosis.cohort.regions import synthetic_labelmap
    root = tmp_path_factory.mktemp("adcn")
    synthetic_groups(root, seed=5, pairs=3)
    labels, names = synthetic_labelmap(root / "atlas")
    out = root / "res"
    code = main(["batch", str(root / "data"), "--out", str(out), "--labels", str(labels), "--target", "AD",
                 "--workers", "2", "-q"])
    assert code == 0
    return out, labels, names


def test_regional_sums_add_up_to_the_total(ad_cn_results):
    from addiagnosis.cohort.regions import load_regions
    from addiagnosis.models.package import find_package

    out, labels, names = ad_cn_results
    rows = read_tsv(out / "results.tsv")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    regions = load_regions(find_package().card, str(labels), None, False)
    assert regions.names[:3] == ["mtl_left", "mtl_right", "ventricles"]
    counts = np.bincount(regions.grid.ravel(), minlength=len(regions.names) + 1)
    assert counts[1] > 50 and counts[2] > 50  # the MTL regions are on the model grid
    for r in rows:
        parts = [float(r[f"sum_{n}"]) for n in regions.names] + [float(r["sum_unlabelled"])]
        total = float(r["relevance_sum"])
        assert sum(parts) == pytest.approx(total, rel=1e-5, abs=1e-6 * float(r["relevance_positive_sum"]))
        for i, n in enumerate(regions.names, 1):
            assert float(r[f"density_{n}"]) == pytest.approx(float(r[f"sum_{n}"]) / (counts[i] * 0.008), rel=1e-4)


def test_compare_shows_the_medial_temporal_gain(ad_cn_results, tmp_path, capsys):
    out, _, _ = ad_cn_results
    code, stdout, err = run_cli(capsys, "compare", out, "--by", "group", "--bootstrap", "400", "--out",
                                tmp_path / "cmp")
    assert code == 0, err
    gain = {r["region"]: r for r in read_tsv(tmp_path / "cmp" / "gain.tsv")}
    for side in ("mtl_left", "mtl_right"):
        assert float(gain[side]["gain"]) > 1.0, gain[side]
        assert float(gain[side]["ci_low"]) <= float(gain[side]["gain"]) <= float(gain[side]["ci_high"])
    stats = read_tsv(tmp_path / "cmp" / "regions_by_group.tsv")
    assert {(s["group"], s["n"]) for s in stats} == {("AD", "3"), ("CN", "3")}
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "cmp" / "compare.png").convert("L"))
    assert png.shape[0] > 300 and png.std() > 10
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert "Research use only" in page and "mtl_left" in page and 'src="compare.png"' in page


def test_per_scan_label_maps_from_the_table(tmp_path, capsys, tiny_package):
    """A table's labels column: label maps on each scan's own grid (here: left and right half of the scan)."""
    rows = ["subject\tgroup\tpath\tlabels"]
    for i in range(2):
        scan = small_scan(tmp_path / f"s{i}.nii.gz", 60 + i)
        img = nib.load(str(scan))
        lab = np.ones(img.shape, np.int16)
        lab[img.shape[0] // 2:] = 2
        nib.save(nib.Nifti1Image(lab, img.affine), str(tmp_path / f"s{i}_labels.nii.gz"))
        rows.append(f"P{i}\tCN\ts{i}.nii.gz\ts{i}_labels.nii.gz")
    (tmp_path / "cohort.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "names.tsv").write_text("index\tname\n1\tfirst half\n2\tsecond half\n")
    code, _, err = run_cli(capsys, CMD, tmp_path / "cohort.tsv", "--model", tiny_package, "--out", tmp_path / "res",
                           "--label-names", tmp_path / "names.tsv", "--workers", "0", "--method", "lrp-alpha1beta0")
    assert code == 0, err
    for r in read_tsv(tmp_path / "res" / "results.tsv"):
        first, second, outside = (float(r[c]) for c in ("sum_first_half", "sum_second_half", "sum_unlabelled"))
        assert first + second + outside == pytest.approx(float(r["relevance_sum"]), rel=1e-5)
        assert first > 0 and second > 0 and abs(outside) < 0.5 * (first + second)
        assert float(r["density_first_half"]) > 0
