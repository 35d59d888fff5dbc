"""DICOM series input: exact geometry against the same data as NIfTI, series choice, and one-line refusals of
series that cannot be placed on a regular grid (tilt, gaps, irregular spacing, mixed orientations, multi-frame,
non-image objects), checked from the headers before any pixel data is read."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pydicom
import pytest

from addiagnosis.engine import Diagnoser
from addiagnosis.errors import InputError
from addiagnosis.io.volume import Volume, read_nifti, read_scan, write_nifti
from addiagnosis.research import synth

from conftest import phantom, rotation
from dicom_series import PATIENT_ID, PATIENT_NAME, write_report, write_series

SHAPE = (90, 100, 60)


def oblique_lps_scan(shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An oblique (rotated about all three axes), anisotropic (1.1 x 1.0 x 1.6 mm) scan stored L-P-S."""
    lin = rotation(0.25, -0.15, 0.3) @ np.diag([-1.1, -1.0, 1.6])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = np.array([2.0, -17.0, 11.5]) - lin @ ((np.array(shape) - 1) / 2.0)
    ijk = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    img = phantom(ijk @ lin.T + aff[:3, 3]) + np.random.default_rng(3).normal(0, 8.0, shape)
    return np.clip(img, 0, None).astype(np.int16), aff


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A synthetic head (oblique grid, 1.5 x 1.7 x 2.6 mm, stored L-P-S) as a NIfTI file and as a DICOM series
    written from that NIfTI's own voxels and (float32) geometry: the same data stored both ways."""
    root = tmp_path_factory.mktemp("dicom")
    p = {**synth.subject_params(21, 3, "MCI"), "participant_id": "t", "deform_mm": 0.0, "head_scale": 1.0,
         "rotation_deg": [6.0, -4.0, 5.0], "translation_mm": [4.0, -6.0, 3.0], "orientation": "LPS",
         "grid_rotation_deg": [7.0, 10.0, -8.0], "spacing": [1.5, 1.7, 2.6]}
    vol = synth.make_subject(p)[0]
    arr = np.round(vol.array / np.abs(vol.array).max() * 2000).astype(np.int16)
    nii = root / "scan.nii.gz"
    nib.save(nib.Nifti1Image(arr, vol.ijk_to_ras), str(nii))
    assert nib.aff2axcodes(vol.ijk_to_ras) == ("L", "P", "S")
    uid = write_series(root / "series", arr, read_nifti(nii).ijk_to_ras)
    return nii, root / "series", uid


