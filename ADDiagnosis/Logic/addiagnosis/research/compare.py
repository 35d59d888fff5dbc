"""Regional group comparison of a cohort's relevance: ``addiagnosis compare RESULTS --by group``.

Reads the results table of ``addiagnosis batch --labels ...`` (``results.tsv``: one row per scan with
``sum_<region>`` and ``density_<region>`` columns), groups the scans that finished by a column (``group`` by
default) and writes, into ``--out`` (default: ``RESULTS/compare``):
- ``regions_by_group.tsv``: per region and group, n, mean and a bootstrap confidence interval of the mean
  (subjects resampled with replacement within the group; percentile interval);
- ``gain.tsv``: per region, mean(case) / mean(control) (the "gain" of Boehle et al. 2019: how much more
  relevance the case group's scans receive there) with a bootstrap interval (both groups resampled);
- ``compare.png`` (group means with intervals, and the gain per region), ``report.html`` and ``compare.json``.

The measure is the region's relevance density (relevance per mL on the model grid) by default, or its sum.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from addiagnosis import RESEARCH_USE
from addiagnosis.errors import InputError


def read_results(path: str | os.PathLike) -> tuple[Path, list[dict]]:
    p = Path(path)
    table = p / "results.tsv" if p.is_dir() else p
    if not table.is_file():
        raise InputError("no results.tsv here (run 'addiagnosis batch --labels ...' first, or 'addiagnosis merge' "
                         "for sharded runs)", p)
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise InputError("the results table has no rows", table)
    return table, rows


def _floats(rows, col) -> np.ndarray:
    out = []
    for r in rows:
        try:
            out.append(float(r.get(col, "")))
        except ValueError:
            out.append(float("nan"))
    return np.asarray(out, dtype=np.float64)


def bootstrap_mean(values: np.ndarray, n_boot: int, rng, level: float = 0.95) -> tuple[float, float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def bootstrap_ratio(case: np.ndarray, control: np.ndarray, n_boot: int, rng,
                    level: float = 0.95) -> tuple[float, float, float]:
    c = case[np.isfinite(case)]
    k = control[np.isfinite(control)]
    if c.size == 0 or k.size == 0 or k.mean() <= 0:
        return float("nan"), float("nan"), float("nan")
    ratio = float(c.mean() / k.mean())
    mc = c[rng.integers(0, c.size, size=(n_boot, c.size))].mean(axis=1)
    mk = k[rng.integers(0, k.size, size=(n_boot, k.size))].mean(axis=1)
    ok = mk > 0
    if not ok.any():
        return ratio, float("nan"), float("nan")
    r = mc[ok] / mk[ok]
    a = (1.0 - level) / 2.0
    return ratio, float(np.quantile(r, a)), float(np.quantile(r, 1.0 - a))


def compare(results: str | os.PathLike, by: str = "group", measure: str = "density", case: str = "AD",
            control: str = "CN", n_boot: int = 2000, seed: int = 0, out: str | os.PathLike | None = None) -> dict:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise InputError(f"--bootstrap {n_boot!r}: the number of bootstrap resamples must be at least 1")
    table, rows = read_results(results)
    header = list(rows[0].keys())
    if by not in header:
        raise InputError(f"the results table has no column {by!r} to group by (it has {', '.join(header[:12])}...)",
                         table)
    if measure not in ("density", "sum"):
        raise InputError(f"--measure {measure!r}: choose density or sum")
    regions = [c[len("sum_"):] for c in header if c.startswith("sum_") and c != "sum_unlabelled"]
    if not regions:
        raise InputError("the results table has no regional columns: run 'addiagnosis batch --labels LABELMAP'",
                         table)
    done = [r for r in rows if r.get("status") == "ok" and r.get(by, "") != ""]
    stages = ["CN", "EMCI", "MCI", "LMCI", "AD"]  # known stages in order of severity, then the rest by name
    groups = sorted({r[by] for r in done}, key=lambda g: (stages.index(g) if g in stages else len(stages), g))
    if not groups:
        raise InputError(f"no finished scans with a value in column {by!r}", table)
    lower = {g.lower(): g for g in groups}
    case_g, control_g = lower.get(case.lower()), lower.get(control.lower())
    rng = np.random.default_rng(seed)
    per_group = {}
    for g in groups:
        sel = [r for r in done if r[by] == g]
        per_group[g] = {reg: _floats(sel, f"{measure}_{reg}") for reg in regions}
    stats = []
    for reg in regions:
        for g in groups:
            mean, lo, hi = bootstrap_mean(per_group[g][reg], n_boot, rng)
            stats.append({"region": reg, "group": g, "n": int(np.isfinite(per_group[g][reg]).sum()),
                          "mean": mean, "ci_low": lo, "ci_high": hi})
    gains = []
    if case_g and control_g:
        for reg in regions:
            ratio, lo, hi = bootstrap_ratio(per_group[case_g][reg], per_group[control_g][reg], n_boot, rng)
            gains.append({"region": reg, "case": case_g, "control": control_g,
                          "case_mean": float(np.nanmean(per_group[case_g][reg])),
                          "control_mean": float(np.nanmean(per_group[control_g][reg])),
                          "gain": ratio, "ci_low": lo, "ci_high": hi})
    out_dir = Path(out) if out else table.parent / "compare"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", out_dir) from None
    _tsv(out_dir / "regions_by_group.tsv", ["region", "group", "n", "mean", "ci_low", "ci_high"], stats)
    if gains:
        _tsv(out_dir / "gain.tsv", ["region", "case", "control", "case_mean", "control_mean", "gain", "ci_low",
                                    "ci_high"], gains)
    doc = {"research_use": RESEARCH_USE, "results": str(table), "by": by, "measure": measure,
           "groups": {g: sum(1 for r in done if r[by] == g) for g in groups}, "regions": regions,
           "bootstrap": {"n": n_boot, "seed": seed, "interval": "95 % percentile"},
           "case": case_g, "control": control_g, "stats": stats, "gain": gains,
           "note": None if gains else f"no gain: groups {case!r} and {control!r} are not both present"}
    _plot(out_dir / "compare.png", regions, groups, stats, gains, measure, by)
    (out_dir / "compare.json").write_text(json.dumps(_clean(doc), indent=1) + "\n")
    _html(out_dir / "report.html", doc)
    doc["out"] = str(out_dir)
    return doc


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _tsv(path: Path, cols, rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else
                            "" if isinstance(v, float) else v) for k, v in r.items()})


def _plot(path: Path, regions, groups, stats, gains, measure, by) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_panels = 2 if gains else 1
    fig, axes = plt.subplots(n_panels, 1, figsize=(max(6.0, 0.9 * len(regions) + 2), 3.4 * n_panels),
                             squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(regions))
    look = {(s["region"], s["group"]): s for s in stats}
    for i, g in enumerate(groups):
        means = np.array([look[(r, g)]["mean"] for r in regions])
        lo = np.array([look[(r, g)]["ci_low"] for r in regions])
        hi = np.array([look[(r, g)]["ci_high"] for r in regions])
        err = np.vstack([np.clip(means - lo, 0, None), np.clip(hi - means, 0, None)])
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, np.nan_to_num(means), width, yerr=np.nan_to_num(err),
               capsize=2, label=f"{g} (n={look[(regions[0], g)]['n']})")
    ax.set_xticks(x, regions, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"relevance {measure}" + (" (per mL)" if measure == "density" else ""))
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8, title=by)
    ax.set_title("Mean regional relevance by group (95 % bootstrap interval)", fontsize=10)
    if gains:
        ax2 = axes[1, 0]
        g = np.array([x_["gain"] for x_ in gains])
        lo = np.array([x_["ci_low"] for x_ in gains])
        hi = np.array([x_["ci_high"] for x_ in gains])
        err = np.vstack([np.clip(np.nan_to_num(g - lo), 0, None), np.clip(np.nan_to_num(hi - g), 0, None)])
        ax2.bar(x, np.nan_to_num(g), 0.6, yerr=err, capsize=2, color="#c0504d")
        ax2.axhline(1.0, color="black", lw=0.8, ls="--")
        ax2.set_xticks(x, regions, rotation=30, ha="right", fontsize=8)
        ax2.set_ylabel(f"gain {gains[0]['case']}/{gains[0]['control']}")
        ax2.set_title(f"Gain: mean {measure} {gains[0]['case']} / {gains[0]['control']}", fontsize=10)
    fig.text(0.5, 0.005, RESEARCH_USE, ha="center", fontsize=7, color="#996600")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _html(path: Path, doc: dict) -> None:
    esc = html.escape

    def num(v):
        return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"

    rows = "".join(f"<tr><td>{esc(s['region'])}</td><td>{esc(s['group'])}</td><td>{s['n']}</td>"
                   f"<td>{num(s['mean'])}</td><td>{num(s['ci_low'])} &ndash; {num(s['ci_high'])}</td></tr>"
                   for s in doc["stats"])
    gain_rows = "".join(f"<tr><td>{esc(g['region'])}</td><td>{num(g['case_mean'])}</td>"
                        f"<td>{num(g['control_mean'])}</td><td><b>{num(g['gain'])}</b></td>"
                        f"<td>{num(g['ci_low'])} &ndash; {num(g['ci_high'])}</td></tr>" for g in doc["gain"])
    groups = ", ".join(f"{esc(k)}: {v}" for k, v in doc["groups"].items())
    gain_html = (f"<h2>Gain {esc(str(doc['case']))} / {esc(str(doc['control']))}</h2><table><tr><th>region</th>"
                 f"<th>{esc(str(doc['case']))} mean</th><th>{esc(str(doc['control']))} mean</th><th>gain</th>"
                 f"<th>95 % interval</th></tr>{gain_rows}</table>" if doc["gain"] else f"<p>{esc(doc['note'])}</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ADDiagnosis group comparison</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}
.ru{{background:#fff3cd;padding:.5em;border:1px solid #e0c060}}</style></head><body>
<p class="ru">{esc(RESEARCH_USE)}</p>
<h1>Regional relevance by {esc(doc['by'])}</h1>
<p>Results: {esc(doc['results'])}<br>Groups (finished scans): {groups}<br>Measure: relevance {esc(doc['measure'])};
bootstrap: {doc['bootstrap']['n']} resamples, {esc(doc['bootstrap']['interval'])} interval.</p>
<img src="compare.png" alt="group means and gain per region" style="max-width:100%">
{gain_html}
<h2>Group means</h2><table><tr><th>region</th><th>group</th><th>n</th><th>mean</th><th>95 % interval</th></tr>
{rows}</table></body></html>
"""
    path.write_text(page)
