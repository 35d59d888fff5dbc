"""Tiny cohorts made by code for the evaluation paths."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def masked_cohort(folder: Path) -> Path:
    """Three small scans with ground-truth masks and a participants.tsv (what `evaluate` reads)."""
    folder.mkdir(exist_ok=True)
    rows = ["participant_id\tclass\tscan\tmask\tseverity"]
    rng = np.random.default_rng(1)
    for i, c in enumerate(["CN", "AD", "AD"]):
        a = rng.normal(0.1, 0.02, (24, 24, 24)).astype(np.float32)
        a[4:20, 4:20, 4:20] += 1.0
        m = np.zeros(a.shape, np.uint8)
        m[8:16, 8:16, 8:16] = 1
        nib.save(nib.Nifti1Image(a, np.diag([4.0, 4.0, 4.0, 1.0])), str(folder / f"s{i}.nii.gz"))
        nib.save(nib.Nifti1Image(m, np.diag([4.0, 4.0, 4.0, 1.0])), str(folder / f"s{i}_mask.nii.gz"))
        rows.append(f"s{i}\t{c}\ts{i}.nii.gz\ts{i}_mask.nii.gz\t{i}")
    (folder / "participants.tsv").write_text("\n".join(rows) + "\n")
    return folder
