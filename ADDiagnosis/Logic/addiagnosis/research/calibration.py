"""Calibrated probabilities and prediction sets (issue 19).

**Temperature scaling** (Guo et al. 2017): one number T > 0 fitted on the validation split by minimising the
negative log-likelihood of ``softmax(logits / T)``; it never changes which class is predicted. T is then
*folded into the last dense layer* (``dense_2.weight / T``, ``dense_2.bias / T``), so every front end gets
calibrated probabilities from the weights alone. Relevance maps do not change: every LRP rule starts from a
one-hot relevance at the output and passes it down as *ratios* of contributions (z_jk / z_k), which a common
factor on the last layer's weights and bias cancels; gradient-x-input and guided backprop start from the same
one-hot gradient, so their maps are multiplied by exactly 1/T (same map after normalisation)
(``Testing/unit/test_calibration.py`` checks every method).

**Split-conformal prediction sets** (LAC, Sadinle et al. 2019; Angelopoulos & Bates 2021): on a calibration
split the score of a scan is ``1 - p(true class)``; the threshold q is the ceil((n+1) c)-th smallest score
(c the coverage, default 0.9). A new scan's set holds every class with ``1 - p <= q``: under exchangeability
it contains the true class with probability >= c. The set rule itself lives in
:func:`addiagnosis.models.card.prediction_set` (the engine uses it; it is torch- and numpy-free).
"""

from __future__ import annotations

import math

import numpy as np

from addiagnosis.errors import AddiagnosisError
from addiagnosis.metrics import expected_calibration_error
from addiagnosis.models.card import prediction_set

DEFAULT_COVERAGE = 0.9
COVERAGES = (0.8, 0.9, 0.95)  # thresholds stored in the card; DEFAULT_COVERAGE is the one shown
LAST_LAYER = "dense_2"


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits, labels, temperature: float = 1.0) -> float:
    p = softmax(logits, temperature)
    y = np.asarray(labels, int)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None))))


def fit_temperature(logits, labels, bounds=(0.05, 20.0)) -> float:
    """The T minimising the NLL of ``softmax(logits / T)`` (bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) < 2:
        raise AddiagnosisError("need at least two scans to fit a temperature")
    res = minimize_scalar(lambda t: nll(logits, labels, math.exp(t)), bounds=tuple(math.log(b) for b in bounds),
                          method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def fold_temperature(state_dict: dict, temperature: float, layer: str = LAST_LAYER) -> dict:
    """A copy of ``state_dict`` whose logits are divided by ``temperature`` (the last dense layer scaled)."""
    if not temperature > 0:
        raise AddiagnosisError(f"temperature must be positive (got {temperature})")
    out = dict(state_dict)
    for key in (f"{layer}.weight", f"{layer}.bias"):
        out[key] = state_dict[key] / float(temperature)
    return out


# ------------------------------------------------------------------------------------------ conformal
def conformal_threshold(probs, labels, coverage: float = DEFAULT_COVERAGE) -> float:
    """Split-conformal threshold q on the scores ``1 - p(true class)`` of a calibration split."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, int)
    if not 0 < coverage < 1:
        raise AddiagnosisError(f"coverage must lie between 0 and 1 (got {coverage})")
    n = len(y)
    k = math.ceil((n + 1) * coverage)
    if n == 0 or k > n:  # too few scans for this coverage: every class is in every set
        return 1.0
    scores = np.sort(1.0 - probs[np.arange(n), y])
    return float(scores[k - 1])


def prediction_sets(probs, threshold: float) -> list[list[int]]:
    """The set (class indices, in class order) of every row of ``probs``."""
    return [prediction_set(row, threshold) for row in np.asarray(probs, dtype=np.float64).tolist()]


def set_metrics(probs, labels, threshold: float) -> dict:
    """Coverage (share of sets holding the true class), mean set size and how many sets have each size."""
    y = np.asarray(labels, int)
    sets = prediction_sets(probs, threshold)
    sizes = np.array([len(s) for s in sets])
    n_classes = np.asarray(probs).shape[-1] if len(y) else 0
    return {"n": int(len(y)),
            "coverage": float(np.mean([t in s for t, s in zip(y.tolist(), sets)])) if len(y) else None,
            "mean_set_size": float(sizes.mean()) if len(y) else None,
            "set_sizes": {str(k): int((sizes == k).sum()) for k in range(1, n_classes + 1)}}