def refusal(path, **kw) -> str:
    with pytest.raises(InputError) as info:
        read_scan(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert PATIENT_NAME.split("^")[0] not in msg and PATIENT_ID not in msg
    return msg


def test_oblique_lps_series_reads_exactly_as_its_nifti(pair):
    nii, folder, uid = pair
    a, b = read_nifti(nii), read_scan(folder)
    assert b.shape == a.shape and a.spacing[2] > 2.5 > a.spacing[0]
    assert np.abs(a.ijk_to_ras[:3, :3] / a.spacing).min() > 0.01  # every axis oblique
    np.testing.assert_allclose(b.ijk_to_ras, a.ijk_to_ras, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(b.array, a.array)
    assert b.array.dtype == np.float32
    assert b.meta["series_uid"] == uid and b.meta["source"] == str(folder)
    assert len(b.meta["sha256"]) == 64
    assert PATIENT_NAME not in repr(b.meta) and "Doe" not in b.name


@pytest.mark.parametrize("model", ["physical", "bundled"])
def test_series_gives_the_same_diagnosis_and_relevance_grid(pair, tmp_path, tiny_package, model):
    """Through the engine, on the series' own grid. DICOM's 16-character decimal strings cannot hold the NIfTI's
    float32 matrix exactly (they differ by ~1e-8 mm); resampling turns that into ~1e-4 of relative relevance, and
    the bundled model's template registration (an iterative optimiser) into ~1e-4 in probability. The DICOM
    voxels with the NIfTI's matrix give the NIfTI's result bit for bit: the reader adds nothing else."""
    nii, folder, _ = pair
    d = Diagnoser(str(tiny_package)) if model == "physical" else Diagnoser()
    a, b = read_nifti(nii), read_scan(folder)
    ra, rb = d.run(a), d.run(b)
    tol = 1e-5 if model == "physical" else 1e-3
    for cls, p in ra.probabilities.items():
        assert rb.probabilities[cls] == pytest.approx(p, abs=tol)
    assert ra.predicted == rb.predicted and not rb.warnings
    write_nifti(rb.relevance, tmp_path / "relevance.nii.gz")
    out = nib.load(str(tmp_path / "relevance.nii.gz"))
    assert out.shape == a.shape
    np.testing.assert_allclose(out.affine, a.ijk_to_ras, rtol=0, atol=1e-5)
    rel_a, rel_b = ra.relevance.array, np.asanyarray(out.dataobj)
    assert np.linalg.norm(rel_b - rel_a) <= (1e-3 if model == "physical" else 0.1) * np.linalg.norm(rel_a)
    same = d.run(Volume(b.array, a.ijk_to_ras))
    assert same.probabilities == ra.probabilities
    np.testing.assert_array_equal(same.relevance.array, rel_a)
    report = rb.report(b)
    assert report["input"]["series_uid"] == b.meta["series_uid"]
    assert PATIENT_NAME not in repr(report) and PATIENT_ID not in repr(report)


def test_one_file_reads_its_whole_series(pair):
    _, folder, uid = pair
    vol = read_scan(sorted(folder.iterdir())[7])
    assert vol.shape == read_scan(folder).shape and vol.meta["series_uid"] == uid


def test_two_series_refused_listing_both_then_chosen(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    one = write_series(tmp_path, arr, aff, description="T1 MPRAGE", prefix="A")
    two = write_series(tmp_path, arr[::-1].copy(), aff, description="T1 repeat", number=2, prefix="B")
    msg = refusal(tmp_path)
    assert "2 image series" in msg and one in msg and two in msg and "--series" in msg
    assert read_scan(tmp_path, series=two).meta["series_uid"] == two
    np.testing.assert_array_equal(read_scan(tmp_path, series=two).array, arr[::-1])
    assert read_scan(tmp_path, series="t1 mprage").meta["series_uid"] == one
    assert "no image series has" in refusal(tmp_path, series="1.2.3.4")


def test_missing_slice_refused(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    write_series(tmp_path, arr, aff, skip=(12,))
    assert "1 missing slice(s)" in refusal(tmp_path)


def test_gantry_tilt_refused(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    write_series(tmp_path, arr, aff, tilt_mm=0.05)  # 0.05 mm per 1.6 mm slice: about 1.8 degrees
    msg = refusal(tmp_path)
    assert "gantry tilt" in msg and "1.79 degrees" in msg


def test_non_uniform_spacing_and_duplicates_refused(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    write_series(tmp_path / "a", arr, aff, skip=(5,))
    write_series(tmp_path / "a", arr[:, :, :1], _shifted(aff, 5.4), series_uid=_uid(tmp_path / "a"), prefix="X")
    assert "non-uniform slice spacing" in refusal(tmp_path / "a")
    write_series(tmp_path / "b", arr, aff)
    write_series(tmp_path / "b", arr[:, :, :1], aff, series_uid=_uid(tmp_path / "b"), prefix="X")
    assert "share a slice position" in refusal(tmp_path / "b")


def _uid(folder) -> str:
    return str(pydicom.dcmread(str(sorted(folder.iterdir())[0]), stop_before_pixels=True).SeriesInstanceUID)


def _shifted(aff, slices: float) -> np.ndarray:
    out = aff.copy()
    out[:3, 3] += slices * aff[:3, 2]
    return out


def test_mixed_orientations_refused(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    write_series(tmp_path, arr, aff, orientation_of={3: [1, 0, 0, 0, 1, 0]})
    assert "mixes image orientations" in refusal(tmp_path)


def test_multiframe_and_non_image_objects_refused(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    write_series(tmp_path / "mf", arr, aff)
    first = sorted((tmp_path / "mf").iterdir())[0]
    ds = pydicom.dcmread(str(first))
    ds.NumberOfFrames = 2
    ds.save_as(str(first))
    assert "multi-frame" in refusal(tmp_path / "mf")
    write_report(tmp_path / "sr")
    msg = refusal(tmp_path / "sr")
    assert "non-image DICOM objects" in msg and "Basic Text SR" in msg
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    assert "no DICOM files" in refusal(tmp_path / "empty")


def test_absurd_dimensions_refused_from_the_headers(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    write_series(tmp_path, arr, aff)
    for path in sorted(tmp_path.iterdir()):
        ds = pydicom.dcmread(str(path))
        ds.Rows, ds.Columns = 30000, 30000  # 27e9 voxels declared; the files hold 40 x 44 pixels each
        ds.save_as(str(path))
    t = time.perf_counter()
    assert "absurd dimensions" in refusal(tmp_path)
    assert time.perf_counter() - t < 5.0


def test_each_slice_keeps_its_own_rescale(tmp_path):
    arr, aff = oblique_lps_scan((40, 44, 30))
    slopes = [1.0 if k % 2 else 2.5 for k in range(30)]
    write_series(tmp_path, arr, aff, slopes=slopes)
    want = np.stack([np.round(arr[:, :, k] / s) * s for k, s in enumerate(slopes)], -1).astype(np.float32)
    np.testing.assert_array_equal(read_scan(tmp_path).array, want)


def test_zipped_series_reads_as_its_folder_and_hostile_archives_are_refused(pair, tmp_path):
    import zipfile

    _, folder, uid = pair
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, f in enumerate(sorted(folder.iterdir())):
            zf.write(f, f"../../evil/{k}/{f.name}")  # member paths are never used
    vol = read_scan(archive)
    assert vol.meta["series_uid"] == uid and vol.meta["source"] == str(archive)
    np.testing.assert_array_equal(vol.array, read_scan(folder).array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series.zip"]  # nothing unpacked is left
    assert not (tmp_path.parent / "evil").exists()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (8 << 20))
    from addiagnosis.io import dicom

    with pytest.raises(InputError, match="unpacks to more than 1 MB"):
        dicom.extract_zip(bomb, tmp_path / "x", max_bytes=1 << 20)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable zip archive" in refusal(tmp_path / "bad.zip")
    assert "no DICOM files" in refusal(bomb)
