"""The one validation of an image, whatever its source (NIfTI file, Slicer node, web upload).

Torch-free. Every refusal is one :class:`InputError` line naming the image and the problem.

- :func:`check_nifti_header` runs on a NIfTI header alone, before anything sized by the data is allocated:
  dimensions, declared size (limit: :func:`max_voxels`), datatype, intent, pixdim, qform/sform.
- :func:`check_volume` runs on every :class:`~addiagnosis.io.volume.Volume` at the entry of a diagnosis
  (``Diagnoser.run``): shape, datatype, the IJK->RAS matrix and the values (finite, not constant, not a
  label map judged from the values and their structure whatever the datatype).

Limits (module constants; the size limit is also configurable):

- ``ADDIAGNOSIS_MAX_VOXELS`` (environment, default 512**3 = 134,217,728 voxels, i.e. a 512^3 scan): a header
  declaring more voxels is refused before reading any data.
- voxel sizes from 0.01 mm to 50 mm; qform and sform (when both are set) must agree within 1 mm everywhere
  in the image, else the scan is refused (which one is right cannot be told, and Slicer, ITK and nibabel do
  not all pick the same one).
"""

from __future__ import annotations

import os

import numpy as np

from addiagnosis.errors import InputError

MAX_VOXELS_ENV = "ADDIAGNOSIS_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 512 * 512 * 512
MAX_DIM = 2048
MIN_DIM = 8
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
QFORM_SFORM_TOLERANCE_MM = 1.0
MAX_EXTENSION_BYTES = 64 << 20  # NIfTI extensions between the header and the data (skipped, never held)
# Label maps: integer values only, at most this many distinct ones, AND flat: at least this share of the
# neighbouring voxel pairs (along i, j and k; pairs where both are background left out) hold the same value. A
# label map is a few large regions of one value each (0.6-0.95); a scan, even stored as 8 bits or as an 8-bit
# scan times scl_slope (a few hundred levels far apart), has noise and smooth gradients (0.05-0.1; 0.44 for a
# noise-free phantom).
MAX_LABEL_VALUES = 256
FLAT_FRACTION = 0.5
NIFTI_INTENT_LABEL = 1002
_SLAB_VOXELS = 1 << 22  # value checks run slab by slab: their temporaries stay small whatever the image size


def max_voxels() -> int:
    """The largest image accepted, in voxels: ``$ADDIAGNOSIS_MAX_VOXELS`` or 512**3."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"{MAX_VOXELS_ENV}={raw!r} is not a positive number of voxels")
    return value


# ------------------------------------------------------------------------------------------ header level
def check_shape(shape, path=None) -> tuple[int, int, int]:
    """Refuse 2D, 4D (more than one volume) and absurd shapes; returns the 3D shape (trailing 1s dropped)."""
    dims = [int(s) for s in shape]
    if any(d < 1 for d in dims):
        raise InputError(f"invalid dimensions {tuple(dims)} in the header", path)
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
    n = float(np.prod(np.array(dims, dtype=np.float64)))
    limit = max_voxels()
    if max(dims) > MAX_DIM or n > limit:
        raise InputError(
            f"header claims absurd dimensions {tuple(shape)} ({n:.3g} voxels; limit {limit:.3g}, "
            f"set {MAX_VOXELS_ENV} to change it); refusing to allocate",
            path,
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


def check_dtype(dtype, path=None) -> np.dtype:
    """Refuse complex, RGB/structured and non-numeric data (a greyscale MRI is needed)."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None:
        raise InputError("holds RGB/colour or structured voxels; a greyscale MRI scan is needed", path)
    if dtype.kind == "c":
        raise InputError(f"holds complex data ({dtype.name}); give the magnitude image", path)
    if dtype.kind not in "iufb":
        raise InputError(f"has an unsupported voxel type ({dtype})", path)
    return dtype


