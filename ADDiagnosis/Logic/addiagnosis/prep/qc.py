"""Input quality control after template registration: is this scan something the model was built for?

Torch-free and independent of the model. Each check gives a verdict ``pass`` / ``warn`` / ``fail`` with a
named reason; the record's verdict is the worst of them (docs/qc.md: what each check looks at, and the
confusion table on a test set made by code, ``scripts/experiments/qc_confusion.py``).

The checks read the scan at points of the registration template, taken through the registration
(``mni_to_input_ras``) into the scan's voxels (nearest voxel): every 4 mm of the template's brain, split
into the template's own tissue classes by its T1 intensity (white matter >= 0.95 of the white-matter level,
grey matter 0.55-0.72, CSF below 0.35: 94 %, 73 % and 85 % pure by the MNI tissue maps), its scalp shell and
the background around its head. About 40,000 points: the checks cost a few milliseconds, whatever the
scan's size.

- ``contrast`` (T1): white matter brighter than grey matter brighter than CSF, with margins: T2, PD, FLAIR,
  CT, phantoms and noise fail;
- ``coverage``: the share of the template brain inside the scan's field of view;
- ``registration``: what :mod:`.align` records (convergence of every stage, correlation with the template);
- ``resolution``: in-plane voxel size and slice thickness;
- ``skull``: a skull-stripped scan (its scalp shell is background) is recognised; the verdict is the card's
  (``qc.skull_stripped``: ``pass`` or ``warn``, default ``warn``);
- ``intensity``: brain voxels clipped at the scan's maximum (saturation) or minimum, and signal in the
  background (ghosting, a bright or constant band).

Thresholds are data: :data:`QC_THRESHOLDS`, which a model card may override key by key
(``card["qc"]["thresholds"]``).
"""

from __future__ import annotations

import functools
import time

import numpy as np

from addiagnosis.io.volume import Volume
from addiagnosis.prep.template import registration_template

VERDICTS = ("pass", "warn", "fail")  # in order of severity
CHECKS = ("contrast", "coverage", "registration", "resolution", "skull", "intensity")

# Every threshold of every check (documented in docs/qc.md; measured on the QC test set). A card may override any
# of them: card["qc"]["thresholds"] = {"coverage": {"warn_below": 0.9}, ...}.
QC_THRESHOLDS = {
    # (WM - CSF) / (99th - 1st percentile of the brain): how much T1 contrast the tissue classes show
    "contrast": {"span_fail_below": 0.2, "span_warn_below": 0.35,
                 # where grey matter lies between CSF (0) and white matter (1): synthetic T1 0.47-0.60, FLAIR >= 0.9
                 "gm_fail_outside": [0.2, 0.8], "gm_warn_outside": [0.3, 0.7]},
    # share of the template brain inside the field of view
    "coverage": {"fail_below": 0.85, "warn_below": 0.97},
    # Pearson correlation with the template inside the brain (align's own bound is 0.45)
    # a stage stopped at its iteration cap: "warn" unless the correlation shows the alignment holds
    "registration": {"fail_below": 0.45, "warn_below": 0.5, "not_converged": "warn", "not_converged_ok_above": 0.6},
    # voxel size in mm: the two finest axes (in plane) and the coarsest (slice thickness), for a model whose grid
    # has 2 mm voxels (the bundled one); scaled by the model grid's coarsest spacing / 2 mm for other models
    "resolution": {"inplane_warn_above": 2.5, "inplane_fail_above": 3.5,
                   "slice_warn_above": 4.5, "slice_fail_above": 6.0},
    # scalp shell (9-15 mm outside the brain) relative to white matter: below this the head is skull-stripped
    "skull": {"stripped_below": 0.12, "min_points_inside": 0.3},
    # shares of brain points at the scan's extreme values; background signal relative to white matter
    "intensity": {"clipped_warn_above": 0.02, "clipped_fail_above": 0.1,
                  "background_warn_above": 0.2, "background_fail_above": 0.35,
                  # 99th percentile / median of the background: pure noise (Rayleigh) 2.6, ghosts of a moved head more
                  "ghost_warn_above": 4.0},
}
DEFAULT_SKULL_STRIPPED = "warn"  # card["qc"]["skull_stripped"]: "pass" or "warn"
STEP = 2  # template voxels (2 mm) between sample points: 4 mm


