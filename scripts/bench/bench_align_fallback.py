"""Template alignment with and without its fallback attempt, on the wide-variety valid T1s of the QC set.

    PYTHONPATH=ADDiagnosis/Logic python scripts/bench/bench_align_fallback.py OUT.json [--seeds 31 47] [--n 32]
        [--old-ref b392eaa^]

For every valid T1 scan of ``research.qcset.valid_cases(n, seed)`` (held-out synthetic heads, ``--variety
wide``, at several grids, orientations and intensity scalings) the bundled model's template preprocessing is run
with this tree's ``prep/align.py`` and with the one at ``--old-ref`` (loaded from git into a temporary module),
in alternating order, in the same process, on one thread. Per scan: the registration's correlation and quality,
the QC verdict without the OOD score (``prep.qc.assess``; OOD only ever warns), the landmark error against
where synth really put the template (its head scaling and pose), wall and CPU seconds. Per seed: registration
failures (quality ``poor``) and QC fails before/after, the time ratio new/old (sums and per-scan median), and the
largest change of the transform on the scans where the new code took no fallback (0 means bit-identical).
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

from bench_registration import old_align  # noqa: E402  (prep/align.py of a git revision, as a module of its own)


def head_scale(seed: int, index: int) -> float:
    """The head scaling synth drew for ``qcset.subject(seed, index, ...)`` (the same random streams)."""
    from addiagnosis.research import synth
    from addiagnosis.research.dataset import CLASSES

    label = CLASSES[int(np.random.default_rng([seed, index, 7]).integers(len(CLASSES)))]
    return synth.subject_params(seed, index, label, dict(synth.WIDE_VARIETY))["head_scale"]


def true_mni_to_scanner(pose, scale: float) -> np.ndarray:
    from addiagnosis.prep.template import atlas

    A = atlas()
    s = np.eye(4)
    s[:3, :3] *= scale
    s[:3, 3] = (1.0 - scale) * (np.asarray(A.shape) - 1) / 2.0
    return np.asarray(pose) @ A.affine @ s @ np.linalg.inv(A.affine)


def run_one(mod, vol, card, truth) -> dict:
    from addiagnosis.prep import qc
    from addiagnosis.prep.align import landmark_error

    wall, cpu = time.perf_counter(), time.process_time()
    prep = mod.template(vol, card["preprocessing"], card["input_grid"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    reg, m = prep.info["registration"], np.asarray(prep.info["mni_to_input_ras"])
    return {"correlation": round(reg["correlation"], 4), "quality": reg["quality"],
            "fallback": [a["attempt"] for a in reg.get("attempts", [])],
            "qc": qc.assess(vol, prep.info, card)["verdict"],
            "landmark_error_mm": round(landmark_error(m, truth), 2), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "matrix": m.tolist()}


def summary(rows: list[dict]) -> dict:
    same = [r for r in rows if not r["new"]["fallback"]]
    change = [float(np.abs(np.subtract(r["new"]["matrix"], r["old"]["matrix"])).max()) for r in same]
    out = {"n": len(rows), "fallback_taken": len(rows) - len(same),
           "max_matrix_change_without_fallback": max(change, default=0.0)}
    for k in ("old", "new"):
        out[k] = {"poor": sum(r[k]["quality"] == "poor" for r in rows), "not_converged": sum(
            r[k]["quality"] == "not converged" for r in rows), "qc_fail": sum(r[k]["qc"] == "fail" for r in rows),
            "qc_warn": sum(r[k]["qc"] == "warn" for r in rows),
            "landmark_error_over_5mm": sum(r[k]["landmark_error_mm"] > 5 for r in rows),
            "max_landmark_error_mm": max(r[k]["landmark_error_mm"] for r in rows)}
    for t in ("wall_s", "cpu_s"):
        out[f"ratio_{t}_sum"] = round(sum(r["new"][t] for r in rows) / sum(r["old"][t] for r in rows), 3)
        out[f"ratio_{t}_median"] = round(float(np.median([r["new"][t] / r["old"][t] for r in rows])), 3)
        out[f"ratio_{t}_median_without_fallback"] = round(float(np.median([r["new"][t] / r["old"][t]
                                                                           for r in same])), 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[31, 47])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--old-ref", default="b392eaa^")
    a = ap.parse_args(argv)
    import torch

    from addiagnosis.models.package import default_package
    from addiagnosis.prep import align, template
    from addiagnosis.research import qcset

    torch.set_num_threads(1)
    pkg = default_package()
    template.use_package_template(pkg.path, pkg.card)
    old = old_align(a.old_ref)
    if old is None:
        raise SystemExit(f"no prep/align.py at {a.old_ref!r} that differs from this tree's")
    codes = {"new": align, "old": old}
    for mod in codes.values():  # warm-up, not timed: each module builds its own template caches
        mod._fixed()
        mod.template_on_grid(*mod.model_grid(pkg.card["preprocessing"], pkg.card["input_grid"]))
    result = {"old_ref": a.old_ref, "seeds": {}}
    for seed in a.seeds:
        rows = []
        for i, (name, _, _, vol, pose) in enumerate(qcset.valid_cases(a.n, seed)):
            truth = true_mni_to_scanner(pose, head_scale(seed, i))
            order = ("new", "old") if i % 2 == 0 else ("old", "new")
            row = {"name": name, **{k: run_one(codes[k], vol, pkg.card, truth) for k in order}}
            rows.append(row)
            print(f"seed {seed} {name:30s} " + "  ".join(
                f"{k}: {row[k]['quality']:13s} corr {row[k]['correlation']:.3f} qc {row[k]['qc']:4s} "
                f"err {row[k]['landmark_error_mm']:5.2f} mm cpu {row[k]['cpu_s']:.2f} s {row[k]['fallback'] or ''}"
                for k in ("old", "new")), flush=True)
        result["seeds"][str(seed)] = {"summary": summary(rows), "rows": rows}
        print(json.dumps({seed: result["seeds"][str(seed)]["summary"]}, indent=1), flush=True)
    a.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
