"""Template alignment preprocessing (kind ``template``): affine registration to MNI152, then the model grid.

Steps, all recorded in ``Prepared.info`` (and so in ``report.json``):
1. the scan's IJK->RAS is honoured (any storage orientation, anisotropic voxels): SimpleITK gets the
   geometry in its LPS convention;
2. affine registration of the scan to the MNI152 template with a synthetic head (:mod:`.template`), built
   not to depend on how the scan is stored (axis order and flips, oblique or anisotropic grid, how much empty
   background the field of view holds): the scan is block-averaged along its own axes to ~3 mm voxels, its
   background (below a threshold set by the head's own intensity level) zeroed, and it is resampled onto a
   3 mm lattice fixed in physical space around the head (so padding, cropping or flipping move nothing); the
   transform starts at the head's centre of mass; Mattes mutual information is evaluated at every voxel of
   the template's head mask (a grid the template fixes, never the scan); a similarity transform at 8 mm,
   then a 12-parameter affine at 8 mm and 4 mm, each run until its step falls below ``MIN_STEP`` mm
   (convergence, recorded per stage; a warning when a stage stops at its iteration cap instead); only when
   this attempt fails its quality check (step 5), a second one whose stages backtrack (a stage that ends worse
   than it started runs again with a smaller first step), kept if its quality is better;
3. one trilinear resampling of the scan onto the model grid (RAS, MNI mm, shape/spacing from the card);
4. brain mask from the template (skull and background set to 0 unless ``skull_strip`` is false),
   percentile normalisation inside the brain;
5. registration quality: Pearson correlation between the aligned scan and the template inside the brain;
   below ``min_correlation`` (default 0.45) it is "poor" with a warning. Any aligned head reaches a similar
   correlation, so it only catches gross failures: "good" also needs every stage to have converged.

The reference input (for ``lrp-reference``) is the template itself taken through steps 3-4: the scan a
perfectly aligned, healthy, MNI-average subject would give.

``to_input`` maps relevance back through the inverse transform onto the input grid (same shape and
IJK->RAS as the input); relevance is a per-voxel quantity, so the interpolated density is scaled by the
voxel volume ratio and sums are preserved approximately.
"""

from __future__ import annotations

import contextlib
import functools
import time

import numpy as np
import torch

from addiagnosis.errors import InputError
from addiagnosis.io.volume import Volume
from addiagnosis.prep.physical import grid_affine, normalise_percentiles, resample, resample_back
from addiagnosis.prep.registry import Prepared, register, register_reference
from addiagnosis.prep.template import ATLAS_SPACING, LANDMARKS_MNI, registration_template

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
DEFAULT_CENTRE_MNI = (0.0, -18.0, 16.0)
MIN_CORRELATION = 0.45  # well-aligned synthetic scans: 0.50-0.95 (median 0.85); noise: ~0
REDUCE_MM = 3.0  # the scan is block-averaged along its own axes to voxels of about this size first
FIXED_SPACING = 4.0  # the template as registered: 4 mm (levels at 8 mm and 4 mm)
HEAD_FRACTION = 0.15  # head = voxels brighter than this fraction of the tissue level (not of the background)
MARGIN = 6  # lattice points of background around the head
MAX_ITERATIONS = 300  # a safety cap only: each stage runs until its step falls below MIN_STEP
MIN_STEP = 0.01  # mm of physical shift (of the worst-moved point): the convergence criterion
STAGES = (  # (transform, shrink factor of the 4 mm template, smoothing sigma in mm, first step in mm)
    ("similarity", 2, 4.0, 4.0),
    ("affine", 2, 4.0, 1.0),
    ("affine", 1, 2.0, 0.5),
)
ROBUST_TRIES = 3  # the fallback attempt: a stage that got worse runs again with a smaller first step ...
ROBUST_STEP_DIVISOR = 4.0  # ... divided by this each time


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


