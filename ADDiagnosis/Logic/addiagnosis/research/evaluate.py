"""Evaluation: ``addiagnosis evaluate PACKAGE DATA [--out DIR]``.

Classification metrics (accuracy, balanced accuracy, per-class recall, confusion matrix, expected
calibration error, CN-vs-AD balanced accuracy) on every scan of DATA (same layouts as ``train``), and, where
DATA has ground-truth atrophy masks (``addiagnosis synth`` output), explanation metrics on the input grid:
- relevance mass accuracy: share of the positive relevance inside the mask (also within 2 mm and 4 mm of
  it: one and two model-grid voxels, because a CNN sees a widened ventricle at the moved tissue boundary,
  which lies just outside the tissue that changed);
- relevance rank accuracy: of the K most relevant voxels (K = mask size), the share inside the mask;
- pointing game: the most relevant voxel lies in the mask;
- share of positive relevance inside the brain (template brain mask mapped onto the scan);
- model parameter randomisation check (Adebayo et al. 2018): relevance maps of a network with the same
  architecture but random weights must differ from the trained ones (Pearson and Spearman correlation on
  the model grid, inside the voxels where the input is non-zero; the target is |r| < 0.3).
Relevance is computed for the subject's true class (``--target true``, default) or the predicted one.
Writes ``metrics.json``, ``subjects.tsv``, ``confusion.png``, ``example.png`` and ``report.html``.
"""

from __future__ import annotations

import csv
import html
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from addiagnosis.errors import AddiagnosisError
from addiagnosis.metrics import (
    classification_report,
    pearson,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    severity_trend,
    share_inside,
    spearman,
)
from addiagnosis.models.card import prediction_set
from addiagnosis.research.dataset import Item, load_items


def _median(vals):
    vals = [v for v in vals if v is not None]
    return float(np.median(vals)) if vals else None


