"""DICOM series in: a folder of one MR series (or a folder holding several, one chosen) read as a :class:`Volume`.

Torch-free. Headers are read with pydicom (no pixel data) and every check runs on them before any pixel is
allocated: one image series chosen (``series``: its SeriesInstanceUID, or its SeriesDescription when that
names exactly one series; a folder holding several series without a choice is refused in one line listing
them), single-frame images only, one orientation, one image size, a regular stack (no gantry tilt, no
duplicate positions, no missing slices, uniform spacing) and dimensions within
:func:`addiagnosis.io.checks.check_shape`'s limits. The pixel data is then read by SimpleITK (GDCM: every
transfer syntax it decodes, each slice's own rescale slope/intercept applied) from the files in the order
this module sorted them.

Geometry (DICOM is LPS; the Volume is RAS): with the unit row and column directions ``r``, ``c`` from
ImageOrientationPatient, the slice normal ``n = r x c`` and the slices sorted by their position along ``n``,
voxel (i, j, k) (i: column, j: row, k: slice) lies at ``IPP_0 + i*dc*r + j*dr*c + k*dz*n`` (LPS, mm), and
``ijk_to_ras = diag(-1, -1, 1, 1) @ that matrix``: the affine nibabel reads from the NIfTI that ITK or
dcm2niix writes for the same series, and IJK in the same order.

Nothing identifying from the headers (names, IDs, dates, institution) is put into the Volume, a message or a
log line: the Volume carries the SeriesInstanceUID (``meta["series_uid"]``) and the folder it came from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addiagnosis.errors import InputError
from addiagnosis.io.checks import check_affine, check_shape, check_values

MAX_FILES = 20000  # files looked at in one folder tree
MAX_DEPTH = 4  # sub-folder levels below the folder given
MAX_ZIP_BYTES = 4 << 30  # a zipped series unpacks to at most this much
ORIENTATION_TOLERANCE = 1e-4  # direction cosines of two images that count as the same orientation
POSITION_TOLERANCE = 0.01  # of the in-plane pixel size: sideways shift of slices (gantry tilt), spacing spread
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ENHANCED = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4", "1.2.840.10008.5.1.4.1.1.2.1")
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class Series:
    """The images of one SeriesInstanceUID found in a folder (headers only)."""

    uid: str
    description: str = ""
    images: list = field(default_factory=list)  # (path, header) of image objects
    others: list = field(default_factory=list)  # (path, SOP class UID) of objects without pixels

    def label(self) -> str:
        what = f"{len(self.images)} images" if self.images else f"{len(self.others)} non-image objects"
        desc = " ".join(self.description.split())[:40]
        return f"{self.uid} ({desc + ', ' if desc else ''}{what})"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def holds_dicom(folder: str | os.PathLike) -> bool:
    """Whether a folder (or its sub-folders, :data:`MAX_DEPTH` deep) holds at least one DICOM file."""
    return any(True for _ in _dicom_files(Path(folder), limit=1))


def _dicom_files(root: Path, limit: int = MAX_FILES):
    """DICOM files under ``root`` in name order (hidden files and folders skipped); at most ``limit`` + 1."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = [] if depth >= MAX_DEPTH else sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file() or not is_dicom_file(path):
                continue
            yield path
            count += 1
            if count > limit:
                return


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a dependency; Slicer ships it too
        raise InputError("reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


def find_series(folder: str | os.PathLike) -> list[Series]:
    """Every series in a folder tree, from the headers alone (pixel data is never read here)."""
    pydicom = _pydicom()
    folder = Path(folder)
    files = list(_dicom_files(folder))
    if len(files) > MAX_FILES:
        raise InputError(f"holds more than {MAX_FILES} DICOM files; give the folder of one series", folder)
    found: dict[str, Series] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several types for damaged files
            raise InputError(f"unreadable DICOM file ({_short(exc)})", path) from None
        sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_CLASS:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip() or "(no series UID)"
        series = found.setdefault(uid, Series(uid, str(ds.get("SeriesDescription", "") or "")))
        if "Rows" in ds and "Columns" in ds:
            series.images.append((path, ds))
        else:
            series.others.append((path, sop_class))
    return sorted(found.values(), key=lambda s: s.uid)


def choose_series(found: list[Series], series: str | None, folder) -> Series:
    """The image series ``series`` names (UID, or a description naming one series); the only one without it."""
    images = [s for s in found if s.images]
    if not found:
        raise InputError("holds no DICOM files; give a .nii/.nii.gz scan or a folder of one DICOM series", folder)
    if series:
        picked = [s for s in images if s.uid == series.strip()]
        if not picked:
            want = " ".join(series.split()).lower()
            picked = [s for s in images if " ".join(s.description.split()).lower() == want]
        if len(picked) != 1:
            how = "several series are described" if picked else "no image series has the UID or description"
            listing = "; ".join(s.label() for s in (picked or images)) or "none"
            raise InputError(f"{how} {series!r}; image series here: {listing}", folder)
        chosen = picked[0]
    elif len(images) == 1:
        chosen = images[0]
    elif images:
        raise InputError(f"holds {len(images)} image series; choose one with --series UID (or its description): "
                         + "; ".join(s.label() for s in images), folder)
    else:
        kinds = sorted({_sop_name(sop) for s in found for _, sop in s.others})
        raise InputError(f"holds no images, only non-image DICOM objects ({', '.join(kinds)})", folder)
    if chosen.others:
        raise InputError(f"series {chosen.uid} mixes images with {len(chosen.others)} non-image objects "
                         f"({_sop_name(chosen.others[0][1])})", folder)
    return chosen


def _sop_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:
        name = uid
    return name or "unknown SOP class"


def _floats(ds, key: str, n: int, what: str, where) -> np.ndarray:
    value = ds.get(key)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([])
    if out.shape != (n,) or not np.isfinite(out).all():
        raise InputError(f"an image has no usable {what} ({key}); the series cannot be placed in space", where)
    return out


def _frame_checks(images: list, where) -> None:
    """Single-frame greyscale images of one size."""
    sizes = set()
    for path, ds in images:
        frames = ds.get("NumberOfFrames")
        try:
            frames = int(frames) if frames not in (None, "") else 1
        except (TypeError, ValueError):
            frames = 1
        if frames > 1 or str(ds.get("SOPClassUID", "")) in ENHANCED:
            raise InputError(f"is a multi-frame (enhanced) DICOM image ({frames} frames in one file), which this "
                             "reader cannot place; convert it to NIfTI (e.g. with dcm2niix)", path)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or str(ds.get("PhotometricInterpretation", "MONOCHROME2")) \
                not in ("MONOCHROME2", "MONOCHROME1"):
            raise InputError("holds colour images; a greyscale MRI series is needed", path)
        sizes.add((int(ds.Rows), int(ds.Columns)))
    if len(sizes) > 1:
        raise InputError(f"the series mixes image sizes {sorted(sizes)}", where)


def _orientation(images: list, where) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit row, column and normal directions (LPS) shared by every image, and the pixel spacing (dr, dc)."""
    iops = np.array([_floats(ds, "ImageOrientationPatient", 6, "orientation", where) for _, ds in images])
    spacings = np.array([_floats(ds, "PixelSpacing", 2, "pixel spacing", where) for _, ds in images])
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
        raise InputError("the series mixes image orientations (e.g. a localizer or several planes); "
                         "give one stack of parallel slices", where)
    if np.abs(spacings - spacings[0]).max() > 1e-6 * spacings[0].max():
        raise InputError("the series mixes pixel spacings", where)
    r, c = iops[0, :3], iops[0, 3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(float(r @ c)) > 1e-3:
        raise InputError(f"invalid image orientation {iops[0].tolist()} (not two unit vectors at right angles)",
                         where)
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    n = np.cross(r, c)
    return r, c, n / np.linalg.norm(n), spacings[0]


def _check_stack(pos: np.ndarray, s: np.ndarray, n: np.ndarray, pixel: float, where) -> float:
    """Refuse tilted, duplicated, gapped or irregular stacks; returns the slice spacing (mm)."""
    tol = POSITION_TOLERANCE * pixel
    lateral = (pos - pos[0]) - np.outer(s - s[0], n)
    shift = float(np.linalg.norm(lateral, axis=1).max())
    if shift > tol and s[-1] > s[0]:
        angle = float(np.degrees(np.arctan2(np.linalg.norm(lateral[-1]), s[-1] - s[0])))
        raise InputError(f"has a gantry tilt (about {angle:.2f} degrees: slices shifted {shift:.2f} mm sideways "
                         "across the series); tilted series are not resampled here, correct the tilt first "
                         "(e.g. dcm2niix)", where)
    gaps = np.diff(s)
    if gaps.min() <= tol:
        dup = int(np.count_nonzero(gaps <= tol))
        raise InputError(f"{dup} images share a slice position with another (several echoes, time points or "
                         "acquisitions in one series); give one volume", where)
    unit = float(gaps.min())
    if float(gaps.max() - unit) > tol + 1e-3 * unit:
        ratio = gaps / unit
        if np.abs(ratio - np.round(ratio)).max() < 0.05:
            missing = int(np.round(ratio).sum() - len(gaps))
            at = int(np.argmax(gaps))
            raise InputError(f"{missing} missing slice(s): a gap of {gaps[at]:.3g} mm after slice {at + 1} of "
                             f"{len(s)} where the spacing is {unit:.3g} mm", where)
        raise InputError(f"non-uniform slice spacing (from {unit:.3g} to {gaps.max():.3g} mm); "
                         "resample it to a regular grid first", where)
    return float((s[-1] - s[0]) / (len(s) - 1))


def series_geometry(images: list, where) -> tuple[list, np.ndarray, tuple[int, int, int]]:
    """Files in slice order, the IJK->RAS matrix and the shape (columns, rows, slices); nothing is allocated."""
    _frame_checks(images, where)
    rows, cols = int(images[0][1].Rows), int(images[0][1].Columns)
    shape = check_shape((cols, rows, len(images)), where)
    r, c, n, (dr, dc) = _orientation(images, where)
    pos = np.array([_floats(ds, "ImagePositionPatient", 3, "position", where) for _, ds in images])
    s = pos @ n
    order = np.argsort(s, kind="stable")
    pos, s = pos[order], s[order]
    # ImagesInAcquisition is not compared: a multi-echo acquisition split into one series per echo declares
    # the images of all echoes, so it would refuse good series; slices missing at either end go unnoticed
    dz = _check_stack(pos, s, n, float(min(dr, dc)), where)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * dc, c * dr, n * dz, pos[0]
    affine = check_affine(LPS_TO_RAS @ lps, where)
    return [images[i][0] for i in order], affine, shape


def read_pixels(files: list, shape: tuple[int, int, int], where) -> np.ndarray:
    """The slices as one float32 array in IJK order, each slice with its own rescale slope and intercept."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot decode the pixel data ({_short(exc).splitlines()[-1] if str(exc) else exc})",
                         where) from None
    if tuple(image.GetSize()) != tuple(shape):
        raise InputError(f"pixel data of size {image.GetSize()} does not match the headers' {shape}", where)
    return np.asfortranarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def series_sha256(files: list) -> str:
    """SHA-256 of the series' files, concatenated in slice order (the identity of the input in reports)."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_series(folder: str | os.PathLike, series: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One DICOM series of a folder: float32 voxels (IJK), the IJK->RAS matrix and ``series_uid``/``sha256``/``files``.

    :func:`addiagnosis.io.volume.read_dicom` makes the Volume of it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such folder", folder)
    chosen = choose_series(find_series(folder), series, folder)
    files, affine, shape = series_geometry(chosen.images, folder)
    data = read_pixels(files, shape, folder)
    check_values(data, folder)
    return data, affine, {"series_uid": chosen.uid, "sha256": series_sha256(files), "files": len(files)}


def series_of_file(path: str | os.PathLike) -> str:
    """The SeriesInstanceUID of one DICOM file (to read the series it belongs to)."""
    try:
        ds = _pydicom().dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception as exc:
        raise InputError(f"unreadable DICOM file ({_short(exc)})", path) from None
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if not uid:
        raise InputError("DICOM file without a series UID", path)
    return uid


def extract_zip(path: str | os.PathLike, dest: str | os.PathLike, max_bytes: int = MAX_ZIP_BYTES) -> Path:
    """Unpack a .zip of DICOM files into ``dest`` (which must not exist) safely: members are written under
    numbered names (no path from the archive is ever used), only regular unencrypted files, at most
    :data:`MAX_FILES` of them and ``max_bytes`` in all (counted while inflating, whatever the archive declares)."""
    import zipfile

    path, dest = Path(path), Path(dest)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"not a readable zip archive ({_short(exc)})", path) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_FILES:
            raise InputError(f"the archive holds more than {MAX_FILES} files", path)
        if any(m.flag_bits & 0x1 for m in members):
            raise InputError("the archive is encrypted", path)
        dest.mkdir(mode=0o700)
        total = 0
        for index, member in enumerate(members):
            with archive.open(member) as src, open(dest / f"{index:05d}.dcm", "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):  # noqa: B023 - src is this member's
                    total += len(chunk)
                    if total > max_bytes:
                        raise InputError(f"the archive unpacks to more than {max_bytes >> 20} MB", path)
                    out.write(chunk)
    return dest


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]
