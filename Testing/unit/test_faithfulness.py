"""Deletion / insertion curves against random regions (addiagnosis.research.faithfulness, issue 19).

A toy model whose evidence is known (the mean of a box of the input) checks the mechanics: a map on the box
makes deletion fall and insertion rise faster than random, the inverted map slower; deleting every cube gives
the reference's probability. Then the bundled model on the example AD scan: its default map beats random.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from addiagnosis.research import faithfulness as fa

SHAPE = (24, 28, 24)
BOX = (slice(8, 16), slice(8, 16), slice(8, 16))


class BoxModel(torch.nn.Module):
    """Two classes; the logit of class 1 is 20 x (mean of the box - 0.5)."""

    def forward(self, x):
        m = x[:, 0][(slice(None), *BOX)].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), 20.0 * (m - 0.5)], 1)


@pytest.fixture(scope="module")
def scan():
    rng = np.random.default_rng(0)
    x = np.zeros(SHAPE, np.float32)
    x[2:22, 2:26, 2:22] = 0.4 + 0.1 * rng.random((20, 24, 20))  # the "brain"
    x[BOX] = 1.0  # evidence for class 1
    ref = np.where(x != 0, 0.2, 0.0).astype(np.float32)
    box = np.zeros(SHAPE, np.float32)
    box[BOX] = 1.0
    return x, ref, box


def test_cubes_tile_the_brain(scan):
    x, _, _ = scan
    labels, n = fa.cubes(x, 4)
    assert n == 6 * 7 * 6  # the brain is voxels 2-21, 2-25, 2-21: it touches 6 x 7 x 6 cubes of 4
    assert (labels[x == 0] == -1).all() and (labels[x != 0] >= 0).all()
    assert len(np.unique(labels[labels >= 0])) == n


def test_a_map_on_the_evidence_beats_random(scan):
    x, ref, box = scan
    s = fa.Settings(region=4, steps=6, max_fraction=0.3, n_random=3)
    good = fa.scan_curves(BoxModel().eval(), x, ref, box, 1, s)
    assert good["p_scan"] > 0.99 and good["p_reference"] < 0.01
    # the box is 8 of 252 cubes: after the first step (5 % = 13 cubes) it is all reference
    assert good["deletion"][0] < 0.01 and good["insertion"][0] > 0.99
    assert good["deletion_faster_than_random"] and good["insertion_faster_than_random"]
    assert good["aopc_deletion"] > good["aopc_deletion_random"] + 0.3
    bad = fa.scan_curves(BoxModel().eval(), x, ref, -box, 1, s, random_curves=good["random"])
    assert bad["random"] == good["random"]
    assert not bad["deletion_faster_than_random"] and not bad["insertion_faster_than_random"]
    np.testing.assert_allclose(bad["deletion"], good["p_scan"], atol=1e-9)  # box never reached within 30 %


def test_deleting_everything_gives_the_reference(scan):
    x, ref, box = scan
    c = fa.scan_curves(BoxModel().eval(), x, ref, box, 1, fa.Settings(region=4, steps=2, max_fraction=1.0))
    assert c["deletion"][-1] == pytest.approx(c["p_reference"]) and c["insertion"][-1] == pytest.approx(c["p_scan"])
    assert c["fractions"][-1] == 1.0


def test_summary_counts_scans_that_beat_random(scan):
    x, ref, box = scan
    s = fa.Settings(region=4, steps=4, max_fraction=0.3, n_random=1)
    rows = [fa.scan_curves(BoxModel().eval(), x, ref, m, 1, s) for m in (box, -box, box)]
    summ = fa.summarise(rows, ["AD", "AD", "LMCI"])
    assert summ["n"] == 3 and summ["deletion_faster_than_random"] == pytest.approx(2 / 3)
    assert summ["per_class"]["AD"]["deletion_faster_than_random"] == 0.5
    assert summ["per_class"]["LMCI"]["deletion_faster_than_random"] == 1.0


def test_bundled_model_default_map_beats_random_on_the_example_scan():
    """What ``diagnose --faithfulness`` adds to report.json, for the bundled model's example AD scan."""
    from addiagnosis.engine import Diagnoser
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.resources import default_scan

    d = Diagnoser()
    vol = read_nifti(default_scan())
    res = d.run(vol, "auto", "AD")
    block = fa.for_diagnosis(d, vol, res)
    assert block["method"] == res.method == "lrp-reference-alpha1.25beta0.25"
    assert block["p_scan"] == pytest.approx(res.probabilities["AD"], abs=1e-5)
    assert block["deletion_faster_than_random"] and block["insertion_faster_than_random"]
    assert block["aopc_deletion"] > block["aopc_deletion_random"]
    assert len(block["curves"]["deletion"]) == fa.STEPS == len(block["curves"]["insertion_random"])
    assert block["settings"]["region"].startswith("cubes of 4 voxels (8 mm)")


def test_diagnose_faithfulness_in_report_json(tmp_path, capsys):
    """``addiagnosis diagnose --faithfulness``: report.json holds the AOPC block and the 90 % set."""
    import json

    from addiagnosis.cli.main import main

    assert main(["diagnose", "--faithfulness", "--no-figures", "-q", "--out", str(tmp_path / "out")]) == 0
    assert "90% prediction set: AD" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["prediction_set"] == {"coverage": 0.9, "classes": ["AD"]}
    f = report["faithfulness"]
    assert f["method"] == report["method"] and f["deletion_faster_than_random"] is True
    assert f["p_scan"] == pytest.approx(report["probabilities"][report["target_class"]], abs=1e-5)
