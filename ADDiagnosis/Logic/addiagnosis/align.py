"""Template alignment preprocessing (kind ``template``): affine registration to MNI152, then the model grid.

Steps, all recorded in ``Prepared.info`` (and so in ``report.json``):
1. the scan's IJK->RAS is honoured (any storage orientation, anisotropic voxels): SimpleITK gets the
   geometry in its LPS convention;
2. affine registration (SimpleITK: rigid, then 12-parameter affine; Mattes mutual information,
   two-level pyramid) of the scan to the 2 mm MNI152 template with a synthetic head (:mod:`.template`);
3. one trilinear resampling of the scan onto the model grid (RAS, MNI mm, shape/spacing from the card);
4. brain mask from the template (skull and background set to 0 unless ``skull_strip`` is false),
   percentile normalisation inside the brain;
5. registration quality: Pearson correlation between the aligned scan and the template inside the brain;
   below ``min_correlation`` (default 0.45) a warning goes into ``info["warnings"]``.

The reference input (for ``lrp-reference``) is the template itself taken through steps 3-4: the scan a
perfectly aligned, healthy, MNI-average subject would give.

``to_input`` maps relevance back through the inverse transform onto the input grid (same shape and
IJK->RAS as the input); relevance is a per-voxel quantity, so the interpolated density is scaled by the
voxel volume ratio and sums are preserved approximately.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from .errors import InputError
from .preprocess import grid_affine, normalise_percentiles, resample, resample_back
from .registry import Prepared, register, register_reference
from .template import LANDMARKS_MNI, atlas
from .volume import Volume

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
DEFAULT_CENTRE_MNI = (0.0, -18.0, 16.0)
MIN_CORRELATION = 0.45  # well-aligned synthetic scans: 0.50-0.95 (median 0.85); noise: ~0
MOVING_SPACING = 4.0  # the scan is registered at 4 mm (speed); the template at 4 mm (rigid) then 2 mm
SHRINK1, SMOOTH1 = [2], [4.0]
SHRINK2, SMOOTH2 = [1], [0.0]


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - dependency
        raise InputError("template alignment needs SimpleITK (pip install SimpleITK)") from None
    return sitk


def to_sitk(array: np.ndarray, ijk_to_ras: np.ndarray):
    """A SimpleITK image whose index (i,j,k) is ``array[i,j,k]`` and whose geometry is ``ijk_to_ras``."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    lps = FLIP @ np.asarray(ijk_to_ras, dtype=np.float64)
    m = lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    u, _, vt = np.linalg.svd(direction)  # nearest orthonormal matrix (sheared headers)
    direction = u @ vt
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in direction.ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    return img


