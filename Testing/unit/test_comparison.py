"""Comparing two maps (explain/comparison.py): one scan (target vs target, method vs method) on its grid, and a
baseline vs a follow-up stored and positioned differently, compared on the template and on the baseline."""

from __future__ import annotations

import numpy as np
import pytest

from addiagnosis.errors import InputError
from addiagnosis.explain import comparison as cmp
from addiagnosis.io.volume import Volume

MNI_BLOB = np.array([-26.0, -20.0, -14.0])  # the left hippocampus


def blob_map(ijk_to_ras, shape, mni_to_input, centre_mni=MNI_BLOB, sigma=4.0, scale=1.0):
    """A Gaussian blob of relevance at an MNI position, on a scan grid registered by ``mni_to_input``."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    ras = ijk_to_ras[:3, :3] @ ijk + ijk_to_ras[:3, 3:4]
    mni = np.linalg.inv(mni_to_input)[:3, :3] @ ras + np.linalg.inv(mni_to_input)[:3, 3:4]
    d2 = ((mni - np.asarray(centre_mni)[:, None]) ** 2).sum(0)
    return (scale * np.exp(-d2 / (2 * sigma**2))).reshape(shape).astype(np.float32)


def scan(spacing, origin, flip=False):
    aff = np.diag([*spacing, 1.0])
    if flip:
        aff[0, 0] = -aff[0, 0]
    aff[:3, 3] = origin
    return aff


def test_share_density_integrates_to_one():
    aff = scan((1.5, 1.5, 2.0), (-90, -120, -70))
    rel = np.random.default_rng(1).standard_normal((40, 50, 30)).astype(np.float32)
    d = cmp.share_density(rel, aff)
    assert float(d.sum(dtype=np.float64)) * cmp.voxel_ml(aff) == pytest.approx(1.0)
    assert d.min() == 0.0 and not cmp.share_density(-np.abs(rel), aff).any()


def test_one_scan_two_targets_on_its_grid():
    aff = scan((2.0, 2.0, 2.0), (-96, -130, -80))
    shape = (96, 112, 96)
    a = blob_map(aff, shape, np.eye(4))
    b = blob_map(aff, shape, np.eye(4), scale=40.0)  # another method: the same place, another magnitude
    same = cmp.compare_maps(Volume(a, aff, "a"), {}, Volume(b, aff, "b"), {})
    assert same.space == "input" and same.summary["correlation"] == pytest.approx(1.0)
    assert same.summary["share_moved"] == pytest.approx(0.0, abs=1e-6) and same.summary["dice_shown"] == 1.0
    assert np.abs(same.difference.array).max() < 1e-6
    moved = blob_map(aff, shape, np.eye(4), centre_mni=MNI_BLOB + [60.0, 0, 0])  # the other hemisphere
    far = cmp.compare_maps(Volume(a, aff, "a"), {}, Volume(moved, aff, "b"), {})
    assert far.summary["share_moved"] == pytest.approx(1.0, abs=1e-3) and far.summary["dice_shown"] == 0.0
    assert far.difference.array.min() < 0 < far.difference.array.max()


def test_baseline_and_follow_up_on_the_template_and_on_the_baseline():
    """The same MNI blob on two scans stored and positioned differently: equal once each map goes through its
    own registration; a shifted blob at follow-up shows as a positive difference where it went."""
    m_base = np.eye(4)
    m_base[:3, 3] = [4.0, -6.0, 10.0]
    c, s = np.cos(0.15), np.sin(0.15)
    m_follow = np.array([[c, -s, 0, -8.0], [s, c, 0, 5.0], [0, 0, 1.05, -3.0], [0, 0, 0, 1]])
    base_aff, base_shape = scan((1.0, 1.2, 1.2), (-100, -140, -80)), (200, 200, 170)
    fol_aff, fol_shape = scan((1.5, 1.5, 1.5), (110, -150, -90), flip=True), (150, 160, 130)
    base = Volume(blob_map(base_aff, base_shape, m_base), base_aff, "baseline")
    follow = Volume(blob_map(fol_aff, fol_shape, m_follow, scale=3.0), fol_aff, "follow-up")
    pa, pb = {"mni_to_input_ras": m_base.tolist()}, {"mni_to_input_ras": m_follow.tolist()}
    on_template = cmp.compare_maps(base, pa, follow, pb)
    assert on_template.space == "template" and on_template.summary["correlation"] > 0.99
    assert on_template.summary["share_moved"] < 0.05
    assert on_template.summary["regions"][0]["region"]  # region changes, largest first
    on_base = cmp.compare_maps(base, pa, follow, pb, on="a")
    assert on_base.a.shape == base_shape and on_base.summary["correlation"] > 0.99
    grown = Volume(blob_map(fol_aff, fol_shape, m_follow, centre_mni=MNI_BLOB + [0, 0, 12.0]), fol_aff, "f")
    diff = cmp.compare_maps(base, pa, grown, pb).difference
    peak = np.unravel_index(np.argmax(diff.array), diff.shape)
    peak_mni = (diff.ijk_to_ras @ np.append(peak, 1.0))[:3]
    assert peak_mni[2] > MNI_BLOB[2] + 4  # the follow-up holds more relevance above the baseline's blob
    with pytest.raises(InputError, match="different grids"):
        cmp.compare_maps(base, pa, follow, pb, on="input")
    with pytest.raises(InputError, match="no registration"):
        cmp.compare_maps(base, {}, follow, pb)
