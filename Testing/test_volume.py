"""Volume I/O and the refusal of bad input (one clear error, before any large allocation)."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from addiagnosis.errors import InputError
from addiagnosis.volume import Volume, read_nifti, write_nifti

from conftest import GEOMETRIES, make_scan, save_nifti


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_roundtrip_keeps_array_and_affine(tmp_path, geometry):
    arr, aff = make_scan(geometry)
    src = save_nifti(tmp_path / "in.nii.gz", arr, aff)
    vol = read_nifti(src)
    assert vol.shape == arr.shape
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    np.testing.assert_allclose(vol.ijk_to_ras, aff, atol=1e-5)
    write_nifti(vol, tmp_path / "out.nii.gz")
    back = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(back.affine, vol.ijk_to_ras, atol=1e-5)
    assert int(back.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), vol.array)


def test_spacing_from_affine():
    _, aff = make_scan("oblique-aniso", noise_seed=None)
    vol = Volume(np.zeros((2, 2, 2)), aff)
    np.testing.assert_allclose(vol.spacing, [1.1, 1.0, 1.6])


def test_scaled_data_matches_get_fdata(tmp_path):
    arr = (np.arange(40 * 40 * 40).reshape(40, 40, 40) % 1000).astype(np.int16)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_slope_inter(0.37, 11.0)
    nib.save(img, str(tmp_path / "s.nii"))
    want = nib.load(str(tmp_path / "s.nii")).get_fdata().astype(np.float32)
    np.testing.assert_array_equal(read_nifti(tmp_path / "s.nii").array, want)


def _bad(tmp_path, name, data=None, affine=None, raw: bytes | None = None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        save_nifti(path, data, np.eye(4) if affine is None else affine)
    return path


def _good_array():
    return make_scan("ras-1mm", noise_seed=1)[0][::4, ::4, ::4].copy()


def bad_inputs(tmp_path):
    good = _good_array()
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


def test_every_bad_input_is_refused_with_one_line(tmp_path):
    for what, (path, needle) in bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            read_nifti(path)
        msg = str(info.value)
        assert "\n" not in msg, what
        assert needle in msg, f"{what}: {msg}"
        assert str(path) in msg, what


def test_absurd_header_refused_before_allocating(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((30000, 30000, 30000))
    path = tmp_path / "absurd.nii"
    with open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000)
    t = time.perf_counter()
    with pytest.raises(InputError, match="absurd dimensions"):
        read_nifti(path)
    assert time.perf_counter() - t < 5.0  # refused from the header: nothing of 108 TB was read


def test_truncated_uncompressed_is_refused(tmp_path):
    arr = _good_array()
    path = save_nifti(tmp_path / "t.nii", arr, np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(InputError, match="truncated"):
        read_nifti(path)


def test_label_intent_refused(tmp_path):
    arr = _good_array().astype(np.float32)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_intent("label")
    nib.save(img, str(tmp_path / "l.nii.gz"))
    with pytest.raises(InputError, match="label map"):
        read_nifti(tmp_path / "l.nii.gz")


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    arr = _good_array()
    path = save_nifti(tmp_path / "s.nii.gz", arr[..., None], np.eye(4))
    assert read_nifti(path).shape == arr.shape