def worst(verdicts) -> str:
    """The most severe of the verdicts (``pass`` when there are none)."""
    return max(verdicts, key=VERDICTS.index, default="pass")


def _reason(check: str, verdict: str, detail: str) -> dict:
    return {"check": check, "verdict": verdict, "detail": detail}


def thresholds(card=None) -> dict:
    """:data:`QC_THRESHOLDS` with the card's overrides (``card["qc"]["thresholds"]``), key by key."""
    out = {k: dict(v) for k, v in QC_THRESHOLDS.items()}
    qc = (card.get("qc") if card is not None else None) or {}
    for check, values in (qc.get("thresholds") or {}).items():
        if check in out and isinstance(values, dict):
            out[check].update(values)
    return out


@functools.lru_cache(maxsize=2)
def _points(source: str):
    """Sample points of the active template (``source``: where it came from; RAS mm, homogeneous 4xN) and their
    classes."""
    from scipy import ndimage

    T = registration_template()
    head = T.head[::STEP, ::STEP, ::STEP]
    brain = T.brain[::STEP, ::STEP, ::STEP]
    near_head = ndimage.binary_dilation(head > 0.02, iterations=3)  # 12 mm around the head
    classes = {
        "wm": brain & (head >= 0.95),
        "gm": brain & (head >= 0.55) & (head < 0.72),
        "csf": brain & (head < 0.35),
        "scalp": ~brain & (head > 0.6),
        "background": ~near_head & (np.indices(head.shape).sum(0) % 2 == 0),  # every other point suffices
    }
    ijk = np.argwhere(brain | classes["scalp"] | classes["background"])
    label = {k: m[tuple(ijk.T)] for k, m in classes.items()}
    label["brain"] = brain[tuple(ijk.T)]
    step = np.diag([STEP, STEP, STEP, 1.0])
    ras = (T.affine @ step) @ np.c_[ijk, np.ones(len(ijk))].T
    return ras, label


