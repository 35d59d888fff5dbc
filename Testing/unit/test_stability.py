"""Stability of relevance maps (issue 11, part 2): twins, input noise, input randomisation, evaluate --stability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from addiagnosis.engine import Diagnoser
from addiagnosis.io.volume import Volume
from addiagnosis.research import stability, synth


@pytest.fixture(scope="module")
def diagnoser():
    from addiagnosis.resources import BUNDLED_MODELS_DIR as BUNDLED_DIR

    if not (Path(BUNDLED_DIR) / "addiagnosis-synthetic-demo" / "card.json").exists():
        pytest.skip("bundled demo model not present")
    return Diagnoser("addiagnosis-synthetic-demo")


@pytest.fixture(scope="module")
def subjects():
    out = []
    for i, label in enumerate(("AD", "CN")):
        p = {**synth.subject_params(9, i, label), "participant_id": f"s{i}", "spacing": [2.0, 2.0, 2.0]}
        vol, _, _ = synth.make_subject(p)
        out.append((Volume(vol.array.astype(np.float32), vol.ijk_to_ras, p["participant_id"]), label))
    return out


def test_twins_are_the_same_physical_scan(subjects):
    vol, _ = subjects[0]
    tw = stability.twins(vol)
    flip = tw["flip"]
    # the flipped twin puts the same value at the same physical point
    ijk = np.array([10, 20, 30, 1.0])
    ras = vol.ijk_to_ras @ ijk
    fijk = np.round(np.linalg.inv(flip.ijk_to_ras) @ ras).astype(int)
    assert flip.array[tuple(fijk[:3])] == vol.array[10, 20, 30]
    back = stability.onto(tw["pad"].array, tw["pad"], vol)
    assert np.allclose(back, vol.array, rtol=1e-3, atol=0.05)
    assert tw["resample"].shape != vol.shape


def test_subject_stability_on_a_few_subjects(diagnoser, subjects):
    torch.manual_seed(0)
    per = []
    timings = {}
    for vol, label in subjects:
        res = stability.subject_stability(diagnoser, vol, ["lrp-alpha1beta0", "gradient-x-input"], label,
                                          timings=timings)
        assert set(res) == {"lrp-alpha1beta0", "gradient-x-input"}
        for r in res.values():
            assert set(r) == set(stability.KINDS)
            assert r["pad"] > 0.98 and r["flip"] > 0.95  # the same physical scan
            assert r["noise_1pct"] >= r["noise_2pct"] - 0.02  # more noise, less agreement
            assert -1.0 <= r["input_randomisation"] <= 1.0
        per.append(res)
    assert len(timings["lrp-alpha1beta0"]) == 2 * 7  # unchanged, 3 twins, 2 noise levels, permuted: per subject
    summary = stability.summarise(per)
    s = summary["lrp-alpha1beta0"]["noise_1pct"]
    assert s["n"] == 2 and s["p5"] <= s["median"] <= 1.0
    assert "median_abs" in summary["gradient-x-input"]["input_randomisation"]


def test_noise_and_permutation_keep_the_background():
    x = torch.zeros(1, 1, 10, 10, 10)
    x[0, 0, 3:7, 3:7, 3:7] = torch.linspace(0.1, 1.0, 64).reshape(4, 4, 4)
    rng = np.random.default_rng(0)
    n = stability.noisy(x, 0.02, rng)
    assert torch.all(n[x == 0] == 0) and 0.005 < float((n - x)[x != 0].std()) < 0.04
    p, region = stability.permuted(x, rng)
    assert torch.all(p[x == 0] == 0)
    assert np.allclose(np.sort(p[0, 0].numpy()[region]), np.sort(x[0, 0].numpy()[region]))


def test_evaluate_reports_stability(diagnoser, tmp_path):
    from addiagnosis.research.evaluate import evaluate

    synth.generate(2, tmp_path / "c", seed=4, workers=1, progress=None,
                   options={"spacing_range": [2.0, 2.4], "slice_spacing_range": [2.0, 2.4]})
    res = evaluate(diagnoser.package, tmp_path / "c", None, method="lrp-alpha1beta0", randomisation_n=0,
                   log=lambda m: None, stability_n=1)
    st = res["explanation"]["stability"]
    assert st["n_scans"] == 1 and set(st["per_method"]) == {"lrp-alpha1beta0"}
    assert st["per_method"]["lrp-alpha1beta0"]["pad"]["median"] > 0.98
