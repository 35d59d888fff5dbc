"""Cross-generator table (issue 11, part 4): every model on every cohort, classification and explanations.

    PYTHONPATH=ADDiagnosis/Logic python scripts/experiments/cross_generator.py \\
        --model onlyA=PKG_A --model onlyB=PKG_B --cohort A=COHORT_A --cohort B=COHORT_B --out DIR \\
        [--method auto] [--stability N] [--threads 2]

Each model is scored with :func:`addiagnosis.research.evaluate.evaluate` on each cohort (``synth`` output: scans with
ground-truth masks and severities); per pair the report lands in ``DIR/<model>__<cohort>/``. The table
(``DIR/table.json``, ``DIR/table.md``): balanced accuracy, CN vs AD, Spearman rho of P(LMCI)+P(AD) against
severity (and whether its quartile means rise), median AD relevance mass accuracy (exact, within 2 mm),
median share of positive relevance in the brain, model-randomisation |r|, and - with ``--stability N`` - the
resampled-twin and 1 %-noise stability (median / 5th percentile over the first N scans).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.cli.options import name_value  # noqa: E402  (NAME=PATH, as `addiagnosis package` reads it)

COLUMNS = ["balanced_accuracy", "cn_vs_ad", "severity_rho", "severity_rising", "mass_AD", "mass_2mm_AD",
           "brain_share", "model_randomisation_abs_r", "resample_median", "resample_p5", "flip_median",
           "noise_1pct_median", "noise_1pct_p5"]


def row_of(result: dict) -> dict:
    """The table's figures from one :func:`evaluate` result."""
    clf, expl = result["classification"], result["explanation"]
    ad = expl["per_class"].get("AD") or {}
    trend = result.get("severity_trend") or {}
    row = {"n": result["n_scans"], "method": expl["method"], "balanced_accuracy": clf["balanced_accuracy"],
           "cn_vs_ad": clf.get("cn_vs_ad_balanced_accuracy"), "severity_rho": trend.get("spearman_rho"),
           "severity_rising": trend.get("rising"),
           "late_stage_by_severity_quartile": trend.get("mean_by_severity_quantile"),
           "mass_AD": ad.get("median_mass_accuracy"), "mass_2mm_AD": ad.get("median_mass_accuracy_within_2mm"),
           "brain_share": expl.get("median_brain_share"),
           "model_randomisation_abs_r": (expl.get("randomisation") or {}).get("median_abs_pearson_r")}
    st = ((expl.get("stability") or {}).get("per_method") or {}).get(expl["method"]) or {}
    for kind in ("resample", "flip", "noise_1pct"):
        if kind in st:
            row[f"{kind}_median"], row[f"{kind}_p5"] = st[kind]["median"], st[kind]["p5"]
    return row


def markdown(rows: list[dict]) -> str:
    def fmt(v):
        if v is None:
            return "n/a"
        if isinstance(v, bool):
            return "yes" if v else "no"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| model | cohort | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    lines += [f"| {r['model']} | {r['cohort']} | " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, type=name_value, help="NAME=package folder or name")
    ap.add_argument("--cohort", action="append", required=True, type=name_value,
                    help="NAME=synth output folder or table")
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--stability", type=int, default=0, metavar="N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    from addiagnosis.research.evaluate import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for mname, pkg in dict(args.model).items():
        for cname, data in dict(args.cohort).items():
            res = evaluate(pkg, data, out / f"{mname}__{cname}", method=args.method, threads=args.threads,
                           stability_n=args.stability, limit=args.limit)
            rows.append({"model": mname, "cohort": cname, **row_of(res)})
            (out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
            (out / "table.md").write_text(markdown(rows))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
