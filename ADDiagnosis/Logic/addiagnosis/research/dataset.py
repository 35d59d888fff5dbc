"""Datasets: labelled scans (:class:`Item`), where they are found, and the subject-level split.

Torch-free (csv, numpy, pathlib): training, evaluation and (later) the cohort pipeline read data here.

A dataset is one of (:func:`discover` tries them in this order):
- a TSV/CSV table with a subject id column (``participant_id``/``subject``/``subject_id``/``id``/``rid``/
  ``ptid``), a label column (``class``/``label``/``diagnosis``/``group``/``dx``), optionally a scan path
  column (``scan``/``path``/``file``/``image``), a ground-truth mask column (``mask``/``atrophy_mask``) and
  a numeric disease severity (``severity``, as ``synth`` writes it; evaluation reports the trend against it);
  relative paths are relative to the table's folder; a row without a scan path finds its scan with
  :func:`scan_candidates`;
- a folder holding such a table as ``participants.tsv`` (as ``addiagnosis synth`` writes it, and as BIDS
  names it);
- a folder of class sub-folders (``AD/ CN/ EMCI/ LMCI/ MCI/``, the original project's layout), scans
  anywhere below them; the subject id is the ADNI id in the path when there is one, else the file stem.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from addiagnosis.errors import AddiagnosisError
from addiagnosis.models.card import CLASSES  # every class a model may know, in order of disease stage

ID_COLS = ("participant_id", "subject", "subject_id", "id", "rid", "ptid")
LABEL_COLS = ("class", "label", "diagnosis", "group", "dx")
SCAN_COLS = ("scan", "path", "file", "image")
MASK_COLS = ("mask", "atrophy_mask")
SEVERITY_COL = "severity"
ADNI_ID = re.compile(r"\d{3}_S_\d{4}")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TABLE_NAME = "participants.tsv"


@dataclass
class Item:
    """One labelled scan: subject id, class label, scan path and (synthetic data) ground-truth mask and severity."""

    subject: str
    label: str
    path: Path
    mask: Path | None = None
    severity: float | None = None


def canonical_label(label: str) -> str | None:
    """The :data:`CLASSES` spelling of ``label`` (case-insensitive), or None."""
    return next((c for c in CLASSES if c.lower() == label.lower()), None)


# ------------------------------------------------------------------------------------------ tables
def find_column(header: list[str], names) -> str | None:
    """The header entry that is one of ``names`` (case and surrounding spaces ignored), first name first."""
    low = {h.lower().strip(): h for h in header}
    return next((low[n] for n in names if n in low), None)


def scan_candidates(base: Path, subject: str) -> list[Path]:
    """Where a table row without a scan path looks for its scan, in order; the first that exists is taken.

    The one place that turns a subject id into scan paths: a BIDS layout (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``)
    is added here.
    """
    return [base / f"{subject}.nii.gz", base / f"{subject}.nii", base / "scans" / f"{subject}.nii.gz"]


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def read_table(path: Path) -> list[Item]:
    """Items from a TSV (or, by suffix, CSV) table; labels as written (:func:`load_items` checks them)."""
    delim = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    if not rows:
        raise AddiagnosisError("table has no rows", path)
    header = list(rows[0].keys())
    sid, lab = find_column(header, ID_COLS), find_column(header, LABEL_COLS)
    scan, mask = find_column(header, SCAN_COLS), find_column(header, MASK_COLS)
    if sid is None or lab is None:
        raise AddiagnosisError(f"table needs a subject id column ({'/'.join(ID_COLS)}) and a label column "
                               f"({'/'.join(LABEL_COLS)}); it has {', '.join(header)}", path)
    base = path.parent
    items = []
    for r in rows:
        s = str(r[sid]).strip()
        if scan and r.get(scan):
            p = _resolve(base, r[scan])
        else:
            cands = scan_candidates(base, s)
            p = next((c for c in cands if c.exists()), cands[0])
        m = _resolve(base, r[mask]) if mask and r.get(mask) else None
        items.append(Item(s, str(r[lab]).strip(), p, m, _number(r.get(SEVERITY_COL))))
    return items


def _number(text) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


# ------------------------------------------------------------------------------------------ folders
def class_folder_items(root: Path) -> list[Item]:
    """Items from class sub-folders of ``root`` (folder names matched to :data:`CLASSES`, any case)."""
    items = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical_label(sub.name)
        if label is None:
            continue
        for f in sorted(sub.rglob("*")):
            if f.name.endswith(NIFTI_SUFFIXES):
                m = ADNI_ID.search(str(f.relative_to(root)))
                sid = m.group(0) if m else f.name.split(".nii")[0]
                items.append(Item(sid, label, f))
    return items


def discover(data: str | os.PathLike) -> list[Item]:
    """Items of a table file, a folder with ``participants.tsv``, or a class-folder tree (unchecked labels)."""
    data = Path(data)
    if not data.exists():
        raise AddiagnosisError("no such data folder or table", data)
    if data.is_file():
        return read_table(data)
    if (data / TABLE_NAME).is_file():
        return read_table(data / TABLE_NAME)
    items = class_folder_items(data)
    if not items:
        raise AddiagnosisError("found no class sub-folders (AD/ CN/ EMCI/ LMCI/ MCI/) with .nii/.nii.gz "
                               f"scans, and no {TABLE_NAME}", data)
    return items


def load_items(data: str | os.PathLike) -> list[Item]:
    """Items (subject, label, scan path) of a dataset, labels in :data:`CLASSES` spelling, every scan present."""
    items = discover(data)
    for it in items:
        canon = canonical_label(it.label)
        if canon is None:
            raise AddiagnosisError(f"unknown label {it.label!r} for subject {it.subject} "
                                   f"(known: {', '.join(CLASSES)})", data)
        it.label = canon
    missing = [str(it.path) for it in items if not it.path.exists()]
    if missing:
        raise AddiagnosisError(f"{len(missing)} scan(s) missing, e.g. {missing[0]}", data)
    return items


# ------------------------------------------------------------------------------------------ split
def split_subjects(items: list[Item], fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """Subject -> 'train'/'val'/'test', stratified by class; all scans of a subject share one side."""
    labels: dict[str, list[str]] = {}
    for it in items:
        labels.setdefault(it.subject, []).append(it.label)
    by_class: dict[str, list[str]] = {}
    for s, labs in sorted(labels.items()):
        major = max(sorted(set(labs)), key=labs.count)
        by_class.setdefault(major, []).append(s)
    rng = np.random.default_rng([int(seed), 42])
    out = {}
    f_val = fractions[1]
    f_test = fractions[2] if len(fractions) > 2 else 0.0
    for c in sorted(by_class):
        subs = list(by_class[c])
        rng.shuffle(subs)
        n = len(subs)
        n_val = int(round(n * f_val))
        n_test = int(round(n * f_test))
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1 if f_test > 0 else 0)
        n_train = max(n - n_val - n_test, 0)
        for i, s in enumerate(subs):
            out[s] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out
