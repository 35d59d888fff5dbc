"""Intensity helpers shared by preprocessing, reports and the scene bridge (numpy only, no torch).

:func:`robust_range` gives the display window and the head threshold; :func:`head_mask` the head (not
the background). Preprocessing, ``report`` and ``runtime`` import them from here: reports and the
Slicer scene bridge do not pull in torch.
"""

from __future__ import annotations

import numpy as np


def robust_range(data: np.ndarray) -> tuple[float, float]:
    """(1st, 99.5th) intensity percentiles from a strided sample: display window and head threshold."""
    sample = np.asarray(data).ravel()[:: max(1, data.size // 500_000)]
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    return lo, hi


def head_mask(data: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Voxels brighter than a small fraction of the robust maximum (the head, not the background)."""
    lo, hi = robust_range(data) if value_range is None else value_range
    return data > lo + 0.1 * (hi - lo)
