"""DICOM series written by code (pydicom) from a voxel array and its IJK->RAS matrix, for the DICOM reader's tests.

Each slice k of ``array`` (IJK order: i = column, j = row, k = slice) becomes one MR Image Storage file with
the geometry DICOM readers use: ImagePositionPatient, ImageOrientationPatient and PixelSpacing in LPS.
Options break the series in the ways scanners and exports do (a missing slice, a gantry tilt, another series
in the same folder, per-slice rescaling).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
PATIENT_NAME = "Doe^Jane"  # must never reach a report, a log line or an error message
PATIENT_ID = "PID-0123456789"


def ds_text(x: float) -> str:
    """A DS value (at most 16 characters), as precise as that allows."""
    for digits in range(15, 0, -1):
        text = f"{x:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(x)


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base(sop_class: str, series_uid: str, study_uid: str, description: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = _file_meta(sop_class, ds.SOPInstanceUID)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19500101"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.SeriesNumber = number
    ds.Modality = "MR" if sop_class == MR_IMAGE_STORAGE else "SR"
    ds.InstitutionName = "Example Hospital"
    return ds


def write_series(folder: Path, array: np.ndarray, ijk_to_ras: np.ndarray, series_uid: str | None = None,
                 description: str = "T1 MPRAGE", number: int = 1, skip: tuple = (), tilt_mm: float = 0.0,
                 slopes=None, prefix: str = "IM", study_uid: str | None = None,
                 orientation_of: dict | None = None) -> str:
    """Write ``array`` (integer values) as a series into ``folder``; returns the series UID.

    ``skip``: slice indices left out (missing slices); ``tilt_mm``: each slice shifted this far along the
    row direction per slice (a gantry tilt); ``slopes``: per-slice RescaleSlope (values stored as
    round(value / slope)); ``orientation_of``: {slice: 6 numbers} overriding ImageOrientationPatient.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    m = LPS @ np.asarray(ijk_to_ras, dtype=np.float64)
    a_i, a_j, a_k = m[:3, 0], m[:3, 1], m[:3, 2]
    row_dir, col_dir = a_i / np.linalg.norm(a_i), a_j / np.linalg.norm(a_j)
    iop = [*row_dir, *col_dir]
    for k in range(array.shape[2]):
        if k in skip:
            continue
        ds = _base(MR_IMAGE_STORAGE, series_uid, study_uid, description, number)
        pos = m[:3, 3] + k * a_k + k * tilt_mm * row_dir
        ds.ImagePositionPatient = [ds_text(v) for v in pos]
        ds.ImageOrientationPatient = [ds_text(v) for v in (orientation_of or {}).get(k, iop)]
        ds.PixelSpacing = [ds_text(np.linalg.norm(a_j)), ds_text(np.linalg.norm(a_i))]
        ds.SliceThickness = ds_text(np.linalg.norm(a_k))
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = int(array.shape[1]), int(array.shape[0])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        plane = np.asarray(array[:, :, k], dtype=np.float64).T  # rows x columns
        if slopes is not None:
            ds.RescaleSlope, ds.RescaleIntercept = ds_text(slopes[k]), "0"
            plane = np.round(plane / slopes[k])
        ds.PixelData = np.ascontiguousarray(plane.astype("<i2")).tobytes()
        ds.save_as(str(folder / f"{prefix}{k + 1:04d}.dcm"), enforce_file_format=True)
    return series_uid


def write_report(folder: Path, series_uid: str | None = None) -> str:
    """A Basic Text SR object (no pixels): a non-image DICOM file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    ds = _base(BASIC_TEXT_SR, series_uid, generate_uid(), "report", 99)
    ds.save_as(str(folder / "SR0001.dcm"), enforce_file_format=True)
    return series_uid


def read_back(path: Path) -> Dataset:
    return pydicom.dcmread(str(path))
