"""The CLI contract: files, report keys, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import argparse
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
from cohorts import masked_cohort
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


# ------------------------------------------------------------------------------ the command table and imports
NO_TORCH = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("addiagnosis.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
assert "torch" not in sys.modules, "torch was imported"
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [["addiagnosis", "--help"], ["addiagnosis", "models"]])
def test_help_and_models_do_not_import_torch(argv, model_dir):
    """`python -m addiagnosis.cli --help` lists every command of the table; --help and models load no torch."""
    from addiagnosis.cli.main import COMMANDS

    env = dict(os.environ, ADDIAGNOSIS_MODEL_PATH=str(model_dir))
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if argv[1] == "--help":
        listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("    ")
                  and not line.startswith("     ")]
        assert listed == [c.name for c in COMMANDS]
    else:
        assert "tiny test-1" in proc.stdout


def test_every_command_is_registered_by_its_module_in_the_table():
    from addiagnosis.cli.main import COMMANDS, build_parser

    parser = build_parser(load_all=True)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.name for c in COMMANDS]  # nothing registered outside the table
    for c in COMMANDS:
        func = sub.choices[c.name].get_default("func")
        tools = [a for a in sub.choices[c.name]._actions if isinstance(a, argparse._SubParsersAction)]
        funcs = [func] if func else [p.get_default("func") for p in tools[0].choices.values()]
        assert all(f is not None and f.__module__ == f"addiagnosis.cli.{c.module}" for f in funcs), c


def test_a_command_module_that_fails_to_import_is_a_one_line_error(monkeypatch, capsys):
    import addiagnosis.cli.main as cli_main

    monkeypatch.delitem(sys.modules, "addiagnosis.cli.research", raising=False)
    monkeypatch.setitem(sys.modules, "addiagnosis.research.synth", None)  # as if it could not be imported
    code, out, err = run_cli(capsys, "synth", "--out", "x")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("addiagnosis: error: command 'synth' is unavailable: cannot import addiagnosis.cli.research")
    assert "addiagnosis.research.synth" in err  # the reason
    with pytest.raises(SystemExit) as exc:  # --help still lists it
        cli_main.main(["--help"])
    assert exc.value.code == 0 and "synth" in capsys.readouterr().out
    # a dependency missing when the command runs: one line naming it
    import addiagnosis.cli.models as cli_models

    monkeypatch.setattr(cli_models, "cmd_models", lambda args: __import__("no_such_dependency_4711"))
    code, out, err = run_cli(capsys, "models")
    assert code == 2 and err == ("addiagnosis: error: 'models' needs the Python package 'no_such_dependency_4711', "
                                 "which is not installed\n")


@pytest.mark.parametrize("n", ["0", "-5"])
def test_compare_bootstrap_below_one_is_a_one_line_error(tmp_path, capsys, n):
    rows = ["scan\tstatus\tgroup\tsum_mtl\tdensity_mtl"]
    rows += [f"s{i}\tok\t{g}\t{1.0 + i}\t{0.1 * (i + 1)}" for i, g in enumerate(["AD", "AD", "AD", "CN", "CN", "CN"])]
    (tmp_path / "results.tsv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(capsys, "compare", tmp_path, "--bootstrap", "20", "--out", tmp_path / "ok")
    assert code == 0 and "mtl" in out and (tmp_path / "ok" / "gain.tsv").is_file()  # the table itself is usable
    code, out, err = run_cli(capsys, "compare", tmp_path, f"--bootstrap={n}", "--out", tmp_path / "bad")
    assert code == 2 and out == "" and "Traceback" not in err
    assert err == (f"addiagnosis: error: --bootstrap {n}: the number of bootstrap resamples must be at least 1\n")
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------ package tools (rewrite a package)
def test_package_record_evaluation_rewrites_the_card_with_checksums_verified(tmp_path, capsys, tiny_package):
    import shutil

    from addiagnosis.models.package import find_package
    from addiagnosis.research.evaluate import summary
    from addiagnosis.research.packaging import verify_checksums

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    data = masked_cohort(tmp_path / "cohortA")
    code, out, err = run_cli(capsys, "evaluate", pkg, data, "--out", tmp_path / "eval", "--randomisation-n", "2",
                             "--threads", "1", "--record-in-card")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    card = json.loads((pkg / "card.json").read_text())
    assert card["evaluation"]["accuracy"] == summary(metrics)["accuracy"]  # --record-in-card merged it
    before = dict(card)

    code, out, err = run_cli(capsys, "package", "record-evaluation", pkg, f"A={tmp_path / 'eval' / 'metrics.json'}",
                             "--note", "test run")
    assert code == 0, err
    assert "evaluation recorded for A (checksums verified)" in out
    card = json.loads((pkg / "card.json").read_text())
    want = summary(metrics)
    want["data"] = "cohortA"  # the cohort folder's name, not this machine's path
    assert card["evaluation"] == json.loads(json.dumps({"by_cohort": {"A": want}, "command": "test run"}))
    assert {k: v for k, v in card.items() if k != "evaluation"} == {k: v for k, v in before.items()
                                                                    if k != "evaluation"}
    verify_checksums(pkg)  # weights still match the card: the package loads
    assert find_package(str(pkg)).load_state_dict()
    assert not [p.name for p in pkg.iterdir() if p.name.startswith(".")]  # no staging left behind

    # bad input: one line, the card untouched
    text = (pkg / "card.json").read_bytes()
    (tmp_path / "bad.json").write_text('{"not": "metrics"}')
    for args, needle in (([f"A={tmp_path / 'bad.json'}"], "not the metrics.json of `addiagnosis evaluate`"),
                         ([f"A={tmp_path / 'missing.json'}"], "cannot read")):
        code, out, err = run_cli(capsys, "package", "record-evaluation", pkg, *args)
        _assert_user_error(code, err, needle)
        assert (pkg / "card.json").read_bytes() == text
    weights = pkg / card["weights"]["file"]
    weights.write_bytes(weights.read_bytes() + b"\0")  # tampered weights are never re-signed
    code, out, err = run_cli(capsys, "package", "record-evaluation", pkg, f"A={tmp_path / 'eval' / 'metrics.json'}")
    _assert_user_error(code, err, "weights file does not match its SHA-256 in the card")
    assert (pkg / "card.json").read_bytes() == text


def test_package_add_template(tmp_path, capsys):
    from addiagnosis.files import sha256_file
    from addiagnosis.models.package import write_package
    from addiagnosis.prep.template import ASSETS_KEY, load_assets
    from addiagnosis.research.packaging import verify_checksums

    from conftest import card_for, random_model

    pkg = write_package(tmp_path / "tpl", random_model().state_dict(), card_for("tpl", kind="template")).path
    code, out, err = run_cli(capsys, "package", "add-template", pkg)
    assert code == 0, err
    entry = json.loads((pkg / "card.json").read_text())["preprocessing"][ASSETS_KEY]
    assert sha256_file(pkg / entry["file"]) == entry["sha256"] and f"sha256 {entry['sha256'][:12]}" in out
    verify_checksums(pkg)
    template = load_assets(pkg, entry)  # what template alignment reads: SHA-256 checked again
    assert template.head.ndim == 3 and template.brain.any()
    physical = write_package(tmp_path / "phys", random_model().state_dict(), card_for("phys")).path
    text = (physical / "card.json").read_bytes()
    code, out, err = run_cli(capsys, "package", "add-template", physical)
    _assert_user_error(code, err, "not a template-preprocessed model package")
    assert (physical / "card.json").read_bytes() == text and sorted(p.name for p in physical.iterdir()) == [
        "card.json", "weights.pt"]
