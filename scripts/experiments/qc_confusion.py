"""QC confusion table (issue 18): the QC test set made by code (research/qcset.py) through registration, the
QC checks and the bundled model's OOD score; a table per kind of input (markdown) and every case (JSON).

    python scripts/experiments/qc_confusion.py OUT.json [--n-valid 24] [--n-each 3] [--seed 31] [--package DIR]
    python scripts/experiments/qc_confusion.py OUT.json --rescore   # OOD again from OUT.npz (a new fit)

Each case's penultimate-layer features go to OUT.npz, so that a package's OOD fit made later can score the
same cases without registering them again (``--rescore``).

For valid T1 scans the registration's landmark error against the true pose is recorded too, so that a QC fail
caused by a registration that really failed can be told from a false alarm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.engine import Diagnoser  # noqa: E402
from addiagnosis.errors import AddiagnosisError  # noqa: E402
from addiagnosis.models import ood  # noqa: E402
from addiagnosis.prep import qc  # noqa: E402
from addiagnosis.prep.align import landmark_error  # noqa: E402
from addiagnosis.prep.physical import prepare  # noqa: E402
from addiagnosis.research import qcset  # noqa: E402


def run_case(d: Diagnoser, vol, pose) -> tuple[dict, np.ndarray | None]:
    t = time.perf_counter()
    try:
        prepared = prepare(vol, d.package.card)
    except AddiagnosisError as exc:  # refused before QC (e.g. no head at all): as good as a fail
        return {"verdict": "fail", "refused": str(exc), "reasons": [], "ood": None}, None
    reg_s = time.perf_counter() - t
    rec = qc.assess(vol, prepared.info, d.package.card)
    feats = ood.features(d.model, prepared.tensor)[0]
    out = qc.with_ood(rec, None if d.ood is None else d.ood.score(feats))
    out["registration_s"] = round(reg_s, 3)
    if pose is not None:
        out["landmark_error_mm"] = round(landmark_error(np.asarray(prepared.info["mni_to_input_ras"]), pose), 2)
    return out, feats


def rescore(d: Diagnoser, out: Path) -> int:
    """The OOD records of a finished run again, from its saved features, with the package's (new) fit."""
    rows = json.loads(out.read_text())
    with np.load(out.with_suffix(".npz")) as z:
        feats = {k: z[k] for k in z.files}
    for r in rows:
        base = {**r, "reasons": [x for x in r["reasons"] if x["check"] != "ood"]}
        f = feats.get(r["name"])
        new = qc.with_ood(base, None if f is None or d.ood is None else d.ood.score(f))
        if r.get("refused"):
            new["verdict"] = "fail"
        r.update(new)
    out.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    by = defaultdict(list)
    for r in rows:
        by[(r["group"], r["kind"])].append(r)
    lines = ["| group | input | n | pass | warn | fail | checks not passing (count) | OOD above threshold | "
             "OOD percentile median |", "|---|---|---|---|---|---|---|---|---|"]
    for (group, kind), rs in by.items():
        n = len(rs)
        counts = {v: sum(r["verdict"] == v for r in rs) for v in qc.VERDICTS}
        checks = defaultdict(int)
        for r in rs:
            for reason in r["reasons"]:
                if reason["verdict"] != "pass":
                    checks[reason["check"]] += 1
            if r.get("refused"):
                checks["refused"] += 1
        scored = [r["ood"] for r in rs if r.get("ood")]
        above = f"{sum(o['score'] > o['threshold'] for o in scored)}/{len(scored)}" if scored else "-"
        pct = f"{np.median([o['percentile'] for o in scored]):.0f}" if scored else "-"
        lines.append(f"| {group} | {kind} | {n} | {counts['pass']} | {counts['warn']} | {counts['fail']} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(checks.items(), key=lambda kv: -kv[1]))
                     + f" | {above} | {pct} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n-valid", type=int, default=24)
    ap.add_argument("--n-each", type=int, default=3)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--package", default=None)
    ap.add_argument("--rescore", action="store_true", help="only score OUT.npz's features with the package's fit")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = Diagnoser(a.package)
    if a.rescore:
        return rescore(d, a.out)
    d.resolve_method(None)  # the package's own template
    rows, feats, t0 = [], {}, time.time()
    for name, group, kind, vol, pose in qcset.cases(a.n_valid, a.n_each, a.seed):
        rec, f = run_case(d, vol, pose)
        r = {"name": name, "group": group, "kind": kind, **rec}
        rows.append(r)
        if f is not None:
            feats[name] = f
            np.savez(a.out.with_suffix(".npz"), **feats)
        bad = [x["check"] for x in r["reasons"] if x["verdict"] != "pass"]
        print(f"{time.time() - t0:6.0f}s {name:30s} {r['verdict']:5s} {bad} ood {r['ood']}", flush=True)
    a.out.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
