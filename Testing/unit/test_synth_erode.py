"""The second atrophy model of ``synth`` (``--atrophy erode``): its mask rule and graded volume loss."""

from __future__ import annotations

import csv

import numpy as np
from scipy import ndimage

from addiagnosis.prep.template import atlas
from addiagnosis.research import synth


def _mtl_tissue_left(brain: np.ndarray, healthy: np.ndarray, region: np.ndarray) -> float:
    """Tissue (intensity above CSF) left in ``region``, relative to the healthy subject."""
    return float((brain[region] - synth.CSF_LEVEL).clip(0).sum() / (healthy[region] - synth.CSF_LEVEL).clip(0).sum())


def test_graded_volume_loss_and_shape_change():
    S = synth.erode_structures()
    mtl = S["mtl"]
    base = synth.subject_params(0, 1, "CN", {"atrophy": "erode"})
    healthy, none = synth.erode_atrophy({**base, "severity": 0.0, "erode_mm": 0.0, "ventricle_mm": base["age_mm"]})
    assert not none.any()
    losses, masks = [], []
    for label in ("MCI", "LMCI", "AD"):
        p = synth.subject_params(0, 1, label, {"atrophy": "erode"})
        assert p["atrophy"] == "erode" and p["mtl_loss"] == 0.0
        brain, disease = synth.erode_atrophy(p)
        losses.append(1.0 - _mtl_tissue_left(brain, healthy, mtl))
        masks.append(disease > p["mask_threshold"])
        # eroded from all sides: the outer shell is gone, the core is untouched
        core = (S["mtl_depth"] >= p["erode_mm"] + 2.0) & (S["fluid_distance"] >= p["ventricle_mm"] + 2.0)
        shell = mtl & (S["mtl_depth"] <= 2.0)
        assert core.any() and np.allclose(brain[core], healthy[core])
        assert brain[shell].mean() < healthy[shell].mean() - 0.2
    # hippocampus + amygdala volume loss graded with the stage (about 1/3, 1/2, 3/4)
    assert 0.2 < losses[0] < losses[1] < losses[2] < 0.9, losses
    assert masks[0].sum() < masks[1].sum() < masks[2].sum()
    # the mask is the shell of the MTL and a band around the ventricles and temporal horns, nothing else
    near_fluid = ndimage.binary_dilation(S["fluid"], iterations=3) & ~S["fluid"]
    assert np.all(masks[2] <= (mtl | near_fluid))
    assert masks[2][mtl].sum() > 300 and masks[2][near_fluid].sum() > 300
    # the ventricles grew: the band around them is darker than in the healthy subject
    band = near_fluid & ndimage.binary_dilation(S["fluid"], iterations=1)
    assert brain[band].mean() < healthy[band].mean() - 0.1


def test_mask_rule_on_the_scan_grid():
    p = {**synth.subject_params(11, 2, "AD", {"atrophy": "erode"}), "participant_id": "e", "noise": 0.0,
         "bias": 0.0}
    healthy = {**p, "severity": 0.0, "erode_mm": 0.0, "ventricle_mm": p["age_mm"]}
    ad, mask, _ = synth.make_subject(p)
    cn, cn_mask, _ = synth.make_subject(healthy)
    assert not cn_mask.array.any() and mask.array.any()
    changed = (cn.array.astype(float) - ad.array.astype(float)) > 0.3 * (1000 - synth.CSF_LEVEL * 1000)
    m = mask.array > 0
    near = ndimage.binary_dilation(m, iterations=1)
    assert changed.sum() > 300 and changed[near].sum() / changed.sum() > 0.9  # what changed a lot is masked
    assert ad.array[m].mean() < cn.array[m].mean()
    voxel_ml = abs(np.linalg.det(ad.ijk_to_ras[:3, :3])) / 1000.0
    assert 10 < m.sum() * voxel_ml < 150
    assert atlas().brain.any()


def test_default_model_unchanged_and_cli_options(tmp_path):
    p = synth.subject_params(3, 7, "AD")
    assert "atrophy" not in p and p["mtl_loss"] > 0  # the bundled model's generator is untouched
    mixed = [synth.subject_params(3, i, "AD", {"atrophy": "mixed"}).get("atrophy", "default") for i in range(20)]
    assert {"default", "erode"} == set(mixed)
    wide = synth.subject_params(3, 7, "AD", synth.WIDE_VARIETY)
    assert wide["deform_mm"] == 4.0
    metas = synth.generate(2, tmp_path, seed=1, workers=1, options={"atrophy": "erode"}, progress=None)
    assert all(m["atrophy"] == "erode" for m in metas)
    rows = list(csv.DictReader(open(tmp_path / "participants.tsv"), delimiter="\t"))
    assert [r["atrophy"] for r in rows] == ["erode", "erode"]
