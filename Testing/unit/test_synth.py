"""Synthetic cohort generator: determinism, files, and that the atrophy mask marks exactly what changed."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np

from addiagnosis.research import synth


def test_same_seed_same_subject_other_seed_differs():
    p1 = synth.subject_params(3, 7, "AD")
    p2 = synth.subject_params(3, 7, "AD")
    assert p1 == p2
    a1, m1, _ = synth.make_subject({**p1, "participant_id": "a"})
    a2, m2, _ = synth.make_subject({**p2, "participant_id": "a"})
    assert np.array_equal(a1.array, a2.array) and np.array_equal(a1.ijk_to_ras, a2.ijk_to_ras)
    assert np.array_equal(m1.array, m2.array)
    p3 = synth.subject_params(4, 7, "AD")
    assert p3["rotation_deg"] != p1["rotation_deg"]


def test_severity_graded_by_stage():
    sev = {c: np.mean([synth.subject_params(0, i, c)["severity"] for i in range(40)]) for c in synth.CLASSES}
    vals = [sev[c] for c in synth.CLASSES]
    assert vals == sorted(vals) and vals[0] < 0.1 and vals[-1] > 0.9


def test_mask_marks_where_atrophy_changed_the_scan():
    p = {**synth.subject_params(11, 2, "AD"), "participant_id": "x", "noise": 0.0, "bias": 0.0}
    healthy = {**p, "severity": 0.0, "mtl_loss": 0.0, "ventricle_mm": 1.0 + p["age_mm"]}
    ad, mask, _ = synth.make_subject(p)
    cn, cn_mask, _ = synth.make_subject(healthy)
    assert ad.array.shape == mask.array.shape and np.array_equal(ad.ijk_to_ras, mask.ijk_to_ras)
    assert not cn_mask.array.any()  # no disease, no mask
    changed = np.abs(ad.array.astype(float) - cn.array.astype(float)) > 100  # > 10 % of white matter
    m = mask.array > 0
    assert changed.sum() > 500 and m.sum() > 500
    from scipy import ndimage

    near = ndimage.binary_dilation(m, iterations=1)
    assert changed[near].sum() / changed.sum() > 0.9  # what changed lies in the mask
    assert ad.array[m].mean() < cn.array[m].mean()  # tissue replaced by CSF: darker on T1
    voxel_ml = abs(np.linalg.det(ad.ijk_to_ras[:3, :3])) / 1000.0
    assert 20 < m.sum() * voxel_ml < 200  # a few percent of the brain


def test_generate_writes_cohort(tmp_path):
    metas = synth.generate(5, tmp_path, seed=1, workers=1, progress=None)
    assert len(metas) == 5
    rows = list(csv.DictReader(open(tmp_path / "participants.tsv"), delimiter="\t"))
    assert sorted(r["class"] for r in rows) == sorted(synth.CLASSES)
    for r in rows:
        img = nib.load(tmp_path / r["scan"])
        msk = nib.load(tmp_path / r["mask"])
        assert img.shape == msk.shape and np.allclose(img.affine, msk.affine)
        assert (tmp_path / "meta" / f"{r['participant_id']}.json").exists()
    assert (tmp_path / "dataset.json").exists()
