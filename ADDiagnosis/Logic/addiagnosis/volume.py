"""The one value type (Volume) and NIfTI input/output with the checks a scan must pass.

A Volume is a 3D voxel array in IJK order plus the 4x4 IJK->RAS matrix (the
nibabel affine; Slicer's IJKToRAS) and a name. Readers refuse bad input with a
one-line :class:`InputError` before doing anything expensive.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError

try:
    from isal import igzip as _igzip
except ImportError:  # optional speed-up; nibabel's gzip is used without it
    _igzip = None

# Refuse headers that would need more memory than any brain MRI does (before allocating).
MAX_VOXELS = 512 * 512 * 512
MAX_DIM = 2048
MIN_DIM = 8
# Integer images with this few distinct values are label maps/segmentations, not T1 scans.
MAX_LABELS = 64
NIFTI_INTENT_LABEL = 1002


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


def read_nifti(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read a .nii/.nii.gz scan as a float32 Volume, refusing anything that is not a usable 3D scan."""
    nib = _nibabel()
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    if path.is_dir():
        raise InputError("is a directory, not a NIfTI file", path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for non-NIfTI input
        raise InputError(f"not a readable NIfTI file ({_short(exc)})", path) from None
    compressed = str(path).endswith(".gz")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"not a NIfTI file (nibabel read it as {type(img).__name__})", path)

    shape = tuple(int(s) for s in img.shape)
    check_shape(shape, path)
    header = img.header
    if int(header.get("intent_code", 0)) == NIFTI_INTENT_LABEL:
        raise InputError("is a label map (NIfTI intent 'label'), not an MRI scan", path)
    _check_file_size(path, img)
    if compressed and _igzip is not None and isinstance(img, nib.Nifti1Image):
        # whole-file decompression with ISA-L is ~2x faster than nibabel's streaming gzip
        try:
            img = nib.Nifti1Image.from_bytes(_igzip.decompress(path.read_bytes()))
        except Exception as exc:
            raise InputError(f"truncated or corrupt image data ({_short(exc)})", path) from None

    try:
        # nibabel moves the file's scl_slope/scl_inter onto the data proxy when it loads
        slope = float(getattr(img.dataobj, "slope", 1.0))
        inter = float(getattr(img.dataobj, "inter", 0.0))
        unscaled = slope == 1.0 and inter == 0.0
        if unscaled and np.dtype(header.get_data_dtype()).kind in "iuf":
            raw = np.asanyarray(img.dataobj.get_unscaled())
            data = raw.astype(np.float32)
        else:  # same values as the original app's get_fdata() (float64) then .float()
            raw = None
            data = img.get_fdata(caching="unchanged").astype(np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError) as exc:
        raise InputError(f"truncated or corrupt image data ({_short(exc)})", path) from None

    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if raw is not None:
        while raw.ndim > 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
    check_array(data, path, raw_integer=raw if raw is not None and raw.dtype.kind in "iu" else None)
    vol = Volume(data, img.affine, name or scan_stem(path))
    vol.meta["source"] = str(path)
    return vol


def check_shape(shape: tuple[int, ...], path=None) -> None:
    """Refuse 2D, 4D and absurd shapes from the header alone (nothing allocated yet)."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) < 3 or min(dims[:3]) < 2:
        raise InputError(f"is a 2D image (shape {tuple(shape)}); a 3D brain volume is needed", path)
    if len(dims) > 3:
        raise InputError(
            f"is a {len(dims)}D image (shape {tuple(shape)}); give one 3D volume "
            "(e.g. extract it with fslroi or nibabel)",
            path,
        )
    if min(dims) < MIN_DIM:
        raise InputError(f"has only {min(dims)} voxels along one axis (shape {tuple(shape)}); too small", path)
    n = int(np.prod(np.array(dims, dtype=np.float64)))
    if max(dims) > MAX_DIM or n > MAX_VOXELS:
        raise InputError(
            f"header claims absurd dimensions {tuple(shape)} ({n:.3g} voxels); refusing to allocate", path
        )


def check_array(data: np.ndarray, path=None, raw_integer: np.ndarray | None = None) -> None:
    """Refuse NaN/Inf, constant volumes and label maps."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            raise InputError(f"contains {bad} NaN/Inf voxels", path)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise InputError(f"all voxels have the same value ({lo:g}); nothing to analyse", path)
    if raw_integer is not None and _distinct_at_most(raw_integer, MAX_LABELS):
        raise InputError(
            f"looks like a label map (integer image with at most {MAX_LABELS} distinct values), not an MRI scan",
            path,
        )


def _distinct_at_most(a: np.ndarray, limit: int) -> bool:
    lo, hi = int(a.min()), int(a.max())
    if hi - lo <= 1 << 20:
        counts = np.bincount(a.ravel(order="K").astype(np.int64) - lo)
        return int(np.count_nonzero(counts)) <= limit
    sample = a.ravel(order="K")[:: max(1, a.size // 200_000)]
    return len(np.unique(sample)) <= limit and len(np.unique(a)) <= limit


def _check_file_size(path: Path, img) -> None:
    if str(path).endswith(".gz"):
        return
    header = img.header
    need = int(header.get_data_offset()) + int(np.prod(img.shape)) * np.dtype(header.get_data_dtype()).itemsize
    have = path.stat().st_size
    if have < need:
        raise InputError(f"truncated: file has {have} bytes, header needs {need}", path)


def write_nifti(volume: Volume, path: str | os.PathLike, description: str = "ADDiagnosis") -> None:
    """Write a Volume as NIfTI-1 with its exact affine in both qform and sform (code 1, scanner)."""
    nib = _nibabel()
    data = np.asarray(volume.array)
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, volume.ijk_to_ras)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(volume.ijk_to_ras, code=1)
    img.set_sform(volume.ijk_to_ras, code=1)
    img.header["descrip"] = description[:79].encode()
    try:
        if str(path).endswith(".gz") and _igzip is not None:
            # ISA-L level 1: ~6x faster than zlib level 1 at the same size (standard gzip stream)
            Path(path).write_bytes(_igzip.compress(img.to_bytes(), 1))
        else:
            nib.save(img, str(path))
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})", path) from None


def scan_stem(path: Path) -> str:
    """The file name without .nii/.nii.gz (the scan's name in reports and output folders)."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]