def block_reduce(volume: Volume, size_mm: float = REDUCE_MM) -> tuple[np.ndarray, np.ndarray]:
    """Block means along the scan's own axes (blocks of about ``size_mm``): anti-aliased, and fast.

    Returns the reduced array and its IJK->RAS (block centres). A 1 mm 256^3 scan becomes 85^3 at 3 mm.
    """
    data = np.asarray(volume.array)
    sp = np.asarray(volume.spacing)
    f = np.maximum(np.round(size_mm / sp), 1).astype(int)
    if np.all(f == 1):
        return np.asarray(data, dtype=np.float32), volume.ijk_to_ras.copy()
    src = torch.from_numpy(np.ascontiguousarray(data))
    if src.dtype != torch.float32:
        src = src.float()
    extra = (-np.asarray(data.shape)) % f  # the last partial block: completed with background (zeros)
    if extra.any():
        src = torch.nn.functional.pad(src, (0, int(extra[2]), 0, int(extra[1]), 0, int(extra[0])))
    out = torch.nn.functional.avg_pool3d(src[None, None], tuple(int(v) for v in f))[0, 0].numpy()
    step = np.eye(4)
    step[:3, :3] = np.diag(f)
    step[:3, 3] = (f - 1) / 2.0
    return out, volume.ijk_to_ras @ step


def tissue_level(data: np.ndarray) -> tuple[float, float]:
    """(tissue level, head threshold): the median of the voxels brighter than half of it (a fixed point
    started from a two-class isodata split), and a fraction of it.

    Computed on the histogram of every voxel, so both depend on the head's voxels only, not on how much
    empty background the field of view holds (that only fills the lowest bins).
    """
    a = np.asarray(data, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return 0.0, 0.0
    counts, edges = np.histogram(a, bins=4096, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    counts = counts.astype(np.float64)
    cum = np.cumsum(counts)

    def mean(sel):
        n = counts[sel].sum()
        return float((counts[sel] * centres[sel]).sum() / n) if n else None

    def median_above(t):
        first = int(np.searchsorted(centres, t, side="right"))
        if first >= len(centres):
            return None
        before = cum[first - 1] if first else 0.0
        half = before + (cum[-1] - before) / 2.0
        return float(centres[min(int(np.searchsorted(cum, half)), len(centres) - 1)])

    t = mean(slice(None))
    for _ in range(50):
        below, above = mean(centres <= t), mean(centres > t)
        if below is None or above is None:
            break
        t_new = 0.5 * (below + above)
        if abs(t_new - t) <= (hi - lo) / 8192:
            break
        t = t_new
    level = median_above(t) or hi
    for _ in range(20):  # fixed point: the median of the voxels brighter than half of it (head voxels only)
        new = median_above(0.5 * level)
        if new is None or new == level:
            break
        level = new
    return level, HEAD_FRACTION * level


def _moving(volume: Volume):
    """The scan as registered: block-reduced, background (below the head threshold) set to 0, intensities
    scaled so that the tissue level is 1, resampled onto a lattice fixed in physical space (RAS axes,
    ``REDUCE_MM`` apart, anchored at the scanner origin) that covers the head plus a margin; and the head's
    centre of mass (RAS mm). Reversed axes, padding, cropping of background or another voxel grid change
    neither the lattice nor the image on it beyond interpolation; outside the scan's field of view is
    background."""
    data, aff = block_reduce(volume)
    level, thr = tissue_level(data)
    if not level > 0:
        raise InputError("the scan has no head: nothing brighter than its background to register")
    head = data > thr
    idx = np.argwhere(head)
    if len(idx) < 27:
        raise InputError("the scan has no head: nothing brighter than its background to register")
    data = np.where(head, np.minimum(data / level, 3.0), 0.0).astype(np.float32)
    lo_i, hi_i = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c, 1.0] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                        for c in (lo_i[2], hi_i[2])])
    ras = (aff @ corners.T)[:3]
    step = REDUCE_MM
    lo = (np.floor(ras.min(1) / step) - MARGIN) * step
    hi = (np.ceil(ras.max(1) / step) + MARGIN) * step
    shape = np.round((hi - lo) / step).astype(int) + 1
    lattice = np.eye(4)
    lattice[:3, :3] = np.diag([step] * 3)
    lattice[:3, 3] = lo
    out = resample(data, np.linalg.inv(aff) @ lattice, shape)
    w = out.ravel()
    sel = w > 0
    ijk = np.indices(out.shape, dtype=np.float64).reshape(3, -1)[:, sel]
    centre_ijk = (ijk * w[sel]).sum(1) / w[sel].sum()  # intensity moments of the head
    centre = (lattice @ np.append(centre_ijk, 1.0))[:3]
    return out, lattice, centre


