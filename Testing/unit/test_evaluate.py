"""Metrics on cases with a known answer, and the evaluate command end to end on a tiny package."""

from __future__ import annotations

import json

import numpy as np
import pytest

from addiagnosis import metrics
from addiagnosis.models.network import ClassificationModel3D
from addiagnosis.models.package import write_package
from addiagnosis.research import evaluate

from cohorts import masked_cohort


def test_confusion_balanced_accuracy_recall():
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 1, 0, 2]
    cm = metrics.confusion_matrix(y, p, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics.per_class_recall(cm) == [0.75, 1.0, 0.5]
    assert metrics.balanced_accuracy(y, p, 3) == pytest.approx(0.75)


def test_calibration_error_known_values():
    probs = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 9 + [1])  # 90 % confident, 90 % right
    assert metrics.expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-9)
    y2 = np.array([0] * 5 + [1] * 5)  # 90 % confident, 50 % right
    assert metrics.expected_calibration_error(probs, y2) == pytest.approx(0.4)


def test_cn_vs_ad_and_report():
    classes = ["CN", "EMCI", "MCI", "LMCI", "AD"]
    probs = np.array([[0.6, 0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.5, 0.1, 0.2], [0.3, 0.1, 0.1, 0.1, 0.4],
                      [0.5, 0.1, 0.1, 0.1, 0.2]])
    y = [0, 0, 4, 4]
    rep = metrics.classification_report(probs, y, classes)
    # CN: 0.6>0.1 right, 0.1<0.2 wrong; AD: 0.4>0.3 right, 0.2<0.5 wrong -> (0.5 + 0.5) / 2
    assert rep["cn_vs_ad_balanced_accuracy"] == pytest.approx(0.5)
    assert rep["accuracy"] == pytest.approx(0.5)


def test_explanation_metrics_known_answers():
    mask = np.zeros((10, 10, 10), bool)
    mask[:5] = True
    rel = np.zeros((10, 10, 10))
    rel[2, 2, 2] = 3.0
    rel[7, 7, 7] = 1.0
    rel[8, 8, 8] = -5.0  # negative relevance is not counted as mass
    assert metrics.relevance_mass_accuracy(rel, mask) == pytest.approx(0.75)
    assert metrics.pointing_game(rel, mask) is True
    assert metrics.pointing_game(-rel, mask) is False
    ramp = np.arange(1000, dtype=float).reshape(10, 10, 10)
    assert metrics.relevance_rank_accuracy(ramp, ~mask) == pytest.approx(1.0)
    assert metrics.relevance_rank_accuracy(ramp, mask) == pytest.approx(0.0)
    assert metrics.relevance_mass_accuracy(rel, np.zeros_like(mask)) is None
    a = np.random.default_rng(0).normal(size=1000)
    assert metrics.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert metrics.spearman(a, a ** 3) == pytest.approx(1.0)


def test_severity_trend_known_answers():
    classes = ["CN", "EMCI", "MCI", "LMCI", "AD"]
    sev = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    late = np.linspace(0.0, 0.9, 8)  # P(LMCI) + P(AD) grows with severity
    probs = np.stack([np.r_[1 - v, 0, 0, v / 2, v / 2] for v in late])
    t = metrics.severity_trend(sev, probs, classes)
    assert t["classes"] == ["LMCI", "AD"] and t["n"] == 8 and t["rising"]
    assert t["spearman_rho"] == pytest.approx(1.0)
    assert t["mean_by_severity_quantile"] == pytest.approx([0.0643, 0.3214, 0.5786, 0.8357], abs=1e-4)
    t = metrics.severity_trend(sev[::-1], probs, classes)  # falls with severity
    assert t["spearman_rho"] == pytest.approx(-1.0) and not t["rising"]
    flat = np.stack([np.r_[1 - v, 0, 0, v / 2, v / 2] for v in [0.002, 0.001, 0.0, 0.001, 0.5, 0.6, 1.0, 1.0]])
    t = metrics.severity_trend(sev, flat, classes)  # the two lowest bins both ~0: a dip of 0.001 is no fall
    assert t["mean_by_severity_quantile"][1] < t["mean_by_severity_quantile"][0] and t["rising"]
    dip = np.stack([np.r_[1 - v, 0, 0, v / 2, v / 2] for v in [0.3, 0.3, 0.1, 0.1, 0.5, 0.6, 1.0, 1.0]])
    assert not metrics.severity_trend(sev, dip, classes)["rising"]  # a fall of 0.2 is one
    assert not metrics.severity_trend(sev, np.tile(flat[:1], (8, 1)), classes)["rising"]  # flat: not rising
    t = metrics.severity_trend([None] * 4 + sev[4:], probs, classes)  # severities unknown for half: too few
    assert t is None


