"""Geometry is sacred: relevance on exactly the input grid, lined up physically, for any orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from addiagnosis.engine import Diagnoser
from addiagnosis.io.volume import Volume
from addiagnosis.models.package import write_package
from addiagnosis.prep.physical import prepare

from conftest import GEOMETRIES, card_for, make_scan, random_model

CARD = card_for("geom", shape=(80, 88, 80), spacing=(2.0, 2.0, 2.0))


def _volume(geometry):
    arr, aff = make_scan(geometry)
    return Volume(arr.astype(np.float32), aff, geometry)


@pytest.fixture(scope="module")
def volumes():
    return {g: _volume(g) for g in GEOMETRIES}


def test_same_anatomy_gives_same_network_input_in_any_orientation(volumes):
    """The phantom is defined in RAS space; every storage of it must preprocess to the same tensor."""
    ref = prepare(volumes["ras-1mm"], CARD).tensor[0, 0].numpy()
    inside = ref > 0.05
    for name, vol in volumes.items():
        got = prepare(vol, CARD).tensor[0, 0].numpy()
        corr = np.corrcoef(ref[inside], got[inside])[0, 1]
        assert corr > 0.97, (name, corr)
        assert np.abs(got - ref)[inside].mean() < 0.06, name


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_relevance_point_maps_to_the_same_physical_point(volumes, geometry):
    vol = volumes[geometry]
    prep = prepare(vol, CARD)
    grid = np.zeros((80, 88, 80), np.float32)
    g_ijk = np.array([30, 50, 44])
    grid[tuple(g_ijk)] = 1.0
    back = prep.to_input(grid)
    assert back.shape == vol.shape
    peak_ras_want = (prep.grid_affine @ np.append(g_ijk, 1.0))[:3]
    w = back.clip(0)
    idx = np.argwhere(w > 0)
    centroid = (idx * w[w > 0][:, None]).sum(0) / w.sum()
    peak_ras_got = (vol.ijk_to_ras @ np.append(centroid, 1.0))[:3]
    assert np.linalg.norm(peak_ras_got - peak_ras_want) < 1.0, geometry
    # relevance is a per-voxel quantity: the total survives the change of grid (within interpolation error)
    assert back.sum() == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_diagnosis_relevance_has_exact_input_geometry(tmp_path_factory, volumes, geometry):
    pkg = write_package(tmp_path_factory.mktemp("g") / "m", random_model().state_dict(), CARD)
    vol = volumes[geometry]
    res = Diagnoser(pkg).run(vol)
    assert res.relevance.shape == vol.shape
    np.testing.assert_array_equal(res.relevance.ijk_to_ras, vol.ijk_to_ras)
    assert res.relevance.array.dtype == np.float32
    assert np.isfinite(res.relevance.array).all()
    assert res.summary["positive_fraction_in_head"] > 0.9


def test_relevance_agrees_across_orientations(tmp_path):
    """The same anatomy in two storages gives relevance maps that agree at the same physical points."""
    pkg = write_package(tmp_path / "m", random_model(seed=2).state_dict(), CARD)
    d = Diagnoser(pkg)
    a, b = _volume("ras-1mm"), _volume("lps-stored")
    ra, rb = d.run(a), d.run(b)
    assert ra.probabilities == pytest.approx(rb.probabilities, abs=0.02)
    # the LPS grid is the RAS grid with i and j reversed (same centre): compare voxel by voxel
    flipped = rb.relevance.array[::-1, ::-1, :]
    assert np.allclose(a.ijk_to_ras[:3, 3], (b.ijk_to_ras @ np.array([159, 191, 0, 1.0]))[:3], atol=1e-6)
    mask = ra.relevance.array > np.percentile(ra.relevance.array, 90)
    corr = np.corrcoef(ra.relevance.array[mask], flipped[mask])[0, 1]
    assert corr > 0.8


def test_seed_raw_maps_back_by_inverse_reshape():
    card = card_for("raw", shape=(160, 256, 256), kind="seed-raw")
    arr = np.random.default_rng(0).integers(0, 1000, (166, 256, 256)).astype(np.float32)
    vol = Volume(arr, np.diag([1.2, 1.0, 1.0, 1.0]))
    prep = prepare(vol, card)
    expect = torch.from_numpy(arr).reshape(1, -1, 256, 256)[:, :160].float()
    assert torch.equal(prep.tensor[0], expect)
    back = prep.to_input(prep.tensor[0, 0].numpy())
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back[:160], arr[:160])
    assert not back[160:].any()