@functools.lru_cache(maxsize=1)
def _fixed():
    """The template head at 4 mm (block means of the 2 mm atlas), its head mask, and its centre (RAS)."""
    from scipy import ndimage

    A = registration_template()
    vol = Volume(A.head, A.affine, "template")
    data, aff = block_reduce(vol, FIXED_SPACING)
    mask = ndimage.binary_dilation(data > 0.05, iterations=1)
    w = data.ravel()
    ijk = np.indices(data.shape, dtype=np.float64).reshape(3, -1)
    sel = w > 0
    centre = (aff @ np.append((ijk[:, sel] * w[sel]).sum(1) / w[sel].sum(), 1.0))[:3]
    sitk = _sitk()
    fixed = to_sitk(data, aff)
    fmask = sitk.Cast(to_sitk(mask.astype(np.float32), aff), sitk.sitkUInt8)
    return fixed, fmask, centre


def transform_matrix(tx) -> np.ndarray:
    """4x4 of a SimpleITK matrix-offset transform (fixed LPS point -> moving LPS point)."""
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


def _converged(stop: str) -> bool:
    return "Maximum number of iterations" not in stop


@contextlib.contextmanager
def _one_itk_thread(sitk):
    """Register with one ITK thread: the multi-threaded metric sums its per-thread parts in an order that varies
    from run to run (the same scan registered twice differed by 1e-7 in correlation and 1e-4 in its relevance
    map); with one thread every run and every front end gives the same numbers, at ~0.2 s more per scan."""
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


def _as_affine(sitk, tx):
    """The same transform as a general affine one (the similarity stage hands over to the affine stages)."""
    aff_tx = sitk.AffineTransform(3)
    aff_tx.SetCenter(tx.GetCenter())
    aff_tx.SetMatrix(tx.GetMatrix())
    aff_tx.SetTranslation(tx.GetTranslation())
    return aff_tx


def _run_stage(sitk, images, tx, stage, min_step: float, max_iterations: int) -> dict:
    """One registration stage, updating ``tx`` in place; returns its record for the quality report (with the
    metric where it started, at this stage's level)."""
    fixed, fmask, moving = images
    kind, shrink, sigma, step = stage
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.NONE)  # every voxel of the template's head mask at this level
    r.SetMetricFixedMask(fmask)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=step, minStep=min_step,
                                               numberOfIterations=int(max_iterations),
                                               relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([shrink])
    r.SetSmoothingSigmasPerLevel([sigma])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetInitialTransform(tx, inPlace=True)
    start = []
    r.AddCommand(sitk.sitkIterationEvent, lambda: start.append(r.GetMetricValue()) if not start else None)
    ts = time.perf_counter()
    r.Execute(fixed, moving)
    stop = r.GetOptimizerStopConditionDescription()
    return {"transform": kind, "level_mm": FIXED_SPACING * shrink, "smoothing_mm": sigma, "first_step": step,
            "iterations": int(r.GetOptimizerIteration()), "metric": float(r.GetMetricValue()),
            "start_metric": float(start[0]) if start else None,
            "converged": _converged(stop), "stop": stop[:160], "seconds": round(time.perf_counter() - ts, 3)}


def _worse(rec: dict) -> bool:
    return rec["start_metric"] is not None and rec["metric"] > rec["start_metric"]


def _robust_stage(sitk, images, tx, stage, min_step: float, max_iterations: int) -> dict:
    """A stage of the fallback attempt, with backtracking. Regular-step gradient descent takes its steps in
    *parameter* space and does not check that they descend: when the gradient points mostly along the matrix,
    a first step of 1 changes a matrix element by up to 1 (~100 mm at the edge of the head); on 2 of 32
    wide-variety heads that threw a converged similarity far off (the affine stage ended at a third of the
    metric it started from) and the registration failed. Here a stage that ends worse than it started, or
    stops at its iteration cap, runs again from the same start with its first step divided by
    ``ROBUST_STEP_DIVISOR`` (up to ``ROBUST_TRIES`` times); the best try that did not get worse is kept, and
    if every try got worse, the stage is undone (the previous stage's transform stands)."""
    kind, shrink, sigma, step = stage
    before, tries = tx.GetParameters(), []
    for k in range(ROBUST_TRIES):
        tx.SetParameters(before)
        rec = _run_stage(sitk, images, tx, (kind, shrink, sigma, step / ROBUST_STEP_DIVISOR ** k), min_step,
                         max_iterations)
        tries.append((rec, tx.GetParameters()))
        if rec["converged"] and not _worse(rec):
            break
    kept = [t for t in tries if not _worse(t[0])]
    summary = [{k: r[k] for k in ("first_step", "iterations", "metric", "converged")} for r, _ in tries]
    seconds = round(sum(r["seconds"] for r, _ in tries), 3)
    if not kept:
        tx.SetParameters(before)
        rec = {**tries[0][0], "metric": tries[0][0]["start_metric"], "converged": True, "undone": True,
               "stop": "undone: every try ended worse than it started"}
    else:
        rec, params = min(kept, key=lambda t: (not t[0]["converged"], t[0]["metric"]))
        tx.SetParameters(params)
    return {**rec, "tries": summary, "seconds": seconds}