def check_affine(affine, path=None, what: str = "voxel-to-world matrix") -> np.ndarray:
    """Refuse a matrix with NaN/Inf, collinear (singular) axes or voxel sizes outside 0.01..50 mm."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise InputError(f"{what} has shape {a.shape}, not 4x4", path)
    if not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN/Inf", path)
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise InputError(f"{what} is not affine (last row {a[3].tolist()})", path)
    lin = a[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    det = abs(float(np.linalg.det(lin)))
    if spacing.min() == 0 or det <= 1e-3 * float(np.prod(spacing)):
        raise InputError(f"{what} is singular (voxel axes are zero or collinear)", path)
    if spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        sizes = ", ".join(f"{s:.3g}" for s in spacing)
        raise InputError(
            f"voxel size ({sizes}) mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm; not a brain MRI "
            "geometry",
            path,
        )
    return a


def corner_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between where two voxel-to-world matrices put the image's corner voxels."""
    ext = np.array(shape[:3], dtype=np.float64) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, ext[0]) for j in (0, ext[1]) for k in (0, ext[2])])
    return float(np.max(np.linalg.norm((corners @ np.asarray(a).T - corners @ np.asarray(b).T)[:, :3], axis=1)))


def check_nifti_header(header, path=None) -> dict:
    """Check a nibabel Nifti1/Nifti2 header before any data is read.

    Returns ``shape`` (full, as declared), ``shape3``, ``dtype``, ``offset``, ``nbytes`` (of the data),
    ``affine`` (nibabel's choice: sform, else qform, else pixdim) and ``slope``/``inter`` (None when unscaled).
    """
    from nibabel.spatialimages import HeaderDataError

    dim = [int(v) for v in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise InputError(f"invalid header: dim[0] = {dim[0]} (number of dimensions must be 1..7)", path)
    shape = tuple(dim[1 : dim[0] + 1])
    shape3 = check_shape(shape, path)
    try:
        dtype = header.get_data_dtype()
    except (HeaderDataError, KeyError, ValueError, TypeError):
        raise InputError(f"unsupported NIfTI datatype code {int(header['datatype'])}", path) from None
    check_dtype(dtype, path)
    if int(header.get("intent_code", 0)) == NIFTI_INTENT_LABEL:
        raise InputError("is a label map (NIfTI intent 'label'), not an MRI scan", path)
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.isfinite(pixdim).all() or (pixdim <= 0).any():
        raise InputError(f"invalid voxel size in the header (pixdim {pixdim.tolist()}); must be positive", path)
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    forms = {}
    try:
        if qcode > 0:
            forms["qform"] = header.get_qform()
        if scode > 0:
            forms["sform"] = header.get_sform()
        affine = header.get_best_affine()
    except (HeaderDataError, ValueError, ArithmeticError):
        raise InputError("invalid qform/sform in the header", path) from None
    for name, form in forms.items():
        check_affine(form, path, what=name)
    affine = check_affine(affine, path)
    if len(forms) == 2:
        gap = corner_distance(forms["qform"], forms["sform"], shape3)
        if gap > QFORM_SFORM_TOLERANCE_MM:
            raise InputError(
                f"qform and sform disagree by {gap:.1f} mm (tolerance {QFORM_SFORM_TOLERANCE_MM:g} mm): which "
                "one is right cannot be told; make them agree (e.g. fslorient -copysform2qform)",
                path,
            )
    hdr_size = int(header["sizeof_hdr"])
    raw_offset = float(header.get_data_offset())
    offset = int(raw_offset) if np.isfinite(raw_offset) else -1
    if offset < hdr_size or offset - hdr_size > MAX_EXTENSION_BYTES:
        raise InputError(f"invalid header: data offset {offset} (header is {hdr_size} bytes)", path)
    try:
        slope, inter = header.get_slope_inter()
    except (HeaderDataError, ValueError):
        raise InputError("invalid intensity scaling (scl_slope/scl_inter) in the header", path) from None
    if slope is not None and not np.isfinite([slope, inter or 0.0]).all():
        raise InputError("invalid intensity scaling (scl_slope/scl_inter) in the header", path)
    n = int(np.prod(np.array(shape, dtype=np.int64)))
    return {"shape": shape, "shape3": shape3, "dtype": dtype, "offset": offset, "nbytes": n * dtype.itemsize,
            "affine": affine, "slope": slope, "inter": inter}


# -------------------------------------------------------------------------------------------- data level
def check_values(data: np.ndarray, path=None) -> None:
    """Refuse NaN/Inf, constant images and label maps (from the values, whatever the datatype)."""
    check_dtype(data.dtype, path)
    flat = data.ravel(order="K")  # a view for C- or F-ordered arrays
    slabs = [flat[i : i + _SLAB_VOXELS] for i in range(0, flat.size, _SLAB_VOXELS)]
    if not slabs:
        raise InputError("holds no voxels", path)
    if data.dtype.kind == "f":
        bad = sum(int(s.size - np.count_nonzero(np.isfinite(s))) for s in slabs)
        if bad:
            raise InputError(f"contains {bad} NaN/Inf voxels", path)
    lo = min(float(s.min()) for s in slabs)
    hi = max(float(s.max()) for s in slabs)
    if lo == hi:
        raise InputError(f"all voxels have the same value ({lo:g}); nothing to analyse", path)
    n = _label_count(flat, slabs, lo, hi)
    if n is not None:
        share = flat_share(data, lo)
        if share >= FLAT_FRACTION:
            raise InputError(f"looks like a label map or mask ({n} distinct integer values in flat regions: "
                             f"{share:.0%} of neighbouring voxels are equal), not an MRI scan", path)


def _label_count(flat: np.ndarray, slabs, lo: float, hi: float) -> int | None:
    """The number of distinct values when they are few integers (a label map's are), else None (early exits)."""
    if flat.dtype.kind == "f":
        sample = flat[:: max(1, flat.size // 65536)]
        if not np.array_equal(sample, np.floor(sample)):
            return None
    if len(np.unique(flat[:: max(1, flat.size // 65536)])) > MAX_LABEL_VALUES:
        return None
    small_range = hi - lo <= 1 << 16
    counts = np.zeros(int(hi - lo) + 1 if small_range else 0, np.int64)
    seen: set = set()
    for s in slabs:
        if s.dtype.kind == "f" and not np.array_equal(s, np.floor(s)):
            return None
        if small_range:
            counts += np.bincount((s - lo).astype(np.int64), minlength=counts.size)
            n = int(np.count_nonzero(counts))
        else:
            seen.update(np.unique(s).tolist())
            n = len(seen)
        if n > MAX_LABEL_VALUES:
            return None
    return n


def flat_share(data: np.ndarray, background: float) -> float:
    """Share of neighbouring voxel pairs (i, j, k neighbours; both-background pairs left out) with equal values.

    Computed slab by slab along k (temporaries of a few million voxels whatever the image size)."""
    step = max(1, _SLAB_VOXELS // max(1, data.shape[0] * data.shape[1]))
    equal = total = 0
    for k0 in range(0, data.shape[2], step):
        slab = data[:, :, k0 : k0 + step + 1]  # one slice of overlap: the k pairs across slabs
        pairs = [(slab[1:], slab[:-1]), (slab[:, 1:], slab[:, :-1]), (slab[:, :, 1:], slab[:, :, :-1])]
        if k0 + step < data.shape[2]:
            pairs[0], pairs[1] = (slab[1:, :, :-1], slab[:-1, :, :-1]), (slab[:, 1:, :-1], slab[:, :-1, :-1])
        for a, b in pairs:
            fg = (a != background) | (b != background)
            total += int(np.count_nonzero(fg))
            equal += int(np.count_nonzero(fg & (a == b)))
    return equal / total if total else 1.0


def check_volume(volume) -> None:
    """The check every diagnosis starts with, whatever made the Volume (file, Slicer node, web upload)."""
    where = volume.meta.get("source") or volume.name
    data = np.asarray(volume.array)
    check_shape(data.shape, where)
    check_affine(volume.ijk_to_ras, where)
    check_values(data, where)
