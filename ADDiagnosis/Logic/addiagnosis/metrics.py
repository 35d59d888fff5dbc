"""Classification and explanation metrics (plain numpy, no side effects)."""

from __future__ import annotations

import numpy as np


# ------------------------------------------------------------------------------- classification
def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(np.asarray(y_true, int), np.asarray(y_pred, int)):
        cm[t, p] += 1
    return cm


def per_class_recall(cm: np.ndarray) -> list[float | None]:
    out = []
    for i in range(cm.shape[0]):
        n = cm[i].sum()
        out.append(float(cm[i, i] / n) if n else None)
    return out


def balanced_accuracy(y_true, y_pred, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    rec = [r for r in per_class_recall(confusion_matrix(y_true, y_pred, n_classes)) if r is not None]
    return float(np.mean(rec)) if rec else float("nan")


def expected_calibration_error(probs, y_true, n_bins: int = 10) -> float:
    """ECE of the top-class confidence (equal-width bins)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, int)
    if len(y) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = probs.argmax(1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def binary_balanced_accuracy(probs, y_true, neg: int, pos: int) -> float | None:
    """Balanced accuracy of ``pos`` vs ``neg`` among subjects of those two classes, deciding by which of the
    two probabilities is larger (e.g. CN vs AD)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, int)
    sel = (y == neg) | (y == pos)
    if not sel.any() or not (y == neg).any() or not (y == pos).any():
        return None
    pred_pos = probs[sel, pos] > probs[sel, neg]
    true_pos = y[sel] == pos
    return float((pred_pos[true_pos].mean() + (~pred_pos[~true_pos]).mean()) / 2.0)


def classification_report(probs, y_true, class_names: list[str]) -> dict:
    probs = np.asarray(probs, dtype=np.float64).reshape(len(y_true), len(class_names))
    y = np.asarray(y_true, int)
    pred = probs.argmax(1) if len(y) else np.zeros(0, int)
    cm = confusion_matrix(y, pred, len(class_names))
    out = {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "balanced_accuracy": balanced_accuracy(y, pred, len(class_names)),
        "per_class_recall": dict(zip(class_names, per_class_recall(cm))),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class (order of class_names)",
        "expected_calibration_error": expected_calibration_error(probs, y),
    }
    names = [c.upper() for c in class_names]
    if "CN" in names and "AD" in names:
        out["cn_vs_ad_balanced_accuracy"] = binary_balanced_accuracy(probs, y, names.index("CN"),
                                                                     names.index("AD"))
    if len(y):
        out["nll"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
    return out


RISING_TOLERANCE = 0.01  # a probability difference this small between severity bins is not a fall


def severity_trend(severity, probs, class_names: list[str], bins: int = 4) -> dict | None:
    """Does the late-stage probability (the last two classes, e.g. P(LMCI) + P(AD)) rise with disease severity?

    Spearman's rho over scans with a known severity, and the mean late-stage probability per severity
    quantile bin (lowest first); ``rising``: no bin's mean falls below the previous one's by more than
    ``RISING_TOLERANCE`` and the last bin's is above the first's (two bins both near 0, as calibrated
    probabilities of healthy-looking scans are, differ by noise, not by a fall). None without severities
    (fewer than ``2 * bins`` scans with one)."""
    sev = np.array([np.nan if v is None else v for v in severity], dtype=np.float64)
    late = np.asarray(probs, dtype=np.float64).reshape(len(sev), len(class_names))[:, -2:].sum(1)
    ok = np.isfinite(sev)
    if ok.sum() < 2 * bins:
        return None
    sev, late = sev[ok], late[ok]
    order = np.argsort(sev, kind="stable")
    means = [float(late[chunk].mean()) for chunk in np.array_split(order, bins)]
    return {"n": int(ok.sum()), "classes": list(class_names[-2:]), "spearman_rho": spearman(sev, late),
            "mean_by_severity_quantile": means,
            "rising": bool(np.all(np.diff(means) >= -RISING_TOLERANCE) and means[-1] > means[0])}


# ------------------------------------------------------------------------------- explanations
def relevance_mass_accuracy(rel: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the positive relevance inside ``mask`` (Arras et al. 2022)."""
    pos = np.clip(np.asarray(rel, dtype=np.float64), 0, None)
    total = pos.sum()
    if total <= 0 or not mask.any():
        return None
    return float(pos[mask.astype(bool)].sum() / total)


def relevance_rank_accuracy(rel: np.ndarray, mask: np.ndarray) -> float | None:
    """Of the K most relevant voxels (K = mask size), the share inside the mask."""
    m = mask.astype(bool).ravel()
    k = int(m.sum())
    if k == 0:
        return None
    flat = np.asarray(rel, dtype=np.float64).ravel()
    top = np.argpartition(-flat, k - 1)[:k]
    return float(m[top].mean())


def pointing_game(rel: np.ndarray, mask: np.ndarray, tolerance_vox: int = 0) -> bool | None:
    """Whether the most relevant voxel lies in the mask (optionally within ``tolerance_vox`` voxels)."""
    m = mask.astype(bool)
    if not m.any():
        return None
    if tolerance_vox > 0:
        from scipy import ndimage

        m = ndimage.binary_dilation(m, iterations=tolerance_vox)
    idx = np.unravel_index(int(np.argmax(rel)), rel.shape)
    return bool(m[idx])


def share_inside(rel: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of positive relevance inside ``mask`` (e.g. the brain)."""
    return relevance_mass_accuracy(rel, mask)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):  # undefined for a constant input: no correlation
        return 0.0
    r = stats.spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0
