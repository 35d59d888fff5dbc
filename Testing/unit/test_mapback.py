"""The one way back from the model grid (preprocess.resample_back): relevance is conserved.

Relevance is a per-voxel quantity: mapped onto a grid of smaller or larger voxels its sum must stay the
same. The factory serves both resampling kinds (physical, template); the ratio it scales by,
1 / |det(grid_to_input)|, also holds a registration's scaling, which the voxel sizes alone would miss.
"""

from __future__ import annotations

import numpy as np
import pytest

from addiagnosis.io.volume import Volume
from addiagnosis.prep.physical import prepare, resample_back


def _blob(shape, sigma):
    ii = np.indices(shape).astype(np.float64)
    c = (np.asarray(shape) - 1) / 2.0
    return np.exp(-sum((ii[a] - c[a]) ** 2 for a in range(3)) / (2 * sigma ** 2)).astype(np.float32)


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.6])  # model voxels smaller/larger than the input's
def test_sum_kept_under_up_and_down_sampling(scale):
    grid_shape, in_shape = (40, 40, 40), tuple(int(round(40 * scale)) + 8 for _ in range(3))
    g2i = np.diag([scale, scale * 1.1, scale * 0.9, 1.0])  # anisotropic scaling, as a registration may give
    g2i[:3, 3] = (np.asarray(in_shape) - 1) / 2.0 - g2i[:3, :3] @ ((np.asarray(grid_shape) - 1) / 2.0)
    rel = _blob(grid_shape, 5.0)
    back = resample_back(g2i, in_shape)(rel)
    assert back.shape == in_shape and back.dtype == np.float32
    assert back.sum(dtype=np.float64) == pytest.approx(rel.sum(dtype=np.float64), rel=2e-3)


def test_physical_kind_keeps_the_sum_on_an_anisotropic_input():
    shape = (60, 50, 30)
    aff = np.diag([1.5, 1.7, 2.6, 1.0])
    aff[:3, 3] = [-40.0, -40.0, -35.0]
    data = np.zeros(shape, np.float32)
    data[10:50, 8:42, 5:25] = 1.0
    card = {"preprocessing": {"kind": "physical", "centre": "fov"},
            "input_grid": {"shape": [40, 40, 40], "spacing": [2.0, 2.0, 2.0]}}
    prep = prepare(Volume(data, aff, "box"), card)
    rel = _blob((40, 40, 40), 4.0)
    back = prep.to_input(rel)
    assert back.shape == shape
    assert back.sum(dtype=np.float64) == pytest.approx(rel.sum(dtype=np.float64), rel=2e-3)