def test_evaluate_end_to_end(tmp_path):
    grid = [80, 80, 80]
    card = {"name": "tiny", "version": "0", "class_names": ["CN", "EMCI", "MCI", "LMCI", "AD"],
            "input_grid": {"shape": grid, "spacing": [1.2] * 3, "orientation": "RAS"},
            "preprocessing": {"kind": "physical", "centre": "fov"}, "intended_use": "test",
            "training_data": "none"}
    import torch

    torch.manual_seed(0)
    pkg = write_package(tmp_path / "pkg", ClassificationModel3D(grid, 5).state_dict(), card)
    masked_cohort(tmp_path)
    res = evaluate.evaluate(pkg, tmp_path, tmp_path / "eval", randomisation_n=2, log=lambda m: None,
                            faithfulness_n=1)
    assert res["n_scans"] == 3
    faith = res["explanation"]["faithfulness"]  # the first AD scan (CN is skipped): AOPCs against random
    assert faith["n"] == 1 and set(faith["per_class"]) == {"AD"}
    assert faith["deletion_faster_than_random"] in (0.0, 1.0)
    assert 0.0 <= res["explanation"]["per_class"]["AD"]["median_mass_accuracy"] <= 1.0
    assert res["explanation"]["randomisation"]["n"] == 2
    for f in ("metrics.json", "subjects.tsv", "confusion.png", "report.html", "example.png"):
        assert (tmp_path / "eval" / f).exists(), f
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["package"] == "tiny"
    assert res["severity_trend"] is None  # 3 scans with a severity: too few for a trend
    assert (tmp_path / "eval" / "subjects.tsv").read_text().splitlines()[0].split("\t")[:3] == [
        "subject", "class", "severity"]
    assert res["prediction_sets"] is None  # the card has no conformal block: no sets, no columns
    assert "prediction_set" not in (tmp_path / "eval" / "subjects.tsv").read_text()


def test_evaluate_measures_prediction_set_coverage(tmp_path):
    """With a conformal block in the card, evaluate gives every subject its set and the cohort its coverage;
    checked against the sets made by hand from the probabilities subjects.tsv records."""
    import csv

    import torch

    grid = [80, 80, 80]
    classes = ["CN", "EMCI", "MCI", "LMCI", "AD"]
    card = {"name": "tiny", "version": "0", "class_names": classes,
            "input_grid": {"shape": grid, "spacing": [1.2] * 3, "orientation": "RAS"},
            "preprocessing": {"kind": "physical", "centre": "fov"}, "intended_use": "test",
            "training_data": "none", "conformal": {"coverage": 0.9, "threshold": 0.79}}
    torch.manual_seed(0)
    pkg = write_package(tmp_path / "pkg", ClassificationModel3D(grid, 5).state_dict(), card)
    masked_cohort(tmp_path)
    res = evaluate.evaluate(pkg, tmp_path, tmp_path / "eval", randomisation_n=0, log=lambda m: None)
    with open(tmp_path / "eval" / "subjects.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    covered = []
    for r in rows:
        p = [float(r[f"p_{c}"]) for c in classes]
        expected = [c for c, v in zip(classes, p) if 1 - v <= 0.79] or [classes[int(np.argmax(p))]]
        assert r["prediction_set"].split(",") == expected
        covered.append(r["class"] in expected)
        assert int(r["set_covers_true"]) == covered[-1]
    sets = res["prediction_sets"]
    assert sets["n"] == 3 and sets["target_coverage"] == 0.9 and sets["threshold"] == 0.79
    assert sets["coverage"] == pytest.approx(np.mean(covered))
    assert sets["mean_set_size"] == pytest.approx(np.mean([len(r["prediction_set"].split(",")) for r in rows]))
    assert evaluate.summary(res)["prediction_sets"] == sets
    assert "90% prediction sets: coverage" in (tmp_path / "eval" / "report.html").read_text()


def test_grid_step_is_the_diagnosis_before_map_back(tmp_path):
    """Diagnoser.explain_on_grid (what evaluate calls) gives exactly what run() maps back and reports."""
    import torch

    from addiagnosis.engine import Diagnoser
    from addiagnosis.io.volume import Volume

    grid = [80, 80, 80]
    card = {"name": "tiny", "version": "0", "class_names": ["CN", "AD"],
            "input_grid": {"shape": grid, "spacing": [1.2] * 3, "orientation": "RAS"},
            "preprocessing": {"kind": "physical", "centre": "fov"}, "intended_use": "test", "training_data": "none"}
    torch.manual_seed(1)
    pkg = write_package(tmp_path / "pkg", ClassificationModel3D(grid, 2).state_dict(), card)
    a = np.random.default_rng(2).normal(0.1, 0.02, (24, 26, 22)).astype(np.float32)
    a[4:20, 4:20, 4:20] += 1.0
    vol = Volume(a, np.diag([4.0, 3.5, 4.2, 1.0]), "s")
    d = Diagnoser(pkg)
    g = d.explain_on_grid(vol, "lrp-epsilon", "CN")
    res = d.run(vol, "lrp-epsilon", "CN")
    assert g.relevance.shape == tuple(grid) and g.target == 0 and g.method == "lrp-epsilon"
    assert np.array_equal(g.on_input(), res.relevance.array)
    assert [res.probabilities[c] for c in ("CN", "AD")] == g.probabilities.tolist()
    assert res.summary["sum_model_grid"] == float(g.relevance.sum(dtype=np.float64))
    again = d.explain_tensor(g.prepared.tensor, "lrp-epsilon", 0)  # the same input, already prepared
    assert again.prepared is None and np.array_equal(again.relevance, g.relevance)
    predicted = d.explain_on_grid(vol, "lrp-epsilon")  # no target: the predicted class
    assert predicted.target == predicted.predicted == int(np.argmax(g.probabilities))
