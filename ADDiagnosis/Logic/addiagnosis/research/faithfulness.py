"""Per-scan faithfulness of a relevance map: deletion and insertion curves against random regions (issue 19).

Does the map point at what the model uses? The model grid inside the brain (the non-zero network input) is
cut into cubes of ``region`` voxels per side (4: 8 mm at 2 mm). Cubes are ranked by their summed relevance
(ties broken at random, seeded).

- **deletion** (Samek et al. 2017, "MoRF"): the most relevant cubes are replaced, a growing share at a time,
  by the *healthy reference the model uses* (the template prepared like a scan, the root point of the
  reference methods; zeros where a model has none); the explained class's probability is recorded after each
  step. A faithful map makes it fall fast.
- **insertion** (Petsiuk et al. 2018): start from the reference with the scan's brain replaced, and put the
  most relevant cubes of the scan back; the probability should rise fast.
- **random**: the same steps with cubes drawn at random (``n_random`` orders, averaged): the baseline.

Summaries: AOPC (area over the perturbation curve, mean over the steps of p(x) - p(x_k)) for deletion, and
the mean over the steps of p(x_k) - p(reference) for insertion, for the map and for random cubes; a map is
more faithful than random on a scan when its deletion AOPC is larger than random's (the curve falls faster).
Steps: ``steps`` equal shares up to ``max_fraction`` of the brain cubes (default 8 steps up to 20 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

REGION = 4  # voxels per side of a cube on the model grid
STEPS = 8
MAX_FRACTION = 0.2
N_RANDOM = 2


@dataclass
class Settings:
    region: int = REGION
    steps: int = STEPS
    max_fraction: float = MAX_FRACTION
    n_random: int = N_RANDOM
    seed: int = 0
    batch: int = 8

    def describe(self, spacing=None) -> dict:
        size = f"{self.region} voxels" + (f" ({self.region * float(spacing[0]):g} mm)" if spacing else "")
        return {"region": f"cubes of {size} per side inside the brain", "steps": self.steps,
                "max_fraction": self.max_fraction, "n_random": self.n_random,
                "replaced_by": "the model's healthy reference input (zeros where it has none)",
                "score": "probability of the explained class (calibrated model)"}


def cubes(x: np.ndarray, region: int = REGION) -> tuple[np.ndarray, int]:
    """Label of every voxel's cube (-1 outside the brain: zero input, unless the input is mostly non-zero)."""
    inside = x != 0
    if inside.mean() > 0.8 or not inside.any():
        inside = np.ones_like(inside)
    idx = np.indices(x.shape) // region
    n_per = [-(-s // region) for s in x.shape]
    lab = (idx[0] * n_per[1] + idx[1]) * n_per[2] + idx[2]
    used, lab = np.unique(np.where(inside, lab, -1), return_inverse=True)
    lab = lab.reshape(x.shape)
    if used[0] == -1:
        lab = lab - 1  # -1 stays outside, cubes 0..n-1
    return lab, int((used >= 0).sum())


def ranking(relevance: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cubes by summed relevance, largest first (random tie-break)."""
    inside = labels >= 0
    score = np.bincount(labels[inside], weights=np.asarray(relevance, np.float64)[inside], minlength=n)
    return np.lexsort((rng.random(n), -score))


def _counts(n: int, s: Settings) -> list[int]:
    return [max(1, int(round(n * s.max_fraction * k / s.steps))) for k in range(1, s.steps + 1)]


def _images(x, ref, labels, order, counts, insert: bool) -> np.ndarray:
    """One image per step: deletion puts the reference into the first ``count`` cubes of ``order``;
    insertion puts the scan's cubes into the reference (whose brain cubes all hold the reference)."""
    rank = np.full(labels.max() + 2, np.iinfo(np.int64).max)
    rank[order] = np.arange(len(order))
    r = rank[labels]  # position of each voxel's cube in the order (outside: never)
    out = np.empty((len(counts), *x.shape), np.float32)
    base = np.where(labels >= 0, ref, x)  # insertion's start: the brain replaced by the reference
    for k, c in enumerate(counts):
        chosen = r < c
        out[k] = np.where(chosen, x, base) if insert else np.where(chosen, ref, x)
    return out


def _probabilities(model, images: np.ndarray, target: int, batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            logits = model(torch.from_numpy(images[i:i + batch])[:, None])
            out.append(torch.softmax(logits.double(), 1)[:, target].numpy())
    return np.concatenate(out)


def scan_curves(model, x: np.ndarray, ref: np.ndarray | None, relevance: np.ndarray, target: int,
                settings: Settings | None = None, random_curves: dict | None = None) -> dict:
    """Deletion and insertion curves of one scan (model-grid input ``x``, map ``relevance``) against random.

    ``model``: a torch module in eval mode giving logits; ``ref``: the reference input (None: zeros).
    ``random_curves``: a previous result's ``random`` part for the same scan and target (re-used: the random
    baseline does not depend on the map).
    """
    s = settings or Settings()
    x = np.asarray(x, np.float32)
    ref = np.zeros_like(x) if ref is None else np.asarray(ref, np.float32)
    labels, n = cubes(x, s.region)
    counts = _counts(n, s)
    rng = np.random.default_rng([int(s.seed), 7])
    order = ranking(relevance, labels, n, rng)
    ends = _probabilities(model, np.stack([x, np.where(labels >= 0, ref, x)]), target, s.batch)
    p0, p_ref = float(ends[0]), float(ends[1])
    stack = np.concatenate([_images(x, ref, labels, order, counts, False), _images(x, ref, labels, order, counts,
                                                                                   True)])
    probs = _probabilities(model, stack, target, s.batch)
    dele, ins = probs[:s.steps], probs[s.steps:]
    if random_curves is None:
        rd, ri = [], []
        for _ in range(s.n_random):
            o = rng.permutation(n)
            pr = _probabilities(model, np.concatenate([_images(x, ref, labels, o, counts, False),
                                                       _images(x, ref, labels, o, counts, True)]), target, s.batch)
            rd.append(pr[:s.steps])
            ri.append(pr[s.steps:])
        random_curves = {"deletion": np.mean(rd, 0).tolist(), "insertion": np.mean(ri, 0).tolist()}
    rdel, rins = np.asarray(random_curves["deletion"]), np.asarray(random_curves["insertion"])
    out = {"target": int(target), "n_regions": n, "fractions": [c / n for c in counts], "p_scan": p0,
           "p_reference": p_ref, "deletion": dele.tolist(), "insertion": ins.tolist(), "random": random_curves,
           "aopc_deletion": float(np.mean(p0 - dele)), "aopc_deletion_random": float(np.mean(p0 - rdel)),
           "aopc_insertion": float(np.mean(ins - p_ref)), "aopc_insertion_random": float(np.mean(rins - p_ref))}
    out["deletion_faster_than_random"] = out["aopc_deletion"] > out["aopc_deletion_random"]
    out["insertion_faster_than_random"] = out["aopc_insertion"] > out["aopc_insertion_random"]
    return out


def reference_of(diagnoser) -> np.ndarray | None:
    """The healthy reference input a :class:`addiagnosis.engine.Diagnoser`'s model uses (model grid), or None."""
    from addiagnosis.prep.registry import reference_input

    ref = diagnoser.engine.reference_input
    if ref is None:
        ref = reference_input(diagnoser.package.card)
    return None if ref is None else ref[0, 0].float().cpu().numpy()


def of_explanation(diagnoser, g, settings: Settings | None = None, random_curves: dict | None = None) -> dict:
    """Curves for a :class:`addiagnosis.engine.GridExplanation` ``g`` made by ``diagnoser``."""
    return scan_curves(diagnoser.model, g.prepared.tensor[0, 0].numpy(), reference_of(diagnoser), g.relevance,
                       g.target, settings, random_curves)


def report_block(curves: dict, method: str, settings: Settings | None = None, spacing=None) -> dict:
    """What report.json shows (``diagnose --faithfulness``): AOPCs against random, and the curves."""
    s = settings or Settings()
    keys = ("aopc_deletion", "aopc_deletion_random", "aopc_insertion", "aopc_insertion_random",
            "deletion_faster_than_random", "insertion_faster_than_random", "p_scan", "p_reference")
    return {"method": method, **{k: curves[k] for k in keys},
            "curves": {"fractions": [round(f, 4) for f in curves["fractions"]],
                       "deletion": curves["deletion"], "insertion": curves["insertion"],
                       "deletion_random": curves["random"]["deletion"],
                       "insertion_random": curves["random"]["insertion"]},
            "settings": s.describe(spacing)}


def summarise(per_scan: list[dict], labels: list[str]) -> dict:
    """Medians of the AOPCs and the share of scans where the map beats random, overall and per class."""
    def block(rows):
        med = {k: float(np.median([r[k] for r in rows])) for k in
               ("aopc_deletion", "aopc_deletion_random", "aopc_insertion", "aopc_insertion_random")}
        return {"n": len(rows), **{f"median_{k}": v for k, v in med.items()},
                "deletion_faster_than_random": float(np.mean([r["deletion_faster_than_random"] for r in rows])),
                "insertion_faster_than_random": float(np.mean([r["insertion_faster_than_random"] for r in rows]))}

    if not per_scan:
        return {"n": 0}
    out = block(per_scan)
    out["per_class"] = {c: block([r for r, lab in zip(per_scan, labels) if lab == c])
                        for c in dict.fromkeys(labels)}
    return out


class Collector:
    """``evaluate``'s hook: curves of the first ``n`` scans whose true class is not ``skip`` (the first class:
    CN resembles the healthy reference, so deleting towards it tests nothing); ``record`` adds the summary."""

    def __init__(self, diagnoser, n: int = 0, skip: str | None = None, settings: Settings | None = None):
        self.diagnoser, self.n, self.skip = diagnoser, int(n or 0), skip
        self.settings = settings or Settings()
        self.rows: list[dict] = []
        self.labels: list[str] = []

    def add(self, g, label: str) -> None:
        if len(self.rows) < self.n and label != self.skip:
            self.rows.append(of_explanation(self.diagnoser, g, self.settings))
            self.labels.append(label)

    def record(self, result: dict) -> None:
        if self.rows:
            spacing = self.diagnoser.package.card.input_grid.spacing
            result["explanation"]["faithfulness"] = {**summarise(self.rows, self.labels),
                                                     "settings": self.settings.describe(spacing)}


def for_diagnosis(diagnoser, volume, result, settings: Settings | None = None) -> dict:
    """report.json's ``faithfulness`` block for a finished diagnosis (``diagnose --faithfulness``): the scan is
    prepared and explained again (registration is deterministic: the same map) to get the model-grid input."""
    g = diagnoser.explain_on_grid(volume, result.method, result.target)
    s = settings or Settings()
    return report_block(of_explanation(diagnoser, g, s), g.method, s, diagnoser.package.card.input_grid.spacing)
