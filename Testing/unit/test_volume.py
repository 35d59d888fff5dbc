"""Volume I/O and the refusal of bad input (one clear error, before any large allocation)."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from addiagnosis.errors import InputError
from addiagnosis.io.volume import Volume, read_nifti, write_nifti

from bad_files import bad_inputs, good_array
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
    arr = good_array()
    path = save_nifti(tmp_path / "t.nii", arr, np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(InputError, match="truncated"):
        read_nifti(path)


def test_label_intent_refused(tmp_path):
    arr = good_array().astype(np.float32)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_intent("label")
    nib.save(img, str(tmp_path / "l.nii.gz"))
    with pytest.raises(InputError, match="label map"):
        read_nifti(tmp_path / "l.nii.gz")


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    arr = good_array()
    path = save_nifti(tmp_path / "s.nii.gz", arr[..., None], np.eye(4))
    assert read_nifti(path).shape == arr.shape
