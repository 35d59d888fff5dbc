"""Input QC and the OOD score through the engine and its front ends, with the bundled model (issue 18).

A valid T1 (the bundled example scan) and the same scan remapped to a T2-like contrast go through the real
registration, network and outputs: the T1 passes, the T2 fails on its contrast; the record is a plain dict in
report.json and survives the worker's result.json; the overview of a failed scan says it is not interpretable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from addiagnosis.engine import get_diagnoser
from addiagnosis.io.report import write_outputs
from addiagnosis.io.volume import read_nifti
from addiagnosis.prep import qc
from addiagnosis.research import qcset
from addiagnosis.resources import default_scan

from contrasts import t2_like


@pytest.fixture(scope="module")
def diagnoser():
    return get_diagnoser(None)


@pytest.fixture(scope="module")
def t1():
    return read_nifti(default_scan())


@pytest.fixture(scope="module")
def results(diagnoser, t1):
    return {"t1": diagnoser.run(t1), "t2": diagnoser.run(t2_like(t1))}


def test_valid_t1_passes_every_check(results):
    rec = results["t1"].qc
    assert rec["verdict"] == "pass", rec["reasons"]
    assert {r["check"] for r in rec["reasons"]} >= set(qc.CHECKS)
    assert all(set(r) == {"check", "verdict", "detail"} for r in rec["reasons"])
    assert rec["measures"]["coverage"] > 0.99 and rec["measures"]["wm"] > rec["measures"]["gm"] > rec["measures"]["csf"]
    assert "qc" in results["t1"].timings


def test_t2_contrast_fails_and_is_reported(results, tmp_path, t1):
    result = results["t2"]
    rec = result.qc
    assert rec["verdict"] == "fail"
    contrast = next(r for r in rec["reasons"] if r["check"] == "contrast")
    assert contrast["verdict"] == "fail" and "not a T1 contrast" in contrast["detail"]
    assert rec["reasons"][0]["verdict"] == "fail"  # worst first
    vol = t2_like(t1)
    files = write_outputs(tmp_path / "out", vol, result, result.report(vol))  # outputs are still written
    report = json.loads(files["report"].read_text())
    assert report["qc"]["verdict"] == "fail" and report["qc"]["reasons"] == json.loads(json.dumps(rec["reasons"]))
    assert files["overview"].stat().st_size > 0
    assert "QC fail (not interpretable): contrast:" in qc.summary_line(rec)


def test_ood_score_when_the_package_has_a_fit(results, diagnoser):
    for result in results.values():
        ood = result.qc["ood"]
        if diagnoser.ood is None:
            assert ood is None
            continue
        assert set(ood) == {"score", "percentile", "threshold", "threshold_percentile"}
        assert 0.0 <= ood["percentile"] <= 100.0 and ood["threshold"] == pytest.approx(diagnoser.ood.threshold, 1e-3)
    if diagnoser.ood is not None:  # the T2-like scan lies further from the training scans than the T1
        assert results["t2"].qc["ood"]["score"] > results["t1"].qc["ood"]["score"]


def test_qc_survives_the_worker_result_file(results, tmp_path):
    from addiagnosis.worker import protocol

    result = results["t2"]
    np.save(tmp_path / "ijk_to_ras.npy", result.relevance.ijk_to_ras)
    protocol.write_result(str(tmp_path), result)
    back = protocol.read_result(str(tmp_path), {})
    assert back.qc == json.loads(json.dumps(result.qc))
    assert back.qc["verdict"] == "fail"


def test_cli_stderr_line_and_strict_qc(tmp_path, capsys, t1):
    """diagnose: one stderr line for a failed input, exit 2 with --strict-qc, outputs written all the same;
    batch: qc columns in results.tsv, exit 2 with --strict-qc when a scan failed."""
    from addiagnosis.cli.main import main
    from addiagnosis.io.volume import write_nifti

    scans = tmp_path / "scans"
    scans.mkdir()
    write_nifti(t2_like(t1), scans / "t2like.nii.gz")
    write_nifti(t1, scans / "t1.nii.gz")
    code = main(["diagnose", str(scans / "t2like.nii.gz"), "--out", str(tmp_path / "one"), "--strict-qc", "-q"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = [ln for ln in err.splitlines() if "QC fail" in ln]
    assert len(lines) == 1 and "t2like" in lines[0] and "not interpretable" in lines[0] and "contrast:" in lines[0]
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    assert report["qc"]["verdict"] == "fail" and (tmp_path / "one" / "relevance.nii.gz").exists()

    code = main(["batch", str(scans), "--out", str(tmp_path / "batch"), "--workers", "0", "--strict-qc", "-q",
                 "--save", "report"])
    out, err = capsys.readouterr()
    assert code == 2
    assert sum("QC fail" in ln for ln in err.splitlines()) == 1
    import csv

    with open(tmp_path / "batch" / "results.tsv", newline="") as fh:
        rows = {r["scan_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert set(qc.COLUMNS) <= set(next(iter(rows.values())))
    by_name = {k.split("/")[-1]: v for k, v in rows.items()}
    t1_row = next(v for k, v in by_name.items() if k.startswith("t1"))
    t2_row = next(v for k, v in by_name.items() if k.startswith("t2like"))
    assert t1_row["qc_verdict"] == "pass" and t1_row["qc_reasons"] == ""
    assert t2_row["qc_verdict"] == "fail" and t2_row["qc_reasons"].startswith("contrast: not a T1 contrast")
    if t1_row["ood_percentile"]:
        assert 0 <= float(t1_row["ood_percentile"]) <= 100 and float(t2_row["ood_score"]) > float(t1_row["ood_score"])


def test_a_handful_of_the_qc_test_set(diagnoser):
    """A few cases of research/qcset.py through registration and QC: valid T1s do not fail, other contrasts,
    phantoms and very low resolution do (the full set: scripts/experiments/qc_confusion.py, docs/qc.md)."""
    from addiagnosis.prep.physical import prepare

    card = diagnoser.package.card
    want = {"t1-default-1.5mm-0": "pass", "t1-default-1x1x3mm-PIR-2": "pass", "flair-2": "fail", "ct-3": "fail",
            "spheres-0": "fail", "noise-head-2": "fail", "lowres-2": "fail"}
    cases = [*qcset.valid_cases(3, 31), *qcset.contrast_cases(1, 31), *qcset.phantom_cases(1, 31)]
    cases += [c for c in qcset.degraded_cases(1, 31) if c[2] == "lowres"]
    got = {}
    for name, _group, _kind, vol, _pose in cases:
        if name in want:
            rec = qc.assess(vol, prepare(vol, card).info, card)
            got[name] = rec["verdict"]
            if want[name] == "fail":
                assert any(r["verdict"] == "fail" for r in rec["reasons"])
    assert got == want