def register_to_template(volume: Volume, max_iterations: int = MAX_ITERATIONS,
                         min_step: float = MIN_STEP, robust: bool = False) -> tuple[np.ndarray, dict]:
    """Affine registration; returns ``mni_to_input_ras`` (4x4, MNI RAS mm -> scan RAS mm) and details.

    Independent of how the scan is stored: the scan is block-averaged, its background (below a threshold
    set by the head's own intensities) zeroed, and it is resampled onto a lattice fixed in physical space
    around the head (:func:`_moving`); the transform starts from the head's centre of mass; the similarity
    (Mattes mutual information) is evaluated at every voxel of the template's head mask (a grid fixed by
    the template, never by the scan); each stage (similarity 8 mm, affine 8 mm,
    affine 4 mm) runs until its step is below ``min_step`` mm (converged) or ``max_iterations`` (not).
    ``robust``: the fallback attempt (stages with backtracking, :func:`_robust_stage`), which
    :func:`template` makes when the first one's quality check fails.
    """
    sitk = _sitk()
    t0 = time.perf_counter()
    fixed, fmask, fixed_centre = _fixed()
    data, aff, moving_centre = _moving(volume)
    moving = to_sitk(data, aff)
    centre_lps = (FLIP[:3, :3] @ fixed_centre).tolist()
    translation = (FLIP[:3, :3] @ (moving_centre - fixed_centre)).tolist()
    sim = sitk.Similarity3DTransform()
    sim.SetCenter(centre_lps)
    sim.SetTranslation(translation)
    stages = []
    tx = sim
    with _one_itk_thread(sitk):
        for kind, shrink, sigma, step in STAGES:
            if kind == "affine" and not isinstance(tx, sitk.AffineTransform):
                tx = _as_affine(sitk, tx)
            run = _robust_stage if robust else _run_stage
            stages.append(run(sitk, (fixed, fmask, moving), tx, (kind, shrink, sigma, step), min_step, max_iterations))
    m_lps = transform_matrix(tx)
    mni_to_input = FLIP @ m_lps @ FLIP
    converged = all(s["converged"] for s in stages)
    details = {"method": "SimpleITK similarity (8 mm) + affine (8 mm, 4 mm), Mattes MI (32 bins) at every voxel "
                         "of the template head mask; scan block-averaged to ~3 mm, background zeroed, "
                         "resampled onto a 3 mm RAS lattice around the head; start at the head's centre of mass",
               "attempt": "robust" if robust else "standard", "converged": converged,
               "min_step_mm": float(min_step), "max_iterations": int(max_iterations),
               "iterations": int(sum(s["iterations"] for s in stages)), "stages": stages,
               "metric": stages[-1]["metric"], "stop": stages[-1]["stop"],
               "seconds": round(time.perf_counter() - t0, 3)}
    return mni_to_input, details


def mean_displacement(m1: np.ndarray, m2: np.ndarray, spacing_mm: float = 4.0) -> tuple[float, float]:
    """Mean and maximum distance (mm) between where two ``mni_to_input_ras`` put the template's brain."""
    A = registration_template()
    step = max(1, int(round(spacing_mm / ATLAS_SPACING)))
    idx = np.argwhere(A.brain[::step, ::step, ::step]) * step
    pts = A.affine @ np.c_[idx, np.ones(len(idx))].T
    d = np.linalg.norm((np.asarray(m1) @ pts - np.asarray(m2) @ pts)[:3], axis=0)
    return float(d.mean()), float(d.max())