def sample(volume: Volume, mni_to_input_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The scan's values at the template's sample points (nearest voxel), whether each point lies inside the
    field of view, and the points' classes."""
    ras, label = _points(registration_template().source)
    ijk = (np.linalg.inv(volume.ijk_to_ras) @ np.asarray(mni_to_input_ras, dtype=np.float64) @ ras)[:3]
    idx = np.rint(ijk).astype(np.int64)
    shape = np.asarray(volume.shape)[:, None]
    inside = np.all((idx >= 0) & (idx < shape), axis=0)
    values = np.full(idx.shape[1], np.nan)
    values[inside] = np.asarray(volume.array)[tuple(idx[:, inside])]
    return values, inside, label


def _grade(value: float, fail: float, warn: float, above: bool = False) -> str:
    """``fail``/``warn``/``pass`` for a value below (or, ``above``, over) the two bounds."""
    bad = (lambda v, t: v > t) if above else (lambda v, t: v < t)
    if not np.isfinite(value) or bad(value, fail):
        return "fail"
    return "warn" if bad(value, warn) else "pass"


def _median(values: np.ndarray, sel: np.ndarray) -> float:
    v = values[sel]
    return float(np.median(v)) if v.size else float("nan")


def check_contrast(m: dict, t: dict) -> dict:
    """T1 ordering WM > GM > CSF: the white-CSF span against the brain's range, and where grey matter lies."""
    span, gm = m["wm_csf_span"], m["gm_position"]
    verdict = worst([_grade(span, t["span_fail_below"], t["span_warn_below"]),
                     "fail" if not t["gm_fail_outside"][0] <= gm <= t["gm_fail_outside"][1] else
                     ("warn" if not t["gm_warn_outside"][0] <= gm <= t["gm_warn_outside"][1] else "pass")])
    if verdict == "pass":
        detail = "T1 contrast: white matter > grey matter > CSF"
    elif not m["wm_csf_span"] > 0:
        detail = "not a T1 contrast: CSF is as bright as white matter or brighter (T2, PD, FLAIR-like or no brain)"
    elif not gm <= t["gm_fail_outside"][1]:
        detail = "not a T1 contrast: grey matter is as bright as white matter or brighter (FLAIR, PD, CT-like)"
    else:
        detail = "weak or no tissue contrast between white matter, grey matter and CSF"
    return _reason("contrast", verdict, f"{detail} (span {span:.2f}, grey matter at {gm:.2f} of CSF..WM)")


def check_coverage(m: dict, t: dict) -> dict:
    cov = m["coverage"]
    verdict = _grade(cov, t["fail_below"], t["warn_below"])
    what = "the whole brain is inside the field of view" if verdict == "pass" else "the field of view cuts the brain"
    return _reason("coverage", verdict, f"{what} ({100 * cov:.0f} % of the template brain inside)")


def check_registration(reg: dict, t: dict) -> dict:
    corr = float(reg.get("correlation", float("nan")))
    verdict = _grade(corr, t["fail_below"], t["warn_below"])
    parts = [f"correlation with the template {corr:.2f}"]
    if not reg.get("converged", True):
        if not corr > t["not_converged_ok_above"]:
            verdict = worst([verdict, t["not_converged"]])
        parts.append("a stage did not converge")
    what = "registration to the template " + ("looks right" if verdict == "pass" else "is doubtful")
    return _reason("registration", verdict, f"{what} ({', '.join(parts)})")


RESOLUTION_REFERENCE_MM = 2.0  # the model grid spacing the resolution thresholds are written for


def grid_scale(card) -> float:
    """How much coarser than 2 mm the model's own grid is (1 for the bundled model or a card without spacing):
    a model that reads 4 mm voxels is not misled by a 4 mm scan."""
    try:
        spacing = (card or {}).get("input_grid", {}).get("spacing")
        return max(1.0, max(float(s) for s in spacing) / RESOLUTION_REFERENCE_MM) if spacing else 1.0
    except (AttributeError, TypeError, ValueError):
        return 1.0


def check_resolution(spacing, t: dict, scale: float = 1.0) -> dict:
    sp = sorted(float(s) for s in spacing)
    inplane, thick = sp[1], sp[2]
    verdict = worst([_grade(inplane, scale * t["inplane_fail_above"], scale * t["inplane_warn_above"], above=True),
                     _grade(thick, scale * t["slice_fail_above"], scale * t["slice_warn_above"], above=True)])
    what = "resolution fine" if verdict == "pass" else "resolution too coarse for the model"
    return _reason("resolution", verdict, f"{what} (in plane {inplane:.2g} mm, slices {thick:.2g} mm)")


def check_skull(m: dict, t: dict, on_stripped: str) -> dict:
    if m["scalp_inside"] < t["min_points_inside"]:
        return _reason("skull", "pass", "scalp outside the field of view: skull stripping not assessed")
    if m["scalp"] < t["stripped_below"]:
        return _reason("skull", on_stripped, f"skull-stripped input (scalp at {m['scalp']:.2f} of white matter); "
                                             "the model was trained on whole heads")
    return _reason("skull", "pass", f"whole head (scalp at {m['scalp']:.2f} of white matter)")


def check_intensity(m: dict, t: dict) -> dict:
    clipped = max(m["at_max"], m["at_min"])
    v_clip = _grade(clipped, t["clipped_fail_above"], t["clipped_warn_above"], above=True)
    v_bg = _grade(m["background"], t["background_fail_above"], t["background_warn_above"], above=True)
    ghost = m["background_tail"]
    v_ghost = "warn" if np.isfinite(ghost) and ghost > t["ghost_warn_above"] else "pass"
    verdict = worst([v_clip, v_bg, v_ghost])
    parts = []
    if v_clip != "pass":
        parts.append(f"{100 * clipped:.0f} % of the brain clipped at the scan's "
                     f"{'maximum (saturated)' if m['at_max'] >= m['at_min'] else 'minimum'}")
    if v_bg != "pass":
        parts.append(f"signal in the background at {m['background']:.2f} of white matter "
                     "(ghosting, a bright band or no background)")
    if v_ghost != "pass":
        parts.append(f"structured signal in the background (99th percentile {ghost:.1f} x its median): "
                     "motion ghosts or other artefacts")
    return _reason("intensity", verdict, "; ".join(parts) if parts else
                   f"intensities plausible (background {m['background']:.2f} of white matter)")


def measure(volume: Volume, mni_to_input_ras: np.ndarray) -> dict:
    """The numbers the template checks grade (plain floats)."""
    values, inside, label = sample(volume, mni_to_input_ras)
    brain_in = label["brain"] & inside
    m = {"coverage": float(brain_in.sum() / max(1, label["brain"].sum()))}
    wm, gm, csf = (_median(values, label[k] & inside) for k in ("wm", "gm", "csf"))
    b = values[brain_in]
    lo, hi = (np.percentile(b, [1, 99]) if b.size else (np.nan, np.nan))
    m["wm_csf_span"] = float((wm - csf) / (hi - lo)) if hi > lo else 0.0
    m["gm_position"] = float((gm - csf) / (wm - csf)) if wm != csf else float("nan")
    seen = values[inside]
    vmin, vmax = (float(seen.min()), float(seen.max())) if seen.size else (0.0, 0.0)
    bg_sel = label["background"] & inside
    bg = float(np.mean(values[bg_sel])) if bg_sel.any() else vmin
    zero = min(vmin, 0.0)  # magnitude images start at 0 (a constant bright background is not "zero"); CT at -1024
    level = wm - zero if wm > zero else float("nan")
    m["background"] = float((bg - zero) / level) if level > 0 else float("nan")
    bg_med, bg_p99 = (np.percentile(values[bg_sel], [50, 99]) - zero) if bg_sel.any() else (0.0, 0.0)
    # noise only has a Rayleigh tail; unassessable when the background is masked to a constant
    m["background_tail"] = float(bg_p99 / bg_med) if level > 0 and bg_med > 0.005 * level else float("nan")
    sc_sel = label["scalp"] & inside
    m["scalp_inside"] = float(sc_sel.sum() / max(1, label["scalp"].sum()))
    m["scalp"] = float((_median(values, sc_sel) - zero) / level) if sc_sel.any() and level > 0 else float("nan")
    m["at_max"] = float(np.mean(b >= vmax)) if b.size and vmax > vmin else 1.0
    m["at_min"] = float(np.mean(b <= vmin)) if b.size and vmax > vmin else 1.0
    m["wm"], m["gm"], m["csf"] = wm, gm, csf
    return {k: (round(v, 4) if np.isfinite(v) else None) if isinstance(v, float) else v for k, v in m.items()}


def _finite(m: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in m.items()}


def assess(volume: Volume, info: dict, card=None) -> dict:
    """The QC record of a scan after preprocessing (``info``: ``Prepared.info``; template checks need
    ``mni_to_input_ras``, i.e. template alignment): ``{"verdict", "reasons": [{"check", "verdict",
    "detail"}], "measures", "seconds"}``, reasons worst first. ``card``: thresholds and the skull-stripped
    verdict (``card["qc"]``)."""
    t0 = time.perf_counter()
    t = thresholds(card)
    qc_card = (card.get("qc") if card is not None else None) or {}
    on_stripped = qc_card.get("skull_stripped", DEFAULT_SKULL_STRIPPED)
    on_stripped = on_stripped if on_stripped in VERDICTS else DEFAULT_SKULL_STRIPPED
    reasons = [check_resolution(volume.spacing, t["resolution"], grid_scale(card))]
    measures = {}
    if info.get("mni_to_input_ras") is not None:
        measures = measure(volume, np.asarray(info["mni_to_input_ras"]))
        m = _finite(measures)
        reasons += [check_contrast(m, t["contrast"]), check_coverage(m, t["coverage"]),
                    check_registration(info.get("registration") or {}, t["registration"]),
                    check_skull(m, t["skull"], on_stripped), check_intensity(m, t["intensity"])]
    reasons.sort(key=lambda r: -VERDICTS.index(r["verdict"]))
    return {"verdict": worst(r["verdict"] for r in reasons), "reasons": reasons, "measures": measures,
            "seconds": round(time.perf_counter() - t0, 4)}


def with_ood(record: dict, ood: dict | None) -> dict:
    """The QC record with the model's out-of-distribution score (``ood``: score, percentile, threshold; None
    for a model without an OOD fit): a score above the card's threshold is a ``warn`` reason."""
    out = dict(record)
    out["reasons"] = list(record.get("reasons", []))
    out["ood"] = ood
    if ood is not None and ood.get("score") is not None and ood["score"] > ood["threshold"]:
        out["reasons"].append(_reason("ood", "warn", f"unlike the model's training scans (distance {ood['score']:.1f}"
                                                     f" above the threshold {ood['threshold']:.1f}, "
                                                     f"the {ood.get('threshold_percentile', 99):g}th percentile "
                                                     "of validation)"))
        out["reasons"].sort(key=lambda r: -VERDICTS.index(r["verdict"]))
    out["verdict"] = worst(r["verdict"] for r in out["reasons"])
    return out


def summary_line(record: dict) -> str:
    """One line for a warn/fail record: ``QC fail: <reason>; <reason>`` (the non-passing reasons)."""
    bad = [r for r in record.get("reasons", []) if r["verdict"] != "pass"]
    head = "not interpretable" if record.get("verdict") == "fail" else "check the input"
    return f"QC {record.get('verdict', 'pass')} ({head}): " + "; ".join(f"{r['check']}: {r['detail']}" for r in bad)


def verdict_reasons(record: dict | None, warnings=()) -> tuple[str, list[str]]:
    """(level, reasons) a front end shows: the record's verdict and the details of its checks that did not pass;
    without a QC record, the result's warnings (the registration's) make a ``warn``."""
    if not record:
        warnings = [str(w) for w in warnings or ()]
        return ("warn" if warnings else "pass"), warnings
    reasons = []
    for reason in record.get("reasons") or []:
        if not isinstance(reason, dict):
            reasons.append(str(reason))
        elif reason.get("verdict") != "pass":
            reasons.append(str(reason.get("detail") or reason.get("check")))
    level = str(record.get("verdict") or "pass")
    return (level if level in ("warn", "fail") else "pass"), reasons


def verdict_line(record: dict | None, warnings=()) -> tuple[str, str]:
    """(level, one line): ``("pass", "")``, ``("warn", "check: <reasons>")`` or
    ``("fail", "not interpretable: <reasons>")``."""
    level, reasons = verdict_reasons(record, warnings)
    if level == "pass":
        return level, ""
    head = "not interpretable: " if level == "fail" else "check: "
    return level, head + ("; ".join(reasons) or "quality control flagged this result")


COLUMNS = ("qc_verdict", "qc_reasons", "ood_score", "ood_percentile")  # batch results.tsv (cohort.table)


def columns(record: dict | None) -> dict:
    """The results-table cells of a record: verdict, the non-passing reasons (``check: detail; ...``), OOD."""
    record = record or {}
    ood = record.get("ood") or {}
    bad = [f"{r['check']}: {r['detail']}" for r in record.get("reasons", []) if r["verdict"] != "pass"]
    return {"qc_verdict": record.get("verdict", ""), "qc_reasons": "; ".join(bad),
            "ood_score": ood.get("score"), "ood_percentile": ood.get("percentile")}
