"""Deletion / insertion AOPC of every explanation method on the AD scans of the test cohorts (issue 19).

    python scripts/experiments/faithfulness_methods.py WORK [--package DIR] [--alpha 1.25 1.5] [--out FILE]

WORK is the folder of scripts/experiments/calibrate_bundled.py: the test cohorts ``at`` (generator A) and
``bt`` (generator B) and the preprocessed network inputs in ``WORK/cache`` (float16, as ``train`` caches
them), so no scan is registered again. For every AD scan and method: the map of the AD class on the model
grid, its deletion and insertion curves against random cubes (:mod:`addiagnosis.research.faithfulness`,
default settings; the random baseline is shared by the methods of a scan). Writes JSON and a Markdown table.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

COHORTS = {"A-default": "at", "B-erode": "bt"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--package", default=str(ROOT / "ADDiagnosis/Resources/Models/addiagnosis-synthetic-demo"))
    ap.add_argument("--alpha", type=float, nargs="*", default=[])
    ap.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="AD scans per cohort")
    ap.add_argument("--out", type=Path, default=Path("faithfulness-methods.json"))
    a = ap.parse_args(argv)
    import torch
    from compare_methods import METHODS, register_alpha

    from addiagnosis.engine import Diagnoser
    from addiagnosis.research import faithfulness
    from addiagnosis.research.dataset import load_items
    from addiagnosis.research.train import preprocess_all

    torch.set_num_threads(2)
    d = Diagnoser(a.package)
    methods = (a.methods or METHODS) + [register_alpha(x) for x in a.alpha]
    for m in methods:
        d.resolve_method(m)
    ref = faithfulness.reference_of(d)
    rows, t0 = [], time.time()
    for name, folder in COHORTS.items():
        items = [it for it in load_items(a.work / folder) if it.label == "AD"][: a.limit]
        files = preprocess_all(items, d.package.card.to_dict(), a.work / "cache", workers=2)
        for it, f in zip(items, files):
            x = torch.from_numpy(np.load(f).astype(np.float32))[None, None]
            shared, row = None, {"cohort": name, "subject": it.subject}
            for m in methods:
                g = d.explain_tensor(x, m, "AD")
                c = faithfulness.scan_curves(d.model, x[0, 0].numpy(), ref, g.relevance, g.target,
                                             random_curves=shared)
                shared = c["random"]
                row[m] = {k: c[k] for k in ("aopc_deletion", "aopc_deletion_random", "aopc_insertion",
                                            "aopc_insertion_random", "deletion_faster_than_random",
                                            "insertion_faster_than_random", "p_scan", "p_reference")}
            rows.append(row)
            print(f"{len(rows)} {name} {it.subject} {time.time() - t0:.0f} s", flush=True)
    table = {name: {m: _summary([r[m] for r in rows if r["cohort"] == name]) for m in methods} for name in COHORTS}
    a.out.write_text(json.dumps({"package": d.package.name, "settings": faithfulness.Settings().describe(),
                                 "table": table, "rows": rows}, indent=1))
    cols = ["deletion_beats_random", "aopc_deletion", "aopc_deletion_random", "insertion_beats_random",
            "aopc_insertion", "aopc_insertion_random"]
    lines = []
    for name in COHORTS:
        lines += [f"\n{name}\n", "| method | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
        lines += [f"| {m} | {t['n']} | " + " | ".join(f"{t[c]:.2f}" for c in cols) + " |"
                  for m, t in table[name].items()]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _summary(vals: list[dict]) -> dict:
    return {"n": len(vals),
            "deletion_beats_random": float(np.mean([v["deletion_faster_than_random"] for v in vals])),
            "insertion_beats_random": float(np.mean([v["insertion_faster_than_random"] for v in vals])),
            **{k: float(np.median([v[k] for v in vals])) for k in ("aopc_deletion", "aopc_deletion_random",
                                                                   "aopc_insertion", "aopc_insertion_random")}}


if __name__ == "__main__":
    raise SystemExit(main())