@functools.lru_cache(maxsize=4)
def template_on_grid(shape: tuple, spacing: tuple, centre: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(template head T1, brain mask) resampled onto a model grid."""
    A = registration_template()
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


def model_grid(spec: dict, grid: dict):
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
    shape, spacing, centre = model_grid(spec, grid)
    tmpl, brain = template_on_grid(shape, spacing, centre)
    data, _ = _normalise(tmpl, brain, spec)
    if spec.get("skull_strip", True):
        data = data * brain
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).reshape(1, 1, *shape)


QUALITY_RANK = {"poor": 0, "not converged": 1, "good": 2}


def _attempt(volume: Volume, spec: dict, layout: tuple, robust: bool) -> dict:
    """One registration and what the quality check needs: the resampled, normalised scan on the model grid
    and its correlation with the template inside the brain (recorded with the quality in the registration)."""
    shape, spacing, centre = layout
    mni_to_input, reg = register_to_template(volume, int(spec.get("max_iterations", MAX_ITERATIONS)),
                                             robust=robust)
    grid_to_input = np.linalg.inv(volume.ijk_to_ras) @ mni_to_input @ grid_affine(shape, spacing, centre)
    data = resample(volume.array, grid_to_input, shape)
    tmpl, brain = template_on_grid(shape, spacing, centre)
    data, norm_info = _normalise(data, brain, spec)
    corr = float(np.corrcoef(data[brain], tmpl[brain])[0, 1]) if brain.any() else 0.0
    if not np.isfinite(corr):
        corr = 0.0
    min_corr = float(spec.get("min_correlation", MIN_CORRELATION))
    reg.update({"similarity": "pearson correlation with the template inside the brain",
                "correlation": corr, "min_correlation": min_corr,
                # "good" needs convergence as well: every aligned head reaches a similar correlation
                "quality": "poor" if corr < min_corr else ("good" if reg["converged"] else "not converged")})
    return {"mni_to_input": mni_to_input, "reg": reg, "data": data, "norm": norm_info,
            "grid_to_input": grid_to_input}


def _aligned(volume: Volume, spec: dict, layout: tuple) -> dict:
    """The standard registration; only when its quality check fails (poor correlation or a stage that did not
    converge), a second, robust attempt (:func:`_robust_stage`), kept if its quality is better (then its
    correlation). Heads that register well keep the standard result bit for bit."""
    first = _attempt(volume, spec, layout, robust=False)
    if first["reg"]["quality"] == "good":
        return first
    second = _attempt(volume, spec, layout, robust=True)
    rank = [(QUALITY_RANK[a["reg"]["quality"]], a["reg"]["correlation"]) for a in (first, second)]
    chosen = second if rank[1] > rank[0] else first
    chosen["reg"]["attempts"] = [{k: a["reg"][k] for k in ("attempt", "quality", "correlation", "metric",
                                                          "converged", "seconds")} for a in (first, second)]
    chosen["reg"]["seconds"] = round(first["reg"]["seconds"] + second["reg"]["seconds"], 3)
    return chosen


@register("template")
def template(volume: Volume, spec: dict, grid: dict) -> Prepared:
    shape, spacing, centre = model_grid(spec, grid)
    if volume.array.ndim != 3:
        raise InputError(f"template alignment needs a 3D scan, got shape {volume.array.shape}")
    best = _aligned(volume, spec, (shape, spacing, centre))
    reg, data, grid_to_input, mni_to_input = best["reg"], best["data"], best["grid_to_input"], best["mni_to_input"]
    corr, min_corr = reg["correlation"], reg["min_correlation"]
    tmpl, brain = template_on_grid(shape, spacing, centre)
    g_aff = grid_affine(shape, spacing, centre)
    warnings = []
    if not reg["converged"]:
        warnings.append("template registration did not converge (" + "; ".join(
            f"{st['transform']} at {st['level_mm']:g} mm: {st['iterations']} iterations"
            for st in reg["stages"] if not st["converged"]) + "): check the result; it may be misaligned")
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
    info = {"kind": "template", "template": "MNI ICBM152 2009a nonlinear symmetric (nilearn), 2 mm, "
                                            "synthetic head",
            "registration": reg, "mni_to_input_ras": mni_to_input.tolist(),
            "grid_affine": g_aff.tolist(), "grid_to_input_ijk": grid_to_input.tolist(),
            "interpolation": "trilinear", "skull_strip": bool(spec.get("skull_strip", True)),
            "normalisation": best["norm"], "warnings": warnings}
    return Prepared(tensor, to_input, info, grid_affine=g_aff, input_mask=input_mask, mask_name="brain")