def downsample(volume: Volume, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """The scan on a coarser grid along its own axes (no finer than ``spacing`` mm), for registration."""
    sp = np.asarray(volume.spacing)
    factor = np.maximum(spacing / sp, 1.0)
    if np.all(factor < 1.2):
        return np.asarray(volume.array, dtype=np.float32), volume.ijk_to_ras
    from scipy import ndimage

    shape = np.maximum(np.round(np.asarray(volume.shape) / factor), 8).astype(int)
    step = (np.asarray(volume.shape) - 1) / np.maximum(shape - 1, 1)
    out_to_in = np.eye(4)
    out_to_in[:3, :3] = np.diag(step)
    smooth = ndimage.gaussian_filter(np.asarray(volume.array, dtype=np.float32), np.maximum(step - 1, 0) * 0.5)
    small = resample(smooth, out_to_in, shape)
    return small, volume.ijk_to_ras @ out_to_in


def transform_matrix(tx) -> np.ndarray:
    """4x4 of a SimpleITK matrix-offset transform (fixed LPS point -> moving LPS point)."""
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


@functools.lru_cache(maxsize=1)
def _fixed():
    A = atlas()
    return to_sitk(A.head, A.affine)


def register_to_template(volume: Volume, iterations: int = 50, sampling: float = 0.05,
                         seed: int = 7) -> tuple[np.ndarray, dict]:
    """Affine registration; returns ``mni_to_input_ras`` (4x4, MNI RAS mm -> scan RAS mm) and details."""
    sitk = _sitk()
    t0 = time.perf_counter()
    fixed = _fixed()
    data, aff = downsample(volume, MOVING_SPACING)
    sample = data.ravel()[:: max(1, data.size // 200_000)]
    hi = float(np.percentile(sample, 99.5)) or 1.0
    moving = to_sitk(data / hi, aff)

    def method(shrink, smooth):
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(32)
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(sampling, seed)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                   numberOfIterations=iterations,
                                                   gradientMagnitudeTolerance=1e-6)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel(shrink)
        r.SetSmoothingSigmasPerLevel(smooth)
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return r

    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = method(SHRINK1, SMOOTH1)
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    rigid_metric = float(reg.GetMetricValue())
    affine = sitk.AffineTransform(3)
    affine.SetCenter(init.GetCenter())
    affine.SetMatrix(init.GetMatrix())
    affine.SetTranslation(init.GetTranslation())
    reg2 = method(SHRINK2, SMOOTH2)
    reg2.SetInitialTransform(affine, inPlace=True)
    reg2.Execute(fixed, moving)
    m_lps = transform_matrix(affine)
    mni_to_input = FLIP @ m_lps @ FLIP
    details = {"method": "SimpleITK rigid (4 mm) + affine (2 mm), Mattes MI (32 bins), scan at 4 mm",
               "rigid_metric": rigid_metric, "affine_metric": float(reg2.GetMetricValue()),
               "iterations": int(reg2.GetOptimizerIteration()),
               "stop": reg2.GetOptimizerStopConditionDescription()[:200],
               "seconds": round(time.perf_counter() - t0, 2)}
    return mni_to_input, details


@functools.lru_cache(maxsize=4)
def template_on_grid(shape: tuple, spacing: tuple, centre: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(template head T1, brain mask) resampled onto a model grid."""
    A = atlas()
    g = grid_affine(shape, spacing, centre)
    to_atlas = np.linalg.inv(A.affine) @ g
    head = resample(A.head, to_atlas, shape)
    brain = resample(A.brain.astype(np.float32), to_atlas, shape) > 0.5
    return head, brain


def landmark_error(mni_to_input_ras: np.ndarray, scanner_from_mni: np.ndarray,
                   landmarks=LANDMARKS_MNI) -> float:
    """Mean distance (mm) between where the registration and the truth put the MNI landmarks."""
    pts = np.c_[np.asarray(landmarks, dtype=np.float64), np.ones(len(landmarks))]
    est = (np.asarray(mni_to_input_ras) @ pts.T)[:3]
    true = (np.asarray(scanner_from_mni) @ pts.T)[:3]
    return float(np.linalg.norm(est - true, axis=0).mean())


def _grid(spec: dict, grid: dict):
    shape = tuple(int(s) for s in grid["shape"])
    spacing = tuple(float(s) for s in (grid.get("spacing") or [2.0, 2.0, 2.0]))
    centre = tuple(float(c) for c in spec.get("centre_mni", DEFAULT_CENTRE_MNI))
    return shape, spacing, centre


def _normalise(data: np.ndarray, brain: np.ndarray, spec: dict):
    norm_spec = spec.get("normalise", {"low": 1.0, "high": 99.0})
    clip = norm_spec.get("clip", [0.0, 1.5])
    return normalise_percentiles(data, brain, float(norm_spec.get("low", 1.0)), float(norm_spec.get("high", 99.0)),
                                 None if clip is None else tuple(clip))


@register_reference("template")
def template_reference(spec: dict, grid: dict) -> torch.Tensor:
    """The template through the same resampling, normalisation and skull strip as a scan (1,1,D,H,W)."""
    shape, spacing, centre = _grid(spec, grid)
    tmpl, brain = template_on_grid(shape, spacing, centre)
    data, _ = _normalise(tmpl, brain, spec)
    if spec.get("skull_strip", True):
        data = data * brain
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).reshape(1, 1, *shape)


@register("template")
def template(volume: Volume, spec: dict, grid: dict) -> Prepared:
    shape, spacing, centre = _grid(spec, grid)
    if volume.array.ndim != 3:
        raise InputError(f"template alignment needs a 3D scan, got shape {volume.array.shape}")
    mni_to_input, reg = register_to_template(volume, int(spec.get("iterations", 50)))
    g_aff = grid_affine(shape, spacing, centre)
    grid_to_input = np.linalg.inv(volume.ijk_to_ras) @ mni_to_input @ g_aff
    data = resample(volume.array, grid_to_input, shape)
    tmpl, brain = template_on_grid(shape, spacing, centre)
    data, norm_info = _normalise(data, brain, spec)
    corr = float(np.corrcoef(data[brain], tmpl[brain])[0, 1]) if brain.any() else 0.0
    if not np.isfinite(corr):
        corr = 0.0
    min_corr = float(spec.get("min_correlation", MIN_CORRELATION))
    warnings = []
    if corr < min_corr:
        warnings.append(f"template registration looks poor (correlation {corr:.2f} < {min_corr:.2f}): "
                        "check that the scan is a whole-head T1; the result may be meaningless")
    if spec.get("skull_strip", True):
        data = data * brain
    tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).reshape(1, 1, *shape)
    in_shape = volume.shape
    input_to_grid = np.linalg.inv(grid_to_input)
    to_input = resample_back(grid_to_input, in_shape)
    input_mask = resample(brain.astype(np.float32), input_to_grid, in_shape) > 0.5
    reg.update({"similarity": "pearson correlation with the template inside the brain",
                "correlation": corr, "quality": "good" if corr >= min_corr else "poor",
                "min_correlation": min_corr})
    info = {"kind": "template", "template": "MNI ICBM152 2009a nonlinear symmetric (nilearn), 2 mm, "
                                            "synthetic head",
            "registration": reg, "mni_to_input_ras": mni_to_input.tolist(),
            "grid_affine": g_aff.tolist(), "grid_to_input_ijk": grid_to_input.tolist(),
            "interpolation": "trilinear", "skull_strip": bool(spec.get("skull_strip", True)),
            "normalisation": norm_info, "warnings": warnings}
    return Prepared(tensor, to_input, info, grid_affine=g_aff, input_mask=input_mask, mask_name="brain")
