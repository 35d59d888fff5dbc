"""Out-of-distribution score from the model itself: how far a scan's features lie from the training scans'.

The features are the network's penultimate layer (``dense_1`` before its ReLU: 128 numbers per scan). ``train``
fits a Gaussian to the training split's features - mean and a Ledoit-Wolf shrunk covariance (128 dimensions
from a few hundred scans: the plain covariance would be nearly singular) - and scores the validation split
with the Mahalanobis distance. The package keeps the fit in ``ood.npz`` (mean, precision matrix, the sorted
validation scores), listed with its SHA-256 in the card's ``ood`` entry together with the threshold (a
percentile of the validation scores, default the 99th) and a fingerprint of the weights that make the
features (every tensor but the last layer's, so a temperature folded into ``dense_2`` keeps the fit valid).

A scan's record: ``{"score": distance, "percentile": share of validation scans with a smaller or equal distance
(0-100), "threshold": the card's, "threshold_percentile": which percentile that is}``. A package without an
``ood`` entry has no score (``None``); one whose features fingerprint no longer matches its weights has none
either (with a warning). Numpy only, except :func:`features` (torch, imported when called).
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from addiagnosis.errors import ModelError

OOD_KEY = "ood"  # card["ood"] = {"file", "sha256", "threshold", ...}
OOD_FILE = "ood.npz"
FEATURE_LAYER = "dense_1 output before ReLU (penultimate layer)"
DEFAULT_PERCENTILE = 99.0
HEAD_PREFIX = "dense_2."  # the layer after the features: not part of the fingerprint
log = logging.getLogger("addiagnosis")


def ledoit_wolf(X: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``X`` (n, p) and its shrinkage (0..1): the estimator of
    Ledoit & Wolf (2004) as scikit-learn's ``LedoitWolf`` computes it (checked against it in the tests)."""
    X = np.asarray(X, dtype=np.float64)
    n, p = X.shape
    X = X - X.mean(0)
    emp = X.T @ X / n
    X2 = X ** 2
    trace = X2.sum(0) / n
    mu = trace.sum() / p
    beta_ = float(np.sum(X2.T @ X2))
    delta_ = float(np.sum(emp ** 2))  # sum((X^T X)^2) / n^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace.sum() + p * mu ** 2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else float(beta / delta)
    cov = (1.0 - shrinkage) * emp
    cov.flat[:: p + 1] += shrinkage * mu
    return cov, shrinkage


@dataclass(frozen=True, eq=False)
class OODFit:
    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F): inverse of the shrunk covariance
    val_scores: np.ndarray  # sorted Mahalanobis distances of the validation scans
    threshold: float
    threshold_percentile: float
    shrinkage: float
    features_sha256: str
    n_train: int

    def distances(self, feats: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(np.asarray(feats, dtype=np.float64)) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def score(self, feats: np.ndarray) -> dict:
        """The record of one scan's features (1-D, or (1, F))."""
        s = float(self.distances(feats)[0])
        pct = 100.0 * np.searchsorted(self.val_scores, s, side="right") / max(1, len(self.val_scores))
        return {"score": round(s, 3), "percentile": round(float(pct), 1), "threshold": round(self.threshold, 3),
                "threshold_percentile": self.threshold_percentile}


def fit(train_feats: np.ndarray, val_feats: np.ndarray, features_sha256: str,
        percentile: float = DEFAULT_PERCENTILE) -> OODFit:
    """Mean and shrunk covariance of the training features; threshold at ``percentile`` of the validation
    scans' distances."""
    train_feats = np.asarray(train_feats, dtype=np.float64)
    cov, shrinkage = ledoit_wolf(train_feats)
    part = OODFit(train_feats.mean(0), np.linalg.inv(cov), np.zeros(0), 0.0, float(percentile), shrinkage,
                  features_sha256, len(train_feats))
    val = np.sort(part.distances(val_feats))
    thr = float(np.percentile(val, percentile)) if val.size else float("inf")
    return OODFit(part.mean, part.precision, val, thr, float(percentile), shrinkage, features_sha256,
                  len(train_feats))


def features_sha256(state_dict: dict) -> str:
    """Fingerprint of the weights the features depend on (every tensor but the last layer's), in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        if name.startswith(HEAD_PREFIX):
            continue
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def features(model, X, batch: int = 8) -> np.ndarray:
    """Penultimate-layer features (N, 128) of network inputs ``X`` (N,1,D,H,W), in evaluation mode."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            x = X[i:i + batch].float()
            for conv, bn, mp in model.blocks():
                x = mp(model.relu(bn(conv(x))))
            out.append(model.dense_1(x.reshape(x.size(0), -1)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dense_1.out_features))


def save(ood: OODFit, folder: str | Path) -> dict:
    """Write ``ood.npz`` into ``folder``; returns the card's ``ood`` entry (with the file's SHA-256)."""
    buf = io.BytesIO()
    np.savez(buf, mean=ood.mean, precision=ood.precision, val_scores=ood.val_scores)
    data = buf.getvalue()
    (Path(folder) / OOD_FILE).write_bytes(data)
    return {"file": OOD_FILE, "sha256": hashlib.sha256(data).hexdigest(), "features": FEATURE_LAYER,
            "method": "Mahalanobis distance, Ledoit-Wolf shrunk covariance of the training split",
            "features_sha256": ood.features_sha256, "n_train": ood.n_train, "n_val": int(len(ood.val_scores)),
            "shrinkage": round(ood.shrinkage, 6), "threshold": ood.threshold,
            "threshold_percentile": ood.threshold_percentile}


def load(folder: str | Path, card, state_dict: dict | None = None) -> OODFit | None:
    """The package's fit, or None when its card has no ``ood`` entry (or, given the weights ``state_dict``,
    when the fit belongs to other weights: a warning). A missing or altered file is a :class:`ModelError`."""
    entry = card.get(OOD_KEY) if card is not None else None
    if not isinstance(entry, dict):
        return None
    path = Path(folder) / str(entry.get("file", OOD_FILE))
    if not path.is_file():
        raise ModelError("the model package's OOD file is missing", path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != str(entry.get("sha256", "")).lower():
        raise ModelError("the model package's OOD file does not match its SHA-256 in the card", path)
    if state_dict is not None and features_sha256(state_dict) != entry.get("features_sha256"):
        log.warning("addiagnosis: the model package's OOD fit belongs to other weights: no OOD score (%s)", path)
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            mean, precision, val = (np.asarray(z[k], dtype=np.float64) for k in ("mean", "precision", "val_scores"))
        threshold = float(entry["threshold"])
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise ModelError(f"the model package's OOD file cannot be read ({exc})", path) from None
    return OODFit(mean, precision, np.sort(val), threshold, float(entry.get("threshold_percentile", 99.0)),
                  float(entry.get("shrinkage", 0.0)), str(entry.get("features_sha256", "")),
                  int(entry.get("n_train", 0)))
