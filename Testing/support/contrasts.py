"""Scans in another contrast, made by code from a T1 (what the quality control must refuse)."""

from __future__ import annotations

import numpy as np

from addiagnosis.research import qcset


def t2_like(vol):
    """The example scan with its tissue intensities remapped as a T2 scan shows them (CSF bright, WM dark)."""
    a = np.asarray(vol.array, dtype=np.float32)
    wm = float(np.percentile(a[a > 0.3 * a.max()], 75))  # the brightest tissue of a T1: white matter
    out = np.interp(a / wm, qcset.T1_KNOTS, qcset.REMAPS["t2"]) * 1000.0
    return vol.like(out.astype(np.int16), vol.name + "-t2")
