"""The one value type (Volume), NIfTI input/output and DICOM series input, with the checks a scan must pass.

A Volume is a 3D voxel array in IJK order plus the 4x4 IJK->RAS matrix (the
nibabel affine; Slicer's IJKToRAS) and a name. Readers refuse bad input with a
one-line :class:`InputError` before doing anything expensive.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addiagnosis.errors import InputError, OutputError
from addiagnosis.files import scan_stem
from addiagnosis.io.checks import check_nifti_header, check_values

try:
    from isal import igzip as _igzip
except ImportError:  # optional speed-up; nibabel's gzip is used without it
    _igzip = None


@dataclass
class Volume:
    """Voxel array in IJK order + 4x4 IJK->RAS matrix (mm) + name."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = "volume"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64).reshape(4, 4)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    def like(self, array: np.ndarray, name: str | None = None) -> Volume:
        """A new volume on exactly this volume's grid."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        return Volume(array, self.ijk_to_ras.copy(), name or self.name)


def _nibabel():
    import nibabel as nib

    return nib


@contextlib.contextmanager
def quiet():
    """No nibabel/numpy warnings or nibabel log lines on stderr: problems are reported as one-line errors."""
    logger = logging.getLogger("nibabel")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


_CHUNK = 4 << 20
_GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                    "qoffset_z", "srow_x", "srow_y", "srow_z")


def read_nifti(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read a .nii/.nii.gz scan (NIfTI-1 or -2) as a float32 Volume, refusing anything that is not a usable scan.

    The header is checked (:func:`addiagnosis.io.checks.check_nifti_header`) before any data is read, and
    exactly the number of bytes it declares is read (from the gzip stream too: trailing data is never
    decompressed), so memory is bounded by the declared image size.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    if path.is_dir():
        raise InputError("is a directory, not a NIfTI file", path)
    with quiet():
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror or exc})", path) from None
        try:
            with fh:
                compressed = fh.read(2) == b"\x1f\x8b"
                fh.seek(0)
                stream = (_igzip.IGzipFile if _igzip is not None else gzip.GzipFile)(fileobj=fh) if compressed else fh
                header = _read_header(stream, path)
                facts = check_nifti_header(header, path)
                if not compressed:
                    have, need = path.stat().st_size, facts["offset"] + facts["nbytes"]
                    if have < need:
                        raise InputError(f"truncated: file has {have} bytes, header needs {need}", path)
                buf = _read_data(stream, facts, int(header["sizeof_hdr"]), path)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
            raise InputError(f"truncated or corrupt image data ({_short(exc)})", path) from None
        raw = np.frombuffer(buf, dtype=facts["dtype"], count=int(np.prod(facts["shape"]))).reshape(
            facts["shape"], order="F")
        slope, inter = facts["slope"], facts["inter"]
        if slope is None or (slope == 1.0 and inter == 0.0):
            data = raw.astype(np.float32, copy=False)  # no copy for native float32 data
        else:  # the same values as nibabel's get_fdata() (float64) then float32, a few slices at a time
            from nibabel.volumeutils import apply_read_scaling

            data = np.empty(raw.shape, np.float32, order="F")
            flat_in, flat_out = raw.reshape(-1, order="F"), data.reshape(-1, order="F")
            step = _CHUNK // 8
            for i in range(0, flat_in.size, step):
                scaled = apply_read_scaling(flat_in[i : i + step], np.float64(slope), np.float64(inter))
                flat_out[i : i + step] = np.asarray(scaled, dtype=np.float64)
        del raw, buf
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        check_values(data, path)
    vol = Volume(data, facts["affine"], name or scan_stem(path))
    vol.meta["source"] = str(path)
    vol.meta["nifti_geometry"] = {k: np.array(header[k]).tolist() for k in _GEOMETRY_FIELDS}
    vol.meta["nifti_geometry"]["pixdim"] = np.array(header["pixdim"][:4]).tolist()
    return vol


def read_dicom(folder: str | os.PathLike, series: str | None = None, name: str | None = None) -> Volume:
    """One DICOM series of a folder as a float32 Volume (:mod:`addiagnosis.io.dicom`: checks, geometry, choice).

    ``meta`` holds ``source`` (the folder), ``series_uid`` and ``sha256`` (of the series' files in slice order);
    nothing identifying from the DICOM headers."""
    from addiagnosis.io.dicom import load_series

    with quiet():
        data, affine, info = load_series(folder, series)
    vol = Volume(data, affine, name or scan_stem(folder))
    vol.meta.update(source=str(folder), series_uid=info["series_uid"], sha256=info["sha256"])
    return vol


def read_scan(path: str | os.PathLike, series: str | None = None, name: str | None = None) -> Volume:
    """What every front end reads a scan with: a NIfTI file, a folder of DICOM files (one series of it: see
    :func:`read_dicom`), a .zip of such a folder, or one DICOM file (its whole series, from the files beside it)."""
    from addiagnosis.io.dicom import is_dicom_file, series_of_file

    path = Path(path)
    if path.is_dir():
        return read_dicom(path, series, name)
    if path.is_file() and _is_zip(path):  # a zipped series: unpacked beside it, read, deleted
        import tempfile

        from addiagnosis.io.dicom import extract_zip

        with tempfile.TemporaryDirectory(prefix=".addiagnosis-zip-", dir=path.parent) as tmp:
            try:
                vol = read_dicom(extract_zip(path, Path(tmp) / "series"), series, name or scan_stem(path))
            except InputError as exc:  # name the archive, not the temporary folder
                raise InputError(exc.problem, path) from None
        vol.meta["source"] = str(path)
        return vol
    if path.is_file() and is_dicom_file(path):
        return read_dicom(path.parent, series or series_of_file(path), name)
    if series:
        raise InputError("--series applies to DICOM input only (a folder of DICOM files)", path)
    return read_nifti(path, name)


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _read_header(stream, path):
    """The NIfTI-1 or NIfTI-2 header at the start of the stream (nothing else is read)."""
    nib = _nibabel()
    first = stream.read(4)
    if len(first) < 4:
        raise InputError("not a readable NIfTI file (too short for a header)", path)
    for endian in ("<", ">"):
        size = int(np.frombuffer(first, dtype=f"{endian}i4")[0])
        if size in (348, 540):
            break
    else:
        raise InputError("not a readable NIfTI file (no NIfTI-1/NIfTI-2 header)", path)
    block = first + stream.read(size - 4)
    if len(block) < size:
        raise InputError("not a readable NIfTI file (header cut short)", path)
    klass = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    try:
        header = klass(binaryblock=block, endianness=endian, check=False)
    except Exception as exc:  # nibabel raises several types for garbage
        raise InputError(f"not a readable NIfTI file ({_short(exc)})", path) from None
    magic = header["magic"].item()
    if magic not in (b"n+1", b"n+2"):
        if magic in (b"ni1", b"ni2"):
            raise InputError("is the header of a .hdr/.img pair; convert it to a single .nii file", path)
        raise InputError("not a readable NIfTI file (bad magic string)", path)
    return header


def _read_data(stream, facts: dict, consumed: int, path) -> bytearray:
    """Exactly the declared data bytes, after skipping extensions; a short stream is a truncated file."""
    skip = facts["offset"] - consumed
    while skip > 0:  # extensions (bounded by the header check); read in chunks, never held whole
        got = len(stream.read(min(skip, _CHUNK)))
        if got == 0:
            raise InputError("truncated: the file ends inside the header extensions", path)
        skip -= got
    buf = bytearray(facts["nbytes"])
    view = memoryview(buf)
    pos = 0
    while pos < len(buf):
        chunk = stream.read(min(len(buf) - pos, _CHUNK))
        if not chunk:
            raise InputError(f"truncated or corrupt image data (stream ends after {pos} of {len(buf)} data bytes)",
                             path)
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return buf



def write_nifti(volume: Volume, path: str | os.PathLike, description: str = "ADDiagnosis",
                geometry_of: Volume | None = None) -> None:
    """Write a Volume as NIfTI-1 with its exact affine in both qform and sform (code 1, scanner).

    With ``geometry_of`` (the input scan, read by :func:`read_nifti`, on the same grid), the output carries
    that file's own qform and sform fields and codes unchanged instead.
    """
    nib = _nibabel()
    data = np.asarray(volume.array)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, volume.ijk_to_ras)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(volume.ijk_to_ras, code=1)
    img.set_sform(volume.ijk_to_ras, code=1)
    geometry = (geometry_of.meta.get("nifti_geometry") if geometry_of is not None else None) or None
    if geometry is not None and np.array_equal(geometry_of.ijk_to_ras, volume.ijk_to_ras):
        header = img.header
        for key in _GEOMETRY_FIELDS:
            header[key] = geometry[key]
        pixdim = header["pixdim"]
        pixdim[:4] = geometry["pixdim"]
        header["pixdim"] = pixdim
    img.header["descrip"] = description[:79].encode()
    try:
        if str(path).endswith(".gz") and _igzip is not None:
            # ISA-L level 1: ~6x faster than zlib level 1 at the same size (standard gzip stream)
            Path(path).write_bytes(_igzip.compress(img.to_bytes(), 1))
        else:
            nib.save(img, str(path))
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]
