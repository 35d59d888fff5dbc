"""Cohort throughput, side by side in one run: the batch engine against one CLI call per scan.

    python scripts/bench/bench_batch.py [--n 60] [--loop 6] [--mem 100,300] [--workers N] [--json out.json]

1. Generates (once, cached) a synthetic cohort with ``addiagnosis synth`` at its default size.
2. Per-call loop: ``addiagnosis diagnose SCAN --no-figures`` once per scan for the first ``--loop`` scans
   (a new process per scan: what a shell loop over a cohort does today).
3. Batch: ``addiagnosis batch LIST --out DIR`` over the first ``--n`` scans (bundled model, no per-scan files),
   timed from the process start (model load and worker start included).
4. Memory: the batch over each size in ``--mem``; peak resident memory of the whole process tree (the batch
   and its workers, sampled from /proc every 0.2 s).
Prints scans/min for both, their ratio (robust to a busy machine: both run under the same load) and the
peak memory per cohort size. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCH = "batch"
LOGIC = ROOT / "ADDiagnosis" / "Logic"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(LOGIC) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "addiagnosis.cli.main", *map(str, args)]


TICK = os.sysconf("SC_CLK_TCK")


def tree_sample(root: int) -> dict[int, tuple[int, int, float]]:
    """{pid: (rss bytes, pss bytes, cpu seconds)} of ``root`` and all its descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            parents[int(d)] = int(f[1])
            cpu[int(d)] = (int(f[11]) + int(f[12])) / TICK
        except (OSError, IndexError, ValueError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p and c not in members:
                members.add(c)
                frontier.append(c)
    out = {}
    for p in members:
        rss = pss = 0
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
        except OSError:
            continue
        out[p] = (rss, pss, cpu.get(p, 0.0))
    return out


def timed(argv: list[str]) -> dict:
    """Wall seconds, CPU seconds and peak memory (RSS and PSS, summed over the process tree) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0}
    cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            snap = tree_sample(proc.pid)
            peak["rss"] = max(peak["rss"], sum(v[0] for v in snap.values()))
            peak["pss"] = max(peak["pss"], sum(v[1] for v in snap.values()))
            for pid, v in snap.items():
                cpu[pid] = max(cpu.get(pid, 0.0), v[2])
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_batch: command failed ({proc.returncode}): {' '.join(argv)}\n{err[-2000:]}")
    return {"seconds": dt, "cpu_s": sum(cpu.values()), "rss": peak["rss"], "pss": peak["pss"], "stdout": out}


def random_model(root: Path) -> Path:
    """A random-weight model with the cheap ``physical`` preprocessing: isolates the pipeline's own memory."""
    sys.path.insert(0, str(LOGIC))
    from addiagnosis.models.network import ClassificationModel3D
    from addiagnosis.models.package import write_package

    card = {"name": "bench-random", "version": "1", "class_names": ["CN", "EMCI", "MCI", "LMCI", "AD"],
            "input_grid": {"shape": [80, 96, 80], "spacing": [2.0, 2.0, 2.0], "orientation": "RAS"},
            "preprocessing": {"kind": "physical"}, "intended_use": "benchmark only; random weights",
            "training_data": "none"}
    write_package(root / "bench-random", ClassificationModel3D((80, 96, 80), 5).state_dict(), card, overwrite=True)
    return root / "bench-random"


def cohort(data: Path, n: int, seed: int) -> list[Path]:
    scans = sorted((data / "scans").glob("*.nii.gz"))
    if len(scans) < n:
        shutil.rmtree(data, ignore_errors=True)
        print(f"generating {n} synthetic scans in {data} ...", file=sys.stderr)
        subprocess.run(cli("synth", "--n", n, "--out", data, "--seed", seed, "--prefix", "bench"), env=env(),
                       check=True, stdout=subprocess.DEVNULL)
        scans = sorted((data / "scans").glob("*.nii.gz"))
    return scans  # at least n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="scans in the timed batch run (default 60; 0: skip)")
    ap.add_argument("--loop", type=int, default=6, help="scans in the one-call-per-scan loop (default 6; 0: skip)")
    ap.add_argument("--mem", default="", help="cohort sizes for the memory check, e.g. 100,300 (default: none)")
    ap.add_argument("--mem-model", default="bundled", choices=["bundled", "random"],
                    help="model of the memory runs: bundled, or random (random weights, cheap physical "
                         "preprocessing: the pipeline's own memory at 1,000 scans in minutes)")
    ap.add_argument("--workers", type=int, default=None, help="batch workers (default: one per core)")
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "addiagnosis-bench-synth"),
                    help="where the synthetic cohort is cached")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.mem.split(",") if s.strip()]
    data = Path(args.data)
    need = max([args.n, args.loop, 10] + ([] if args.mem_model == "random" else sizes))
    scans = cohort(data, need, args.seed)
    work = Path(tempfile.mkdtemp(prefix="addiagnosis-bench-"))
    workers = [] if args.workers is None else ["--workers", args.workers]
    res = {"cpu_cores": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0]}
    try:
        if args.loop:
            loop = [timed(cli("diagnose", s, "--out", work / f"loop{i}", "--no-figures", "-q"))
                    for i, s in enumerate(scans[: args.loop])]
            t_loop = sum(x["seconds"] for x in loop)
            res["loop"] = {"scans": args.loop, "seconds": round(t_loop, 2),
                           "scans_per_min": round(args.loop / t_loop * 60, 1),
                           "cpu_s_per_scan": round(sum(x["cpu_s"] for x in loop) / args.loop, 2)}
            print(f"one call per scan: {args.loop} scans in {t_loop:.1f} s = {res['loop']['scans_per_min']} "
                  f"scans/min, {res['loop']['cpu_s_per_scan']} CPU s/scan", file=sys.stderr)

        def batch(paths: list[Path], tag: str, model: list) -> dict:
            listing = work / f"{tag}.txt"
            listing.write_text("".join(f"{p}\n" for p in paths))
            r = timed(cli(BATCH, listing, "--out", work / tag, "-q", *workers, *model))
            line = next((x for x in r["stdout"].splitlines() if "scans/min" in x), "")
            n = len(paths)
            return {"scans": n, "seconds": round(r["seconds"], 2), "scans_per_min": round(n / r["seconds"] * 60, 1),
                    "steady_scans_per_min": float(line.rsplit(" s, ", 1)[1].split()[0]) if " s, " in line else None,
                    "cpu_s_per_scan": round(r["cpu_s"] / n, 2), "peak_rss_mb": round(r["rss"] / 2**20),
                    "peak_pss_mb": round(r["pss"] / 2**20)}

        if args.n:
            res["batch"] = b = batch(scans[: args.n], "batch", [])
            print(f"batch: {args.n} scans in {b['seconds']} s = {b['scans_per_min']} scans/min (after start-up "
                  f"{b['steady_scans_per_min']}), {b['cpu_s_per_scan']} CPU s/scan, peak {b['peak_pss_mb']} MB PSS "
                  f"({b['peak_rss_mb']} MB RSS)", file=sys.stderr)
        if args.n and args.loop:
            res["ratio"] = round(b["scans_per_min"] / res["loop"]["scans_per_min"], 2)
            res["cpu_ratio"] = round(res["loop"]["cpu_s_per_scan"] / b["cpu_s_per_scan"], 2)
            print(f"batch / per-call = {res['ratio']}x (CPU per scan: {res['cpu_ratio']}x)", file=sys.stderr)
        res["memory"] = []
        model = ["--model", random_model(work)] if args.mem_model == "random" else []
        for n in sizes:
            paths = list(scans[:n])
            if len(paths) < n:  # more scans than generated: hard links (distinct files to the batch)
                (work / f"links{n}").mkdir()
                for i in range(len(paths), n):
                    link = work / f"links{n}" / f"l{i:05d}.nii.gz"
                    os.link(scans[i % len(scans)], link)
                    paths.append(link)
            m = batch(paths, f"mem{n}", model)
            res["memory"].append(m)
            print(f"memory: {n} scans -> peak {m['peak_pss_mb']} MB PSS, {m['peak_rss_mb']} MB RSS "
                  f"({m['scans_per_min']} scans/min)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_avg_after"] = os.getloadavg()[0]
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
