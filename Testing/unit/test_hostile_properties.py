"""Property-based hostile inputs (Hypothesis, fixed seed, bounded examples): random NIfTI headers (dims, pixdim,
datatypes, qform/sform, scaling, offsets, endianness, compression, truncation) and random Volumes. Every one
is either accepted or refused with one InputError line; no other exception ever escapes.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addiagnosis.errors import InputError
from addiagnosis.io.checks import check_volume
from addiagnosis.io.volume import Volume, read_nifti

SETTINGS = settings(derandomize=True, max_examples=200, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
NASTY = [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e-6, 1e-3, 0.5, 1.0, 2.0, 60.0, 1e30]
FLOATS = st.sampled_from(NASTY) | st.floats(-100, 100, allow_nan=False)
DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 7, 999]
DIMS = st.sampled_from([1, 2, 3, 8, 9, 12, 16, 17]) | st.sampled_from([0, -3, 5000, 32767])


GOOD_TYPES = [np.uint8, np.int16, np.int32, np.float32, np.float64, np.uint16, np.int8]


@st.composite
def nifti_files(draw):
    """A valid scan's header and data, then 0-4 hostile mutations of fields, payload or compression."""
    two = draw(st.booleans())
    shape = tuple(draw(st.sampled_from([8, 9, 12, 16])) for _ in range(3)) + tuple(
        draw(st.lists(st.sampled_from([1, 1, 2]), max_size=2)))
    dtype = draw(st.sampled_from(GOOD_TYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = (rng.normal(100, 30, shape) if draw(st.booleans()) else rng.integers(0, 3, shape)).clip(0, 120)
    aff = np.diag([*(draw(st.sampled_from([0.5, 1.0, 1.3])) for _ in range(3)), 1.0])
    img = (nib.Nifti2Image if two else nib.Nifti1Image)(data.astype(dtype), aff)
    endian = draw(st.sampled_from(["<", ">"]))
    blob = img.to_bytes()
    size = int(img.header["sizeof_hdr"])
    header = type(img.header)(binaryblock=blob[:size], check=False)
    if endian != header.endianness:
        header = header.as_byteswapped(endian)
        payload = np.asarray(img.dataobj).astype(np.dtype(dtype).newbyteorder(endian)).tobytes(order="F")
        blob = header.binaryblock + blob[size : int(img.header["vox_offset"])] + payload
    mutations = {
        "dim": lambda: [draw(st.integers(0, 8)), *(draw(DIMS) for _ in range(7))],
        "datatype": lambda: draw(st.sampled_from(DATATYPES)),
        "pixdim": lambda: [draw(st.sampled_from([1.0, -1.0, 0.0])), *(draw(FLOATS) for _ in range(7))],
        "qform_code": lambda: draw(st.sampled_from([0, 1, 2, 4, -1, 99])),
        "sform_code": lambda: draw(st.sampled_from([0, 1, 2, 4, -1, 99])),
        "quatern_b": lambda: draw(FLOATS), "quatern_c": lambda: draw(FLOATS), "quatern_d": lambda: draw(FLOATS),
        "qoffset_x": lambda: draw(FLOATS),
        "srow_x": lambda: [draw(FLOATS) for _ in range(4)], "srow_y": lambda: [draw(FLOATS) for _ in range(4)],
        "scl_slope": lambda: draw(st.sampled_from([0.0, 2.5, float("nan"), float("inf"), -1.0])),
        "scl_inter": lambda: draw(st.sampled_from([10.0, float("nan"), float("inf")])),
        "intent_code": lambda: 1002,
        "vox_offset": lambda: draw(st.sampled_from([0, 100, size, size + 1000, 1e12, float("nan")])),
        "magic": lambda: draw(st.sampled_from([b"ni1", b"xyz", b""])),
    }
    for key in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=4, unique=True)):
        try:
            header[key] = mutations[key]()
        except (ValueError, OverflowError):  # the field cannot hold it (e.g. NaN in NIfTI-2's int64 offset)
            pass
    blob = header.binaryblock + blob[size:]
    tail = draw(st.sampled_from(["keep", "keep", "cut", "extra"]))
    if tail == "cut":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif tail == "extra":
        blob += bytes(draw(st.integers(1, 5000)))
    compressed = draw(st.booleans())
    return (gzip.compress(blob, 1) if compressed else blob), compressed


@SETTINGS
@given(nifti_files())
def test_random_headers_are_accepted_or_refused_in_one_line(tmp_path_factory, case):
    blob, compressed = case
    path = tmp_path_factory.mktemp("h") / ("scan.nii.gz" if compressed else "scan.nii")
    path.write_bytes(blob)
    try:
        vol = read_nifti(path)
    except InputError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.startswith(str(path) + ": ")
        return
    assert vol.array.ndim == 3 and vol.array.dtype == np.float32 and np.isfinite(vol.ijk_to_ras).all()
    check_volume(vol)  # what the file reader accepts, the engine's entry check accepts


ARRAYS = st.sampled_from(["float32", "float64", "int16", "uint8", "complex64", "bool", "int64"])


@SETTINGS
@given(dtype=ARRAYS, shape=st.lists(st.integers(1, 12), min_size=0, max_size=5),
       kind=st.sampled_from(["noise", "labels", "const", "nan"]), lin=st.lists(FLOATS, min_size=9, max_size=9),
       seed=st.integers(0, 1000))
def test_random_volumes_are_accepted_or_refused_in_one_line(dtype, shape, kind, lin, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(s * 2 for s in shape)
    if kind == "noise":
        arr = rng.normal(100, 30, shape)
    elif kind == "labels":
        arr = rng.integers(0, 4, shape)
    elif kind == "const":
        arr = np.full(shape, 3.0)
    else:
        arr = np.where(rng.random(shape) < 0.1, np.nan, 1.0)
    with np.errstate(all="ignore"):
        arr = arr.astype(dtype)
    aff = np.eye(4)
    aff[:3, :3] = np.array(lin).reshape(3, 3)
    try:
        check_volume(Volume(arr, aff, "random"))
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("random: ")
