#!/usr/bin/env python
"""Benchmark: one 166x256x256 scan through ADDiagnosis vs a zennit 0.5.1 baseline, same model and rule.

Prints forward time, LRP time, total diagnose time (read + preprocess + forward + LRP + write) and peak RSS
for each, and the ratios. Each measurement runs in its own process so peak RSS is its own.
Uses the seed checkpoint from ../shared/seed when present (else random weights of the same architecture).

    .venv/bin/python scripts/bench/benchmark.py [--repeats 3] [--methods lrp-alpha1beta0 lrp-epsilon]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "myModel_state_dict_130.pth"
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "Testing" / "support"))  # zennit_ref


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_inputs(work: Path) -> tuple[Path, Path]:
    """A 166x256x256 int16 scan and a seed-architecture model package."""
    import numpy as np
    import torch

    from addiagnosis.models.package import import_checkpoint, write_package

    from conftest import random_model

    scan = work / "scan166.nii.gz"
    if not scan.exists():
        import nibabel as nib

        rng = np.random.default_rng(0)
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in (166, 256, 256)], indexing="ij")
        head = zz ** 2 + yy ** 2 + xx ** 2 < 0.8
        img = np.where(head, 300 + 200 * np.sin(6 * zz) * np.cos(5 * yy), 0) + rng.normal(0, 20, head.shape)
        nib.save(nib.Nifti1Image(np.clip(img, 0, None).astype(np.int16), np.diag([1.2, 1.0, 1.0, 1.0])), str(scan))
    pkg = work / "models" / "bench"
    if not pkg.exists():
        if SEED.is_file():
            import_checkpoint(SEED, name="bench", dest_root=work / "models")
        else:
            from addiagnosis.models.package import seed_card

            model = random_model((160, 256, 256))
            tmp = work / "random.pth"
            torch.save(model.state_dict(), tmp)
            write_package(pkg, model.state_dict(), seed_card("bench", tmp, {}, (160, 256, 256)))
    return scan, pkg


def worker(kind: str, method: str, scan: Path, pkg: Path, repeats: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.models.package import find_package
    from addiagnosis.prep.physical import prepare

    package = find_package(str(pkg))
    model = package.load_model()
    volume = read_nifti(scan)
    x = prepare(volume, package.card).tensor
    target = 0
    fwd, lrp, total = [], [], []
    if kind == "ours":
        from addiagnosis.cli.main import main
        from addiagnosis.engine import get_diagnoser

        engine = get_diagnoser(str(pkg)).engine  # the very engine (and buffers) the CLI runs below re-use
        for _ in range(repeats + 1):
            t = time.perf_counter()
            cache = engine.forward(x)
            t1 = time.perf_counter()
            engine.relevance(cache, target, method)
            t2 = time.perf_counter()
            del cache
            fwd.append(t1 - t)
            lrp.append(t2 - t1)
        with tempfile.TemporaryDirectory() as out:
            for _ in range(repeats):
                t = time.perf_counter()
                code = main(["diagnose", str(scan), "--model", str(pkg), "--out", out, "--method", method,
                             "--no-figures", "-q"])
                total.append(time.perf_counter() - t)
                assert code == 0
            with_fig = []
            for _ in range(max(1, repeats // 2)):
                t = time.perf_counter()
                main(["diagnose", str(scan), "--model", str(pkg), "--out", out, "--method", method, "-q"])
                with_fig.append(time.perf_counter() - t)
        sys.stdout.flush()
        extra = {"total_with_overview_s": statistics.median(with_fig)}
    else:
        from zennit_ref import zennit_relevance

        with torch.no_grad():
            for _ in range(repeats + 1):
                t = time.perf_counter()
                model(x)
                fwd.append(time.perf_counter() - t)
        for _ in range(repeats):
            t = time.perf_counter()
            zennit_relevance(model, x, target, method)
            total.append(time.perf_counter() - t)  # zennit: forward + LRP (its attributor runs both)
        lrp = [tt - statistics.median(fwd[1:]) for tt in total]
        fwd = fwd[1:]
        extra = {}
    if kind == "ours":
        fwd, lrp = fwd[1:], lrp[1:]
    return {"kind": kind, "method": method, "forward_s": statistics.median(fwd), "lrp_s": statistics.median(lrp),
            "total_s": statistics.median(total), "peak_rss_mb": peak_rss_mb(), **extra}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["lrp-alpha1beta0", "lrp-epsilon"])
    ap.add_argument("--no-zennit", action="store_true")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "addiagnosis-bench"))
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    scan, pkg = make_inputs(work)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], scan, pkg, args.repeats)))
        return 0
    print(f"input: 166x256x256 int16 scan, model: {'seed checkpoint 130' if SEED.is_file() else 'random weights'}"
          f" (seed architecture, seed-raw preprocessing), torch threads: {os.environ.get('BENCH_THREADS', '2')},"
          f" cores: {os.cpu_count()}")
    rows = []
    for method in args.methods:
        for kind in ["ours"] + ([] if args.no_zennit else ["zennit"]):
            proc = subprocess.run([sys.executable, __file__, "--work", str(work), "--repeats", str(args.repeats),
                                   "--worker", kind, method], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'method':<18}{'impl':<8}{'forward s':>10}{'LRP s':>9}{'total s':>9}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['method']:<18}{r['kind']:<8}{r['forward_s']:>10.3f}{r['lrp_s']:>9.3f}{r['total_s']:>9.3f}"
              f"{r['peak_rss_mb']:>13.0f}")
    for r in rows:
        if r["kind"] == "ours":
            print(f"{r['method']}: diagnose total with overview.png {r['total_with_overview_s']:.3f} s")
    for method in args.methods:
        ours = next(r for r in rows if r["method"] == method and r["kind"] == "ours")
        ref = next((r for r in rows if r["method"] == method and r["kind"] == "zennit"), None)
        if ref:
            print(f"{method}: LRP speed-up vs zennit {ref['lrp_s'] / ours['lrp_s']:.1f}x, forward+LRP "
                  f"{ref['total_s'] / (ours['forward_s'] + ours['lrp_s']):.1f}x, peak RSS "
                  f"{ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f} of zennit's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
