"""The CLI contract: files, report keys, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from addiagnosis import RESEARCH_USE
from addiagnosis.cli.main import main

from bad_files import bad_inputs
from conftest import CLASSES, make_scan, save_nifti

REPORT_KEYS = {"research_use", "model", "probabilities", "predicted_class", "target_class", "method",
               "relevance_summary", "input", "timings_s", "software", "preprocessing", "files"}


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return save_nifti(tmp_path_factory.mktemp("cli") / "subject01.nii.gz", *make_scan("oblique-aniso"))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_diagnose_writes_the_contract(tmp_path, capsys, scan, tiny_package):
    out = tmp_path / "res"
    code, stdout, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["overview.png", "relevance.nii.gz", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert list(report["probabilities"]) == CLASSES
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert report["predicted_class"] == max(report["probabilities"], key=report["probabilities"].get)
    assert report["target_class"] == report["predicted_class"]
    assert report["method"] == "lrp-alpha1beta0"
    assert report["research_use"] == RESEARCH_USE
    assert report["model"]["name"] == "tiny" and report["model"]["version"] == "test-1"
    src = nib.load(str(scan))
    assert report["input"]["shape"] == list(src.shape)
    assert report["input"]["sha256"] and len(report["input"]["sha256"]) == 64
    for key in ("read", "preprocess", "forward", "relevance", "write", "total"):
        assert report["timings_s"][key] >= 0
    assert report["software"]["torch"].startswith("2.13.0")
    rel = nib.load(str(out / "relevance.nii.gz"))
    assert rel.shape == src.shape
    np.testing.assert_allclose(rel.affine, src.affine, atol=1e-6)
    assert report["relevance_summary"]["sum"] == pytest.approx(float(rel.get_fdata().sum()), rel=1e-4)
    assert RESEARCH_USE in stdout and report["predicted_class"] in stdout
    png = (out / "overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_target_method_and_json(tmp_path, capsys, scan, tiny_package):
    out = tmp_path / "res"
    code, stdout, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out,
                                "--target", "ad", "--method", "lrp-epsilon", "--json", "--no-figures")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["target_class"] == "AD" and report["method"] == "lrp-epsilon"
    assert not (out / "overview.png").exists()
    assert json.loads((out / "report.json").read_text())["target_class"] == "AD"


def test_same_file_same_numbers(tmp_path, capsys, scan, tiny_package):
    for name in ("a", "b"):
        assert run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", tmp_path / name,
                       "--no-figures")[0] == 0
    a = nib.load(str(tmp_path / "a" / "relevance.nii.gz")).get_fdata()
    b = nib.load(str(tmp_path / "b" / "relevance.nii.gz")).get_fdata()
    assert np.array_equal(a, b)
    ra = json.loads((tmp_path / "a" / "report.json").read_text())
    rb = json.loads((tmp_path / "b" / "report.json").read_text())
    assert ra["probabilities"] == rb["probabilities"]


def _assert_user_error(code, err, needle, out_dir: Path | None = None):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("addiagnosis: error: ")
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    if out_dir is not None:
        assert not out_dir.exists(), f"left {list(out_dir.iterdir())}"


def test_bad_scans_exit_2_one_line_no_output(tmp_path, capsys, tiny_package):
    for what, (path, needle) in bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{what.replace(' ', '_')}"
        code, _, err = run_cli(capsys, "diagnose", path, "--model", tiny_package, "--out", out)
        _assert_user_error(code, err, needle, out)
        assert str(path) in err, what


def test_unknown_model_and_class(tmp_path, capsys, scan, tiny_package):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", "no-such-model", "--out", out)
    _assert_user_error(code, err, "unknown model 'no-such-model'", out)
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--target", "XYZ", "--out", out)
    _assert_user_error(code, err, "unknown class 'XYZ'", out)


def test_output_dir_not_writable(tmp_path, capsys, scan, tiny_package):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", blocker / "sub")
    _assert_user_error(code, err, "not writable")
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", blocker)
    _assert_user_error(code, err, "not a directory")
    assert blocker.read_text() == "x"


def test_existing_output_is_not_clobbered_on_failure(tmp_path, capsys, tiny_package):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "diagnose", bad, "--model", tiny_package, "--out", out)
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_model_is_refused(tmp_path, capsys, tiny_package, scan):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"Conv_1.weight": _Evil()}, fh)
    code, _, err = run_cli(capsys, "import-checkpoint", evil, "--name", "evil", "--dest", tmp_path / "pk")
    _assert_user_error(code, err, "not a plain state_dict")
    assert not (tmp_path / "pk" / "evil").exists()
    # a package whose weights were swapped for a pickle: checksum and weights_only both refuse it
    pkg = tmp_path / "pkg"
    import shutil

    shutil.copytree(tiny_package, pkg)
    shutil.copy(evil, pkg / "weights.pt")
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", pkg, "--out", tmp_path / "o")
    _assert_user_error(code, err, "SHA-256 mismatch", tmp_path / "o")
    card = json.loads((pkg / "card.json").read_text())
    from addiagnosis.files import sha256_file

    card["weights"]["sha256"] = sha256_file(pkg / "weights.pt")
    (pkg / "card.json").write_text(json.dumps(card))
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", pkg, "--out", tmp_path / "o")
    _assert_user_error(code, err, "not a plain state_dict", tmp_path / "o")


def test_state_dict_of_wrong_architecture_is_refused(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    code, _, err = run_cli(capsys, "import-checkpoint", path, "--name", "x", "--dest", tmp_path / "pk")
    _assert_user_error(code, err, "not a seed-architecture state_dict")


def test_models_lists_packages(capsys, model_dir, monkeypatch):
    monkeypatch.setenv("ADDIAGNOSIS_MODEL_PATH", str(model_dir))
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "tiny test-1" in out
    code, out, _ = run_cli(capsys, "models", "--json")
    assert "tiny" in [p["name"] for p in json.loads(out)]


def test_subprocess_exit_code_and_no_traceback(tmp_path, tiny_package):
    bad = tmp_path / "x.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00broken")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "addiagnosis.cli.main", "diagnose", str(bad), "--model",
                           str(tiny_package), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
    assert not (tmp_path / "o").exists()


def test_preprocessing_warnings_reach_report_and_stderr(tmp_path, capsys, scan, tiny_package, monkeypatch):
    """A warning recorded by preprocessing (e.g. poor registration) is printed and lands in report.json."""
    import addiagnosis.prep.registry as pre

    original = pre._REGISTRY["physical"]

    def warn(volume, spec, grid):
        prepared = original(volume, spec, grid)
        prepared.info["warnings"] = ["registration looks poor (test)"]
        return prepared

    monkeypatch.setitem(pre._REGISTRY, "physical", warn)
    out = tmp_path / "w"
    code, _, err = run_cli(capsys, "diagnose", scan, "--model", tiny_package, "--out", out, "--no-figures")
    assert code == 0
    assert "addiagnosis: warning:" in err and "registration looks poor (test)" in err
    assert json.loads((out / "report.json").read_text())["warnings"] == ["registration looks poor (test)"]


def test_overview_shows_overlay_only_where_relevance_is(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from addiagnosis.io.report import overview_png
    from addiagnosis.io.volume import Volume

    arr, aff = make_scan("oblique-aniso")
    vol = Volume(arr.astype(np.float32), aff)

    def render(rel, name):
        res = SimpleNamespace(relevance=vol.like(rel), probabilities={"CN": 0.4, "AD": 0.6}, predicted="AD",
                              target="AD", method="lrp-alpha1beta0", research_use=RESEARCH_USE, model_notice=None)
        overview_png(vol, res, tmp_path / name)
        img = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(int)
        tiles = img[52:-26, : 5 * 170]  # the mosaic, without title, footer and colour bar
        return int(((tiles[..., 0] - tiles[..., 2]) > 60).sum())  # warm (red/yellow) pixels

    zero = np.zeros(vol.shape, np.float32)
    c = np.array(vol.shape) // 2
    ii, jj, kk = np.meshgrid(*[np.arange(n) - cc for n, cc in zip(vol.shape, c)], indexing="ij")
    blob = np.exp(-(ii ** 2 + jj ** 2 + kk ** 2) / (2 * 12.0 ** 2)).astype(np.float32)  # graded: red to white
    assert render(zero, "zero.png") == 0
    assert render(blob, "blob.png") > 500


def test_batch_cohort_with_one_bad_scan(tmp_path, capsys, tiny_package):
    import csv

    good1 = save_nifti(tmp_path / "sub-01.nii.gz", *make_scan("ras-1mm", noise_seed=1))
    save_nifti(tmp_path / "sub-02.nii.gz", *make_scan("lps-stored", noise_seed=2))  # listed in scans.txt
    bad = tmp_path / "sub-03.nii.gz"
    bad.write_bytes(b"not an image")
    listing = tmp_path / "scans.txt"
    listing.write_text("sub-02.nii.gz\nsub-03.nii.gz\n")
    out = tmp_path / "cohort"
    code, stdout, err = run_cli(capsys, "batch", good1, "--list", listing, "--model", tiny_package, "--out", out,
                                "--save", "relevance,report", "--workers", "0", "-q")
    assert code == 0  # one scan failed: the cohort ran, the failure is a row and counted (--strict: exit 2)
    assert err.count("addiagnosis: error:") == 1 and str(bad) in err
    assert "2 of 3 scans diagnosed, 1 failed" in stdout and RESEARCH_USE in stdout
    rows = list(csv.DictReader(open(out / "results.tsv"), delimiter="\t"))
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert sorted(p.name for p in (out / "scans").iterdir()) == ["sub-01", "sub-02"]
    for row in rows[:2]:
        report = json.loads((out / row["output"] / "report.json").read_text())["scan"]
        assert row["predicted"] == report["predicted"]
        for c in CLASSES:
            assert float(row[f"p_{c}"]) == pytest.approx(report["probabilities"][c], abs=1e-6)
        assert (out / row["output"] / "relevance.nii.gz").is_file()
