#!/usr/bin/env python
"""GPU check: the engine's ``--device cuda`` path against its CPU path, and timings of both on one machine.

For every relevance method (``lrp-reference`` included) and two grids: the bundled model's 80x96x80 template
grid (real prepared scans when ``--inputs`` gives a file made by ``--make-inputs``, else random inputs) and
the seed checkpoint's 166x256x256 grid (random weights of the same architecture). Reports the largest
relative L2 difference between the CUDA and CPU relevance maps and logits, and the median time per forward
pass and per relevance map on each device. Needs only torch and numpy on the GPU machine.

    # here (CPU): prepare real inputs of the bundled model (registration needs SimpleITK and nibabel)
    .venv/bin/python scripts/experiments/gpu_check.py --make-inputs .gpudata/inputs.pt --cohort DIR_OF_SYNTH_OUTPUT
    # on the GPU machine
    python3 scripts/experiments/gpu_check.py --inputs .gpudata/inputs.pt --json $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))


def make_inputs(path: Path, cohort: Path, n: int) -> None:
    import csv

    import torch

    from addiagnosis.io.volume import read_nifti
    from addiagnosis.models.package import find_package
    from addiagnosis.prep.physical import prepare, reference_input

    pkg = find_package()
    rows = [r for r in csv.DictReader(open(cohort / "participants.tsv"), delimiter="\t") if r["class"] == "AD"][:n]
    tensors = [prepare(read_nifti(cohort / r["scan"]), pkg.card).tensor for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"inputs": torch.cat(tensors), "reference": reference_input(pkg.card),
                "subjects": [r["participant_id"] for r in rows]}, path)
    print(f"wrote {len(tensors)} prepared scans and the reference to {path}")


def timed(fn, device, repeats):
    import torch

    times = []
    for _ in range(repeats + 1):  # the first call warms up (kernel selection, allocations)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times[1:])


def check(model, inputs, reference, methods, repeats, other="cuda") -> dict:
    import torch

    from addiagnosis.explain.lrp import FastLRP

    devices = [torch.device("cpu"), torch.device(other)]
    engines = {d.type: FastLRP(model, device=d) for d in devices}
    for e in engines.values():
        e.set_reference(reference)
    result = {"methods": {}, "forward_s": {}, "logits_rel_diff": 0.0}
    maps = {}
    for d in devices:
        e = engines[d.type]
        for k, x in enumerate(inputs):
            cache, t_fwd = timed(lambda e=e, x=x: e.forward(x[None]), d, repeats)
            result["forward_s"].setdefault(d.type, []).append(t_fwd)
            maps[(d.type, k, "logits")] = cache.logits.double().cpu()
            for m in methods:
                rel, t_rel = timed(lambda e=e, c=cache, m=m: e.relevance(c, 4, m), d, repeats)
                maps[(d.type, k, m)] = rel.double().cpu()
                result["methods"].setdefault(m, {}).setdefault(f"{d.type}_s", []).append(t_rel)
    o = devices[1].type
    for k in range(len(inputs)):
        a, b = maps[("cpu", k, "logits")], maps[(o, k, "logits")]
        result["logits_rel_diff"] = max(result["logits_rel_diff"], float((a - b).norm() / a.norm()))
        for m in methods:
            a, b = maps[("cpu", k, m)], maps[(o, k, m)]
            r = result["methods"][m]
            r["rel_l2_diff"] = max(r.get("rel_l2_diff", 0.0), float((a - b).norm() / a.norm()))
            r["cosine_min"] = min(r.get("cosine_min", 1.0),
                                  float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)))
    for d in result["forward_s"]:
        result["forward_s"][d] = statistics.median(result["forward_s"][d])
    for r in result["methods"].values():
        for d in {"cpu", o}:
            r[f"{d}_s"] = statistics.median(r[f"{d}_s"])
        r["speedup"] = r["cpu_s"] / r[f"{o}_s"]
    return result


def random_model(shape, seed=3):
    """Seed architecture, PyTorch's default initialisation, non-trivial BatchNorm statistics."""
    import torch

    from addiagnosis.models.network import ClassificationModel3D

    torch.manual_seed(seed)
    model = ClassificationModel3D(shape, n_classes=5)
    with torch.no_grad():
        for _, bn, _ in model.blocks():
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-inputs", type=Path, help="write prepared inputs of the bundled model here and stop")
    ap.add_argument("--cohort", type=Path, help="an `addiagnosis synth` output folder (with --make-inputs)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--inputs", type=Path, help="file written by --make-inputs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--dry-run-on-cpu", action="store_true", help="compare CPU with CPU (tests this script)")
    args = ap.parse_args()
    if args.make_inputs:
        make_inputs(args.make_inputs, args.cohort, args.n)
        return 0

    import torch

    from addiagnosis.models.card import METHODS
    from addiagnosis.models.package import find_package

    other = "cpu" if args.dry_run_on_cpu else "cuda"
    if other == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    out = {"device": torch.cuda.get_device_name(0) if other == "cuda" else "cpu (dry run)", "torch": torch.__version__,
           "cpu_threads": torch.get_num_threads(), "grids": {}}
    pkg = find_package()
    model = pkg.load_model()
    if args.inputs and args.inputs.exists():
        data = torch.load(args.inputs, weights_only=True)
        inputs, reference, what = data["inputs"], data["reference"], f"{len(data['inputs'])} prepared AD scans"
    else:
        g = torch.Generator().manual_seed(0)
        inputs = torch.rand((2, 1, *model.input_shape), generator=g)
        reference, what = torch.rand((1, 1, *model.input_shape), generator=g), "random inputs"
    out["grids"]["bundled 80x96x80"] = {"inputs": what, **check(model, inputs, reference, list(METHODS),
                                                                   args.repeats, other)}
    seed_shape = (166, 256, 256)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, 1, *seed_shape), generator=g) * 1000
    ref = torch.rand((1, 1, *seed_shape), generator=g) * 1000
    out["grids"]["seed 166x256x256"] = {"inputs": "random input, random weights",
                                        **check(random_model(seed_shape), x, ref, list(METHODS),
                                                max(2, args.repeats // 2), other)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    worst = max(r["rel_l2_diff"] for g in out["grids"].values() for r in g["methods"].values())
    print(f"largest CUDA-vs-CPU relative L2 difference of a relevance map: {worst:.2e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
