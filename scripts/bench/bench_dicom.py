"""Reading a DICOM series against reading the same voxels as NIfTI (ratio in the same run).

A 256 x 256 x 176 int16 scan (1 mm, oblique) is written as .nii.gz and as 176 DICOM files (Testing/support's
writer); each is read REPEATS times through io.volume.read_scan, best time kept. Usage:
    .venv/bin/python scripts/bench/bench_dicom.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "Testing" / "support"), str(ROOT / "ADDiagnosis" / "Logic")]

from addiagnosis.io.volume import read_scan  # noqa: E402

from dicom_series import write_series  # noqa: E402

REPEATS = 5


def best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    shape = (256, 256, 176)
    arr = (rng.normal(400, 80, shape).clip(0) * np.hanning(shape[0])[:, None, None]).astype(np.int16)
    c, s = np.cos(0.2), np.sin(0.2)
    aff = np.array([[-c, 0, s, 120.0], [0, -1, 0, 130.0], [s, 0, c, -80.0], [0, 0, 0, 1]])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nib.save(nib.Nifti1Image(arr, aff), str(tmp / "scan.nii.gz"))
        write_series(tmp / "series", arr, aff)
        t_nii = best(lambda: read_scan(tmp / "scan.nii.gz"))
        t_dcm = best(lambda: read_scan(tmp / "series"))
    print(f"{shape} int16: NIfTI (.nii.gz) {t_nii:.3f} s, DICOM series (176 files) {t_dcm:.3f} s, "
          f"ratio {t_dcm / t_nii:.2f}")


if __name__ == "__main__":
    main()
