"""Input quality control (prep/qc.py) and the out-of-distribution score (models/ood.py), without registration.

The QC checks get the template head itself as the scan (its own MNI grid, identity registration) and versions
of it with one thing wrong; the OOD fit is checked against scikit-learn's Ledoit-Wolf and round-trips through a
package folder with its checksum.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from addiagnosis.errors import ModelError
from addiagnosis.io.volume import Volume
from addiagnosis.models import ood
from addiagnosis.prep import qc
from addiagnosis.prep.template import registration_template

GOOD_REG = {"registration": {"correlation": 0.8, "converged": True}}


@pytest.fixture(scope="module")
def head():
    """The template head as a scan (white matter 1000) and the template's brain mask."""
    T = registration_template()
    rng = np.random.default_rng(0)
    a = T.head * 1000.0 + np.abs(rng.normal(0, 20.0, T.head.shape))
    return Volume(a.astype(np.float32), T.affine.copy(), "template"), T.brain


def assess(vol: Volume, card=None, reg=None) -> dict:
    info = {"mni_to_input_ras": np.eye(4).tolist(), **(reg or GOOD_REG)}
    return qc.assess(vol, info, card)


def verdicts(rec: dict) -> dict:
    return {r["check"]: r["verdict"] for r in rec["reasons"]}


def test_template_head_passes_every_check(head):
    vol, _ = head
    rec = assess(vol)
    assert rec["verdict"] == "pass", rec["reasons"]
    assert set(verdicts(rec)) == set(qc.CHECKS)
    m = rec["measures"]
    assert m["coverage"] == 1.0
    assert m["wm"] > m["gm"] > m["csf"]
    assert 0.3 < m["gm_position"] < 0.8 and m["wm_csf_span"] > 0.5
    assert m["scalp"] > 0.5 and m["background"] < 0.1


@pytest.mark.parametrize("knots,why", [((0.0, 0.05, 1.0, 0.55, 0.5, 0.35, 0.3), "T2"),
                                       ((0.0, 0.05, 0.08, 0.8, 0.7, 0.6, 0.55), "FLAIR")])
def test_other_contrasts_fail(head, knots, why):
    vol, _ = head
    t1 = np.asarray(vol.array) / 1000.0
    remapped = vol.like(np.interp(t1, (0.0, 0.08, 0.28, 0.7, 0.85, 1.0, 2.0), knots).astype(np.float32) * 1000)
    rec = assess(remapped)
    assert verdicts(rec)["contrast"] == "fail", (why, rec["measures"])
    assert rec["verdict"] == "fail"
    assert "not a T1 contrast" in rec["reasons"][0]["detail"]


def test_cropped_field_of_view_fails_coverage(head):
    vol, _ = head
    a = np.asarray(vol.array)
    keep = a.shape[2] // 2  # the lower half of the head only
    cropped = Volume(np.ascontiguousarray(a[:, :, :keep]), vol.ijk_to_ras.copy(), "cropped")
    rec = assess(cropped)
    assert verdicts(rec)["coverage"] == "fail"
    assert rec["measures"]["coverage"] < 0.7


def test_skull_stripped_is_recognised_and_the_card_decides(head):
    vol, brain = head
    stripped = vol.like(np.where(brain, np.asarray(vol.array), 0.0).astype(np.float32))
    rec = assess(stripped)
    assert verdicts(rec)["skull"] == "warn" and rec["verdict"] == "warn"
    assert rec["measures"]["scalp"] < 0.12
    assert verdicts(assess(stripped, {"qc": {"skull_stripped": "pass"}}))["skull"] == "pass"


def test_saturation_and_background(head):
    vol, _ = head
    a = np.asarray(vol.array)
    saturated = vol.like(np.minimum(a, np.percentile(a[a > 500], 50)))
    rec = assess(saturated)
    assert verdicts(rec)["intensity"] == "fail" and rec["measures"]["at_max"] > 0.1
    bright_bg = vol.like(np.maximum(a, 500.0))  # a constant bright band wherever the head is not
    assert verdicts(assess(bright_bg))["intensity"] == "fail"


def test_resolution_and_registration_records():
    t = qc.thresholds()
    assert qc.check_resolution((1.0, 1.0, 1.2), t["resolution"])["verdict"] == "pass"
    assert qc.check_resolution((1.0, 5.0, 1.0), t["resolution"])["verdict"] == "warn"
    assert qc.check_resolution((1.0, 1.0, 7.0), t["resolution"])["verdict"] == "fail"
    assert qc.check_resolution((4.0, 4.0, 4.0), t["resolution"])["verdict"] == "fail"
    assert qc.check_registration({"correlation": 0.3, "converged": True}, t["registration"])["verdict"] == "fail"
    assert qc.check_registration({"correlation": 0.55, "converged": False}, t["registration"])["verdict"] == "warn"
    # a stage at its iteration cap with a good correlation: the alignment holds (said in the detail, no warning)
    late = qc.check_registration({"correlation": 0.8, "converged": False}, t["registration"])
    assert late["verdict"] == "pass" and "did not converge" in late["detail"]


def test_card_overrides_thresholds_key_by_key(head):
    vol, _ = head
    card = {"qc": {"thresholds": {"coverage": {"fail_below": 1.01}}}}
    t = qc.thresholds(card)
    assert t["coverage"] == {"fail_below": 1.01, "warn_below": qc.QC_THRESHOLDS["coverage"]["warn_below"]}
    assert verdicts(assess(vol, card))["coverage"] == "fail"
    assert qc.QC_THRESHOLDS["coverage"]["fail_below"] == 0.85  # the table itself is untouched


