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


def synthetic_groups(root: Path, seed: int, pairs: int) -> Path:
    """``pairs`` AD + CN synthetic subjects (made by the project's own synth) and a participants.tsv with a
    ``group`` column, in ``root / "data"``; returns that folder."""
    from addiagnosis.research.synth import _generate_one, subject_params

    data = root / "data"
    for sub in ("scans", "masks", "meta"):
        (data / sub).mkdir(parents=True)
    lines = ["participant_id\tgroup\tscan"]
    for i, label in enumerate(["AD", "CN"] * pairs):
        p = subject_params(seed, i, label)
        p["participant_id"] = f"sub-{i:02d}"
        _generate_one((str(data), p))
        lines.append(f"sub-{i:02d}\t{label}\tscans/sub-{i:02d}.nii.gz")
    (data / "participants.tsv").write_text("\n".join(lines) + "\n")
    return data
