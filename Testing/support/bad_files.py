"""Hostile files made by code: each with the phrase its one-line refusal must contain."""

from __future__ import annotations

import numpy as np

from conftest import make_scan, save_nifti


def _bad(tmp_path, name, data=None, affine=None, raw: bytes | None = None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        save_nifti(path, data, np.eye(4) if affine is None else affine)
    return path


def good_array():
    return make_scan("ras-1mm", noise_seed=1)[0][::4, ::4, ::4].copy()


def bad_inputs(tmp_path):
    good = good_array()
    nan = good.astype(np.float32)
    nan[5, 5, 5] = np.nan
    inf = good.astype(np.float32)
    inf[1, 2, 3] = np.inf
    labels = np.zeros((40, 48, 40), np.int16)
    labels[10:20, 10:20, 10:20] = 17
    labels[20:30, 20:30, 20:30] = 42
    full_gz = tmp_path / "full.nii.gz"
    save_nifti(full_gz, good, np.eye(4))
    blob = full_gz.read_bytes()
    return {
        "not a NIfTI": (_bad(tmp_path, "notes.nii.gz", raw=b"this is not an image\n" * 20), "not a readable NIfTI"),
        "plain text named .nii": (_bad(tmp_path, "text.nii", raw=b"hello" * 100), "not a readable NIfTI"),
        "truncated gzip": (_bad(tmp_path, "trunc.nii.gz", raw=blob[: len(blob) // 2]), "truncated or corrupt"),
        "2D": (_bad(tmp_path, "flat.nii.gz", good[:, :, 0].copy()), "2D image"),
        "single slice 3D": (_bad(tmp_path, "slice.nii.gz", good[:, :, :1].copy()), "2D image"),
        "4D": (_bad(tmp_path, "four.nii.gz", np.stack([good, good], -1)), "4D image"),
        "NaN": (_bad(tmp_path, "nan.nii.gz", nan), "NaN/Inf"),
        "Inf": (_bad(tmp_path, "inf.nii.gz", inf), "NaN/Inf"),
        "all constant": (_bad(tmp_path, "const.nii.gz", np.full((40, 40, 40), 7, np.int16)), "same value"),
        "all zero": (_bad(tmp_path, "zero.nii.gz", np.zeros((40, 40, 40), np.float32)), "same value"),
        "label map": (_bad(tmp_path, "labels.nii.gz", labels), "label map"),
        "missing file": (tmp_path / "nope.nii.gz", "no such file"),
    }
