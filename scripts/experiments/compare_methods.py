"""Every explanation method of a model on one cohort, on all criteria together (issue 11, part 3).

    python scripts/experiments/compare_methods.py COHORT [--package NAME] [--n N] [--out FILE]

COHORT is ``addiagnosis synth`` output (scans with ground-truth masks). Per method: relevance mass accuracy
for the true class (exact and within 2 mm of the mask, input grid, subjects with a mask), share of positive
relevance inside the brain, stability (flip / pad / resample twins and 1 % / 2 % input noise: median and
5th percentile of Pearson r in physical space, :mod:`addiagnosis.research.stability`), input randomisation and
model-parameter randomisation (|r| on the model grid inside the brain), and seconds per map. ``--extra`` adds
``lrp-reference`` variants with a larger stabiliser (``lrp-reference@eps``); ``--alpha`` variants of the
reference rule with another alpha (``lrp-reference-alphaA``, beta = alpha - 1, every layer; issue 19);
``--faithfulness`` deletion/insertion AOPC against random regions (:mod:`addiagnosis.research.faithfulness`).
Writes JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

METHODS = ["lrp-reference-alpha1.25beta0.25", "lrp-reference-alpha1beta0", "lrp-reference", "lrp-alpha1beta0",
           "lrp-epsilon", "lrp-composite", "gradient-x-input", "guided-backprop"]


def register_alpha(alpha: float) -> str:
    """An lrp-reference variant with another alpha (beta = alpha - 1) on every layer, in this process only."""
    from addiagnosis import engine
    from addiagnosis.explain import rules

    name = f"lrp-reference-alpha{alpha:g}"
    rules.register_rule(name, rules.reference_rule_with(alpha))
    rules.register_composite(name, name, name)
    engine.METHODS = (*engine.METHODS, name)
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohort")
    ap.add_argument("--package", default=None)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", type=float, nargs="*", default=[],
                    help="stabiliser values for extra lrp-reference variants")
    ap.add_argument("--alpha", type=float, nargs="*", default=[], help="alphas of extra lrp-reference variants")
    ap.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    ap.add_argument("--faithfulness", action="store_true", help="deletion/insertion AOPC against random regions")
    ap.add_argument("--out", default="compare-methods.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from addiagnosis.engine import Diagnoser
    from addiagnosis.explain.lrp import FastLRP
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.metrics import pearson, relevance_mass_accuracy, share_inside
    from addiagnosis.research import faithfulness, stability
    from addiagnosis.research.dataset import load_items
    from addiagnosis.research.evaluate import _within_mm, random_model_like, read_mask

    d = Diagnoser(args.package)
    methods = (args.methods or METHODS) + [register_alpha(a) for a in args.alpha]
    for m in methods:
        d.resolve_method(m)
    variants = {}
    for eps in args.extra:
        e = FastLRP(d.model)
        e.stabilizer = float(eps)
        e.set_reference(d.engine.reference_input)
        variants[f"lrp-reference@{eps:g}"] = e
    rnd = FastLRP(random_model_like(d.model))
    rnd.set_reference(d.engine.reference_input)
    items = load_items(args.cohort)[: args.n]
    rows, per_subject, timings = [], [], {}
    t0 = time.time()
    for k, it in enumerate(items, 1):
        vol = read_nifti(it.path)
        keep = {}
        res = stability.subject_stability(d, vol, methods, it.label, seed=k, timings=timings, keep=keep)
        prep, tgt = keep["prepared"], keep["target"]
        maps = dict(keep["maps"])
        grid_maps = dict(keep["grid_maps"])
        if variants:  # lrp-reference with another stabiliser: same scan, its own engine
            for name, e in variants.items():
                sub = type(d).__new__(type(d))
                sub.__dict__.update(d.__dict__)
                sub.engine = e
                kv = {}
                res.update({name: stability.subject_stability(sub, vol, ["lrp-reference"], it.label, seed=k,
                                                              timings=timings, keep=kv)["lrp-reference"]})
                maps[name], grid_maps[name] = kv["maps"]["lrp-reference"], kv["grid_maps"]["lrp-reference"]
        region = prep.tensor[0, 0].numpy() != 0
        rc = rnd.forward(prep.tensor)
        row = {"subject": it.subject, "class": it.label, "p": [round(float(v), 4) for v in keep["probabilities"]]}
        mask = None
        if it.mask is not None and Path(it.mask).exists():
            mk, _ = read_mask(it.mask)
            mask = mk if mk.any() else None
        near = _within_mm(mask, vol.spacing, 2.0) if mask is not None else None
        shared = None  # the random-region baseline of this scan, the same for every method
        for name, rel in maps.items():
            r = {"brain_share": share_inside(rel, prep.input_mask)}
            if mask is not None:
                r["mass"] = relevance_mass_accuracy(rel, mask)
                r["mass_2mm"] = relevance_mass_accuracy(rel, near)
            eng_method = name.split("@")[0]  # lrp-reference@eps: the lrp-reference rule
            rr = rnd.relevance(rc, tgt, eng_method).float().numpy()
            r["model_randomisation_r"] = pearson(grid_maps[name][region], rr[region])
            if args.faithfulness:
                f = faithfulness.scan_curves(d.model, prep.tensor[0, 0].numpy(), faithfulness.reference_of(d),
                                             grid_maps[name], tgt, random_curves=shared)
                shared = f["random"]
                r.update({key: f[key] for key in ("aopc_deletion", "aopc_deletion_random", "aopc_insertion",
                                                  "aopc_insertion_random", "deletion_faster_than_random")})
            row[name] = r
        rows.append(row)
        per_subject.append(res)
        print(f"{k}/{len(items)} {it.subject} {it.label} {time.time() - t0:.0f} s", flush=True)
    summary = stability.summarise(per_subject)
    table = {}
    for name in summary:
        vals = [r[name] for r in rows]
        ad = [v for r, v in zip(rows, vals) if r["class"] == "AD" and "mass" in v]
        anym = [v for v in vals if "mass" in v]
        st = summary[name]
        table[name] = {
            "mass_AD": float(np.median([v["mass"] for v in ad])) if ad else None,
            "mass_2mm_AD": float(np.median([v["mass_2mm"] for v in ad])) if ad else None,
            "mass_all_masked": float(np.median([v["mass"] for v in anym])) if anym else None,
            "brain_share": float(np.median([v["brain_share"] for v in vals])),
            "model_randomisation_abs_r": float(np.median([abs(v["model_randomisation_r"]) for v in vals])),
            "input_randomisation_abs": st["input_randomisation"]["median_abs"],
            "seconds_per_map": float(np.median(timings.get(name.split("@")[0], [np.nan]))),
            **({"aopc_deletion_AD": float(np.median([v["aopc_deletion"] for v in ad])),
                "aopc_deletion_random_AD": float(np.median([v["aopc_deletion_random"] for v in ad])),
                "aopc_insertion_AD": float(np.median([v["aopc_insertion"] for v in ad])),
                "aopc_insertion_random_AD": float(np.median([v["aopc_insertion_random"] for v in ad])),
                "deletion_beats_random_AD": float(np.mean([v["deletion_faster_than_random"] for v in ad]))}
               if args.faithfulness and ad else {}),
            **{f"{k}_median": st[k]["median"] for k in st}, **{f"{k}_p5": st[k]["p5"] for k in st},
        }
    out = {"cohort": str(args.cohort), "n": len(rows), "package": d.package.name, "table": table, "rows": rows,
           "stability": summary, "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(out, indent=1))
    cols = ["mass_AD", "mass_2mm_AD", "brain_share", "model_randomisation_abs_r", "input_randomisation_abs",
            "flip_median", "pad_median", "resample_median", "resample_p5", "noise_1pct_median", "noise_1pct_p5",
            "noise_2pct_median", "noise_2pct_p5", "seconds_per_map"]
    if args.faithfulness:
        cols += ["aopc_deletion_AD", "aopc_deletion_random_AD", "aopc_insertion_AD", "aopc_insertion_random_AD",
                 "deletion_beats_random_AD"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, t in table.items():
        lines.append(f"| {name} | " + " | ".join("n/a" if t.get(c) is None else f"{t[c]:.2f}" for c in cols) + " |")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