# ------------------------------------------------------------------------------------------ the card
def calibration_block(temperature: float, val_logits, val_labels, fitted_on: str) -> dict:
    """The card's ``calibration`` object (before/after on the split the temperature was fitted on)."""
    p0, p1 = softmax(val_logits), softmax(val_logits, temperature)
    return {"method": "temperature scaling", "temperature": round(float(temperature), 6),
            "folded_into": f"{LAST_LAYER} (weight and bias divided by the temperature): the weights give "
                           "calibrated probabilities, relevance maps are unchanged",
            "fitted_on": fitted_on, "n": int(len(val_labels)),
            "nll_before": nll(val_logits, val_labels), "nll_after": nll(val_logits, val_labels, temperature),
            "ece_before": expected_calibration_error(p0, val_labels),
            "ece_after": expected_calibration_error(p1, val_labels)}


def conformal_block(cal_probs, cal_labels, calibrated_on: str, coverages=COVERAGES,
                    default: float = DEFAULT_COVERAGE) -> dict:
    """The card's ``conformal`` object: thresholds for several coverages, ``default`` the one shown."""
    thresholds = {f"{c:g}": conformal_threshold(cal_probs, cal_labels, c) for c in coverages}
    q = conformal_threshold(cal_probs, cal_labels, default)
    return {"method": "split conformal (score 1 - p(true class); a class is in the set when 1 - p <= "
                      "threshold; an empty set is given the most probable class)",
            "coverage": float(default), "threshold": q, "thresholds": thresholds,
            "calibrated_on": calibrated_on, "n": int(len(cal_labels)),
            "on_calibration_split": set_metrics(cal_probs, cal_labels, q)}


def cohort_figures(logits, labels, temperature: float, threshold: float) -> dict:
    """ECE before/after calibration, coverage and mean set size on one test cohort (logits of the unfolded
    model; the folded model's are ``logits / temperature``)."""
    p0, p1 = softmax(logits), softmax(logits, temperature)
    return {"n": int(len(labels)), "ece_before": expected_calibration_error(p0, labels),
            "ece_after": expected_calibration_error(p1, labels), "nll_before": nll(logits, labels),
            "nll_after": nll(logits, labels, temperature), **set_metrics(p1, labels, threshold)}


def calibrate(val_logits, val_labels, cal_logits, cal_labels, fitted_on: str, calibrated_on: str,
              coverage: float = DEFAULT_COVERAGE) -> tuple[float, dict, dict]:
    """Temperature from the validation split, conformal thresholds from the calibration split (its logits
    scaled by that temperature). Returns (T, calibration block, conformal block)."""
    t = fit_temperature(val_logits, val_labels)
    cal_probs = softmax(cal_logits, t)
    return t, calibration_block(t, val_logits, val_labels, fitted_on), \
        conformal_block(cal_probs, cal_labels, calibrated_on, default=coverage)


def logits_of(model, X, batch: int = 8) -> np.ndarray:
    """Logits (float64, N x C) of a torch model on float16/32 inputs (N,1,D,H,W)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            out.append(model(X[i:i + batch].float()).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dense_2.out_features))


# ------------------------------------------------------------------------------------------ packages
def calibrate_trained(model, d, card: dict, log=print, coverage: float = DEFAULT_COVERAGE) -> dict:
    """``train``'s last step: temperature from the validation split, conformal thresholds from the held-out
    test split (the validation split when there is none), both blocks into ``card``; returns the state_dict
    with the temperature folded in. ``d``: :class:`addiagnosis.research.train.TrainingData`."""
    cal_key = "test" if len(d.idx.get("test") or []) >= 2 else "val"
    lg = {k: logits_of(model, d.X[d.idx[k]]) for k in {"val", cal_key}}
    ys = {k: d.y[d.idx[k]].numpy() for k in lg}
    t, card["calibration"], card["conformal"] = calibrate(
        lg["val"], ys["val"], lg[cal_key], ys[cal_key],
        fitted_on=f"validation split ({d.subjects['val']} subjects)",
        calibrated_on=(f"held-out test split ({d.subjects['test']} subjects)" if cal_key == "test" else
                       f"validation split ({d.subjects['val']} subjects; no test split: the temperature was "
                       "fitted on the same scans, so the coverage may be optimistic)"),
        coverage=coverage)
    log(f"calibration: temperature {t:.3f} (validation NLL {card['calibration']['nll_before']:.3f} -> "
        f"{card['calibration']['nll_after']:.3f}); {coverage:.0%} prediction sets: threshold "
        f"{card['conformal']['threshold']:.3f}, mean set size "
        f"{card['conformal']['on_calibration_split']['mean_set_size']:.2f} on the {cal_key} split")
    return fold_temperature(model.state_dict(), t)