def _mean(vals):
    vals = [float(v) for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _within_mm(mask: np.ndarray, spacing, mm: float) -> np.ndarray:
    """Voxels within ``mm`` of the mask (tolerance of one or two model-grid voxels, 2 mm each)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing]) <= mm


def read_mask(path) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth mask (label map: the scan reader refuses those on purpose) as bool + affine."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise AddiagnosisError(f"unreadable mask ({' '.join(str(exc).split())[:100]})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data > 0.5, img.affine


def random_model_like(model, seed: int = 12345):
    """Same architecture, freshly initialised weights (the randomisation check)."""
    from addiagnosis.models.network import ClassificationModel3D

    torch.manual_seed(seed)
    rnd = ClassificationModel3D(model.input_shape, n_classes=model.dense_2.out_features)
    return rnd.eval()


def randomised_diagnoser(diagnoser, method: str):
    """A Diagnoser of the same package with random weights, with the same root point (reference input)."""
    from addiagnosis.engine import Diagnoser

    randomised = Diagnoser(diagnoser.package, model=random_model_like(diagnoser.model))
    randomised.resolve_method(method)
    return randomised


@dataclass
class EvaluateOptions:
    """What :func:`evaluate` can be told besides the package, the data and where the report goes."""

    method: str | None = "auto"  # "auto": the card's recommended method
    target: str = "true"  # explain the subject's true class, or "predicted"
    limit: int | None = None  # only the first N scans
    randomisation_n: int = 10  # model randomisation check on the first N scans not of the first class
    threads: int = 2  # torch threads
    stability_n: int = 0  # twins, noise and input randomisation on the first N scans (stability.py)
    faithfulness_n: int = 0  # deletion/insertion curves on the first N scans not of the first class (faithfulness.py)


def evaluate(package, data, out=None, options: EvaluateOptions | None = None, *, log=print, **overrides) -> dict:
    """Score ``package`` on every scan of ``data``; write the report to ``out`` if given; returns the metrics.
    ``overrides`` replace fields of ``options``."""
    from addiagnosis.engine import Diagnoser
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.models.package import ModelPackage, find_package
    from addiagnosis.research.faithfulness import Collector

    opts = replace(options or EvaluateOptions(), **overrides)
    torch.set_num_threads(max(1, int(opts.threads)))
    pkg = package if isinstance(package, ModelPackage) else find_package(package)
    classes = pkg.class_names
    diagnoser = Diagnoser(pkg)
    method, target = diagnoser.resolve_method(opts.method), opts.target  # "auto": the card's recommended method
    randomised = randomised_diagnoser(diagnoser, method) if opts.randomisation_n > 0 else None
    items = load_items(data)
    if opts.limit:
        items = items[: int(opts.limit)]
    unknown = sorted({it.label for it in items} - set(classes))
    if unknown:
        raise AddiagnosisError(f"the data has classes the model does not know: {', '.join(unknown)}")
    t0 = time.time()
    rows, probs, ys, rand = [], [], [], []
    faith = Collector(diagnoser, opts.faithfulness_n, classes[0])
    example = None
    for k, it in enumerate(items, 1):
        vol = read_nifti(it.path)
        y = classes.index(it.label)
        g = diagnoser.explain_on_grid(vol, method, y if target == "true" else None)
        rel = g.on_input()
        row, mask = scan_row(it, vol, g, rel, classes)
        if mask is not None and example is None and it.label == classes[-1]:
            example = (vol, rel, mask, it.subject, classes[g.predicted])
        if randomised is not None and len(rand) < opts.randomisation_n and it.label != classes[0]:
            rand.append(randomisation_check(g, randomised.explain_tensor(g.prepared.tensor, method, g.target)))
        faith.add(g, it.label)
        rows.append(row)
        probs.append(g.probabilities)
        ys.append(y)
        if k % 10 == 0 or k == len(items):
            el = time.time() - t0
            log(f"evaluate: {k}/{len(items)} scans, {el:.0f} s, ETA {el / k * (len(items) - k):.0f} s")
    corr = [r["registration_correlation"] for r in rows if r.get("registration_correlation") is not None]
    result = {"package": pkg.name, "package_version": pkg.version, "data": str(data), "n_scans": len(rows),
              "classification": classification_report(np.array(probs), np.array(ys), classes),
              "severity_trend": severity_trend([it.severity for it in items], probs, classes),
              "explanation": explanation_summary(rows, classes, method, target, rand),
              "registration": {"median_correlation": _median(corr), "min_correlation": min(corr, default=None)},
              "prediction_sets": score_prediction_sets(rows, probs, ys, pkg.card.conformal, classes),
              "seconds": round(time.time() - t0, 1)}
    if opts.stability_n > 0:  # twins, noise and input randomisation (research.stability) on the first N scans
        from addiagnosis.research.stability import evaluate_stability

        result["explanation"]["stability"] = evaluate_stability(diagnoser, items, [method], target,
                                                                opts.stability_n, log=log)
    faith.record(result)
    if out is not None:
        write_report(result, rows, Path(out), classes, example)
        log(f"evaluate: wrote {out}/metrics.json, subjects.tsv, confusion.png, report.html")
    return result


def scan_row(it: Item, vol, g, rel: np.ndarray, classes: list[str]) -> tuple[dict, np.ndarray | None]:
    """One line of subjects.tsv for a scan explained as ``g`` (relevance ``rel`` on its grid); its mask, if any."""
    p = g.probabilities
    y = classes.index(it.label)
    row = {"subject": it.subject, "class": it.label, "severity": it.severity, "predicted": classes[g.predicted],
           "p_true": float(p[y]), "target": classes[g.target],
           "registration_correlation": (g.prepared.info.get("registration") or {}).get("correlation")}
    for c, v in zip(classes, p):
        row[f"p_{c}"] = float(v)
    if g.prepared.input_mask is not None:
        row["brain_share"] = share_inside(rel, g.prepared.input_mask)
    if it.mask is None or not it.mask.exists():
        return row, None
    mask, mask_aff = read_mask(it.mask)
    if mask.shape != rel.shape or not np.allclose(mask_aff, vol.ijk_to_ras, atol=1e-3):
        raise AddiagnosisError(f"mask grid {mask.shape} differs from the scan grid {rel.shape}", it.mask)
    if not mask.any():
        return row, None
    row["mask_voxels"] = int(mask.sum())
    row["mass_accuracy"] = relevance_mass_accuracy(rel, mask)
    near2, near4 = _within_mm(mask, vol.spacing, 2.0), _within_mm(mask, vol.spacing, 4.0)
    row["mass_accuracy_2mm"] = relevance_mass_accuracy(rel, near2)
    row["mass_accuracy_4mm"] = relevance_mass_accuracy(rel, near4)
    row["pointing_game_2mm"] = pointing_game(rel, near2)
    row["rank_accuracy"] = relevance_rank_accuracy(rel, mask)
    row["pointing_game"] = pointing_game(rel, mask)
    return row, mask


def score_prediction_sets(rows: list[dict], probs: list, ys: list, conformal, classes) -> dict | None:
    """With the card's ``conformal`` block: every subject's prediction set (class names, comma-separated, in
    ``rows``) and whether it holds the true class; returns the cohort's coverage (share of sets holding the
    true class), mean set size and set-size counts. None (and no columns) for a model without the block."""
    if conformal is None or not len(ys):
        return None
    from addiagnosis.research.calibration import set_metrics

    for row, p, y in zip(rows, probs, ys):
        members = prediction_set(p, conformal.threshold)
        row["prediction_set"] = ",".join(classes[i] for i in members)
        row["set_covers_true"] = int(y in members)
    return {"target_coverage": conformal.coverage, "threshold": conformal.threshold,
            **set_metrics(np.asarray(probs), np.asarray(ys), conformal.threshold)}


def randomisation_check(trained, randomised) -> tuple[float, float, float]:
    """(Pearson r, Spearman rho of |R|, Pearson r on the whole grid) of two model-grid relevance maps.

    Inside the voxels where the input is not zero (skull-stripped brain): the zeros outside are identical in
    both maps by construction and would inflate any correlation.
    """
    a, b = trained.relevance, randomised.relevance
    region = trained.prepared.tensor[0, 0].numpy() != 0
    if region.sum() < 0.05 * region.size:
        region = np.ones_like(region)
    return pearson(a[region], b[region]), spearman(np.abs(a[region]), np.abs(b[region])), pearson(a, b)


def explanation_summary(rows: list[dict], classes: list[str], method: str, target: str, rand: list) -> dict:
    """Explanation metrics per class and overall, and the randomisation check (``rand``: its samples)."""
    expl = {"method": method, "target": target, "per_class": {}}
    for c in classes:
        sel = [r for r in rows if r["class"] == c]
        if not sel:
            continue
        pc = {"n": len(sel), "median_brain_share": _median([r.get("brain_share") for r in sel])}
        if any("mass_accuracy" in r for r in sel):
            pc.update({
                "median_mass_accuracy": _median([r.get("mass_accuracy") for r in sel]),
                "median_rank_accuracy": _median([r.get("rank_accuracy") for r in sel]),
                "median_mass_accuracy_within_2mm": _median([r.get("mass_accuracy_2mm") for r in sel]),
                "median_mass_accuracy_within_4mm": _median([r.get("mass_accuracy_4mm") for r in sel]),
                "pointing_game_within_2mm": _mean([r.get("pointing_game_2mm") for r in sel
                                                   if "pointing_game_2mm" in r]),
                "pointing_game": _mean([r.get("pointing_game") for r in sel if "pointing_game" in r]),
            })
        expl["per_class"][c] = pc
    expl["median_brain_share"] = _median([r.get("brain_share") for r in rows])
    expl["min_brain_share"] = min([r["brain_share"] for r in rows if r.get("brain_share") is not None],
                                  default=None)
    with_mask = [r for r in rows if "mass_accuracy" in r]
    expl["median_mass_accuracy_all_masked"] = _median([r["mass_accuracy"] for r in with_mask])
    if rand:
        rand_r, rand_rho, rand_full = (list(v) for v in zip(*rand))
        expl["randomisation"] = {"n": len(rand_r), "pearson_r": [round(v, 4) for v in rand_r],
                                 "median_abs_pearson_r": float(np.median(np.abs(rand_r))),
                                 "median_spearman_abs": float(np.median(np.abs(rand_rho))),
                                 "median_abs_pearson_r_whole_grid": float(np.median(np.abs(rand_full))),
                                 "region": "voxels where the network input is non-zero (the brain)",
                                 "model": "same architecture, freshly initialised weights (seed 12345)"}
    return expl


# ------------------------------------------------------------------------------------------ report
def _confusion_png(result: dict, classes: list[str], path: Path) -> None:
    """The confusion matrix as a figure, titled with the balanced accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result["classification"]["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"balanced accuracy {result['classification']['balanced_accuracy']:.2f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(result: dict, rows: list[dict], out: Path, classes: list[str], example=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "subjects.tsv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys, delimiter="\t", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    _confusion_png(result, classes, out / "confusion.png")
    if example is not None:
        _example_png(example, out / "example.png")
    clf, expl = result["classification"], result["explanation"]
    recall = "".join(f"<tr><td>{html.escape(c)}</td><td>{'' if v is None else f'{v:.2f}'}</td></tr>"
                     for c, v in clf["per_class_recall"].items())
    per = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{v['n']}</td><td>{_f(v.get('median_mass_accuracy'))}</td>"
        f"<td>{_f(v.get('median_rank_accuracy'))}</td><td>{_f(v.get('pointing_game'))}</td>"
        f"<td>{_f(v.get('median_brain_share'))}</td></tr>" for c, v in expl["per_class"].items())
    rnd = expl.get("randomisation") or {}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ADDiagnosis evaluation</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px}}</style></head><body>