def test_without_template_alignment_only_resolution_is_checked(head):
    vol, _ = head
    rec = qc.assess(vol, {"kind": "physical"})
    assert [r["check"] for r in rec["reasons"]] == ["resolution"] and rec["measures"] == {}


def test_record_is_plain_json_and_ood_adds_a_warning(head):
    vol, _ = head
    rec = assess(vol)
    plain = json.loads(json.dumps(qc.with_ood(rec, None)))
    assert plain["ood"] is None and plain["verdict"] == "pass"
    far = qc.with_ood(rec, {"score": 30.0, "percentile": 100.0, "threshold": 20.0, "threshold_percentile": 99.0})
    assert far["verdict"] == "warn" and far["reasons"][0]["check"] == "ood"
    assert "QC warn" in qc.summary_line(far) and "ood:" in qc.summary_line(far)
    near = qc.with_ood(rec, {"score": 10.0, "percentile": 40.0, "threshold": 20.0, "threshold_percentile": 99.0})
    assert near["verdict"] == "pass" and near["ood"]["percentile"] == 40.0


# ------------------------------------------------------------------------------------------ OOD
def test_ledoit_wolf_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 20)) @ rng.normal(size=(20, 20))
    cov, shrink = ood.ledoit_wolf(X)
    ref = covariance.LedoitWolf().fit(X)
    assert shrink == pytest.approx(ref.shrinkage_, rel=1e-10)
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-10, atol=1e-12)


def test_ood_fit_scores_and_percentiles():
    rng = np.random.default_rng(2)
    train, val = rng.normal(size=(300, 8)), rng.normal(size=(100, 8))
    fit = ood.fit(train, val, "f" * 64, percentile=95.0)
    assert fit.threshold == pytest.approx(np.percentile(fit.val_scores, 95.0))
    inside = fit.score(np.zeros(8))
    outside = fit.score(np.full(8, 6.0))
    assert inside["percentile"] == 0.0 and inside["score"] < fit.threshold
    assert outside["percentile"] == 100.0 and outside["score"] > fit.threshold
    # the Mahalanobis distance by hand
    d = np.full(8, 6.0) - train.mean(0)
    cov, _ = ood.ledoit_wolf(train)
    assert outside["score"] == pytest.approx(np.sqrt(d @ np.linalg.solve(cov, d)), abs=1e-3)


def test_ood_package_round_trip_and_checks(tmp_path):
    from addiagnosis.models.network import ClassificationModel3D

    model = ClassificationModel3D((80, 80, 80), n_classes=3).eval()
    X = torch.rand(12, 1, 80, 80, 80)
    f = ood.features(model, X)
    assert f.shape == (12, 128)
    with torch.no_grad():  # dense_1 before its ReLU, by the network's own layers
        x = X[:2]
        for conv, bn, mp in model.blocks():
            x = mp(model.relu(bn(conv(x))))
        np.testing.assert_allclose(f[:2], model.dense_1(x.reshape(2, -1)).numpy(), rtol=1e-5, atol=1e-6)
    state = model.state_dict()
    fit = ood.fit(f[:8], f[8:], ood.features_sha256(state))
    entry = ood.save(fit, tmp_path)
    card = {"ood": entry}
    back = ood.load(tmp_path, card, state)
    np.testing.assert_allclose(back.val_scores, fit.val_scores)
    assert back.score(f[0]) == fit.score(f[0])
    assert ood.load(tmp_path, {}, state) is None  # no entry: no score
    # the last layer (a folded temperature) does not touch the features: the fit still holds
    scaled = {k: (v / 2 if k.startswith("dense_2.") else v) for k, v in state.items()}
    assert ood.load(tmp_path, card, scaled) is not None
    other = {k: (v + 1 if k == "dense_1.bias" else v) for k, v in state.items()}
    assert ood.load(tmp_path, card, other) is None  # fit of other weights: no score
    (tmp_path / entry["file"]).write_bytes(b"x" + (tmp_path / entry["file"]).read_bytes())
    with pytest.raises(ModelError, match="SHA-256"):
        ood.load(tmp_path, card, state)
    (tmp_path / entry["file"]).unlink()
    with pytest.raises(ModelError, match="missing"):
        ood.load(tmp_path, card, state)


def test_attach_writes_the_fit_into_a_package_under_its_checksum(tmp_path):
    from addiagnosis.models.card import read_card
    from addiagnosis.models.network import ClassificationModel3D
    from addiagnosis.models.package import write_package
    from addiagnosis.research import oodfit
    from addiagnosis.research.packaging import verify_checksums

    torch.manual_seed(0)
    model = ClassificationModel3D((80, 80, 80), n_classes=2).eval()
    card = {"name": "tiny", "version": "1", "class_names": ["CN", "AD"],
            "input_grid": {"shape": [80, 80, 80], "spacing": [2.0, 2.0, 2.0]}, "preprocessing": {"kind": "physical"},
            "intended_use": "test", "training_data": "none"}
    pkg = write_package(tmp_path / "pkg", model.state_dict(), card)
    X = torch.rand(10, 1, 80, 80, 80)
    entry = oodfit.attach(pkg.path, model, X[:6], X[6:], percentile=95.0)
    written = read_card(pkg.path)
    assert written["ood"] == entry and entry["n_train"] == 6 and entry["n_val"] == 4
    verify_checksums(pkg.path, written)  # the weights are untouched
    fit = ood.load(pkg.path, written, model.state_dict())
    assert fit.threshold == pytest.approx(np.percentile(fit.val_scores, 95.0))
    assert fit.score(ood.features(model, X[6:7])[0])["percentile"] >= 25.0  # a validation scan counts itself
    (pkg.path / entry["file"]).write_bytes(b"tampered")
    with pytest.raises(ModelError, match="OOD file does not match"):
        verify_checksums(pkg.path)