<h1>Evaluation of {html.escape(result['package'])} {html.escape(str(result['package_version']))}</h1>
<p><b>Research use only: not a medical device.</b> Data: {html.escape(result['data'])},
{result['n_scans']} scans.</p>
<h2>Classification</h2>
<p>accuracy {_f(clf['accuracy'])}, balanced accuracy {_f(clf['balanced_accuracy'])},
CN vs AD balanced accuracy {_f(clf.get('cn_vs_ad_balanced_accuracy'))},
expected calibration error {_f(clf['expected_calibration_error'])}</p>
{_sets_html(result.get('prediction_sets'))}
<table><tr><th>class</th><th>recall</th></tr>{recall}</table>
{_trend_html(result.get("severity_trend"))}
<img src="confusion.png" alt="confusion matrix">
<h2>Explanations ({html.escape(expl['method'])}, target: {html.escape(expl['target'])} class)</h2>
<table><tr><th>class</th><th>n</th><th>median mass accuracy</th><th>median rank accuracy</th>
<th>pointing game</th><th>median share in brain</th></tr>{per}</table>
<p>Randomisation check: median |Pearson r| between trained and random-weight maps
{_f(rnd.get('median_abs_pearson_r'))} (n={rnd.get('n', 0)}).</p>
{'<img src="example.png" alt="example relevance">' if example is not None else ''}
</body></html>
"""
    (out / "report.html").write_text(page)


def _sets_html(sets) -> str:
    if not sets:
        return "<p>No prediction sets: the model card has no conformal block.</p>"
    return (f"<p>{sets['target_coverage']:.0%} prediction sets: coverage {_f(sets['coverage'])} "
            f"(share of sets holding the true class), mean set size {_f(sets['mean_set_size'])}</p>")


def _trend_html(trend) -> str:
    if not trend:
        return ""
    means = ", ".join(f"{v:.2f}" for v in trend["mean_by_severity_quantile"])
    return (f"<p>P({html.escape(' + P('.join(trend['classes']))}) against disease severity: Spearman rho "
            f"{trend['spearman_rho']:.2f}; mean by severity quartile (lowest first) {means}"
            f"{'' if trend['rising'] else ' (not rising throughout)'}.</p>")


def _f(v):
    return "n/a" if v is None else f"{float(v):.3f}"


def _example_png(example, path: Path) -> None:
    import matplotlib.pyplot as plt

    vol, rel, mask, sid, pred = example
    import nibabel as nib

    ornt = nib.orientations.io_orientation(vol.ijk_to_ras)

    def canon(a):
        return nib.orientations.apply_orientation(a, ornt)

    img, r, m = canon(vol.array), canon(rel), canon(mask.astype(np.float32))
    idx = np.argwhere(m > 0.5)
    c = idx.mean(0).astype(int) if len(idx) else np.asarray(img.shape) // 2
    pos = np.clip(r, 0, None)
    vmax = float(np.percentile(pos[pos > 0], 99.5)) if (pos > 0).any() else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), dpi=90)
    for ax, (a, b, mm) in zip(axes, [(img[c[0]], pos[c[0]], m[c[0]]), (img[:, c[1]], pos[:, c[1]], m[:, c[1]]),
                                     (img[:, :, c[2]], pos[:, :, c[2]], m[:, :, c[2]])]):
        ax.imshow(a.T, origin="lower", cmap="gray")
        ax.imshow(np.ma.masked_less_equal(b.T, vmax * 0.05), origin="lower", cmap="hot", vmin=0, vmax=vmax,
                  alpha=0.7)
        ax.contour(mm.T, [0.5], colors="cyan", linewidths=0.8)
        ax.axis("off")
    fig.suptitle(f"{sid}: positive relevance (hot) and ground-truth atrophy mask (cyan); predicted {pred}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary(result: dict) -> dict:
    """The figures a model card records (``--record-in-card``)."""
    clf, expl = result["classification"], result["explanation"]
    last = list(expl["per_class"])[-1] if expl["per_class"] else None
    pc_last = expl["per_class"].get(last) or {}
    rand = expl.get("randomisation") or {}
    return {"data": result["data"], "n_scans": result["n_scans"], "accuracy": clf["accuracy"],
            "balanced_accuracy": clf["balanced_accuracy"],
            "cn_vs_ad_balanced_accuracy": clf.get("cn_vs_ad_balanced_accuracy"),
            "per_class_recall": clf["per_class_recall"], "confusion_matrix": clf["confusion_matrix"],
            "expected_calibration_error": clf["expected_calibration_error"],
            **({"prediction_sets": result["prediction_sets"]} if result.get("prediction_sets") else {}),
            "explanation_method": expl["method"],
            f"median_mass_accuracy_{last}": pc_last.get("median_mass_accuracy"),
            f"median_rank_accuracy_{last}": pc_last.get("median_rank_accuracy"),
            f"pointing_game_{last}": pc_last.get("pointing_game"),
            "median_brain_share": expl["median_brain_share"],
            "min_brain_share": expl.get("min_brain_share"),
            "randomisation_median_abs_pearson_r": rand.get("median_abs_pearson_r"),
            "registration_median_correlation": result["registration"]["median_correlation"],
            f"explanation_{last}": pc_last,
            "explanation_by_stage_median_mass_accuracy": {c: v.get("median_mass_accuracy")
                                                          for c, v in expl["per_class"].items()},
            "randomisation": rand, "severity_trend": result.get("severity_trend"),
            **({"stability": expl["stability"]} if expl.get("stability") else {}),
            **({"faithfulness": expl["faithfulness"]} if expl.get("faithfulness") else {})}
