"""Cohort throughput, side by side in one run: the batch engine against one CLI call per scan.

    python scripts/bench_batch.py [--n 60] [--loop 6] [--mem 100,300] [--workers N] [--json out.json]

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

ROOT = Path(__file__).resolve().parents[1]
BATCH = "cohort"  # the engine behind `addiagnosis batch`
LOGIC = ROOT / "ADDiagnosis" / "Logic"


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(LOGIC) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "addiagnosis.cli", *map(str, args)]


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                parents[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as fh:
                rss[int(d)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    members, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p and c not in members:
                members.add(c)
                frontier.append(c)
    return sum(rss.get(p, 0) for p in members)


def timed(argv: list[str], sample_memory: bool = False) -> tuple[float, int, str]:
    """(seconds, peak tree RSS bytes, stdout) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    if sample_memory:
        th.start()
    out, err = proc.communicate()
    stop.set()
    if sample_memory:
        th.join()
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_batch: command failed ({proc.returncode}): {' '.join(argv)}\n{err[-2000:]}")
    return dt, peak[0], out


def cohort(data: Path, n: int, seed: int) -> list[Path]:
    scans = sorted((data / "scans").glob("*.nii.gz"))
    if len(scans) < n:
        shutil.rmtree(data, ignore_errors=True)
        print(f"generating {n} synthetic scans in {data} ...", file=sys.stderr)
        subprocess.run(cli("synth", "--n", n, "--out", data, "--seed", seed, "--prefix", "bench"), env=env(),
                       check=True, stdout=subprocess.DEVNULL)
        scans = sorted((data / "scans").glob("*.nii.gz"))
    return scans[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="scans in the timed batch run (default 60)")
    ap.add_argument("--loop", type=int, default=6, help="scans in the one-call-per-scan loop (default 6)")
    ap.add_argument("--mem", default="", help="cohort sizes for the memory check, e.g. 100,300 (default: none)")
    ap.add_argument("--workers", type=int, default=None, help="batch workers (default: one per core)")
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "addiagnosis-bench-synth"),
                    help="where the synthetic cohort is cached")
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.mem.split(",") if s.strip()]
    data = Path(args.data)
    scans = cohort(data, max([args.n, args.loop, *sizes]), args.seed)
    work = Path(tempfile.mkdtemp(prefix="addiagnosis-bench-"))
    workers = [] if args.workers is None else ["--workers", args.workers]
    res = {"cpu_cores": len(os.sched_getaffinity(0)), "load_avg_before": os.getloadavg()[0]}
    try:
        t_loop = 0.0
        for i, s in enumerate(scans[: args.loop]):
            dt, _, _ = timed(cli("diagnose", s, "--out", work / f"loop{i}", "--no-figures", "-q"))
            t_loop += dt
        res["loop"] = {"scans": args.loop, "seconds": round(t_loop, 2),
                       "scans_per_min": round(args.loop / t_loop * 60, 1)}
        print(f"one call per scan: {args.loop} scans in {t_loop:.1f} s = {res['loop']['scans_per_min']} scans/min",
              file=sys.stderr)

        def batch(n: int, tag: str) -> dict:
            listing = work / f"{tag}.txt"
            listing.write_text("".join(f"{p}\n" for p in scans[:n]))
            dt, peak, out = timed(cli(BATCH, listing, "--out", work / tag, "-q", *workers), sample_memory=True)
            line = next((x for x in out.splitlines() if "scans/min" in x), "")
            return {"scans": n, "seconds": round(dt, 2), "scans_per_min": round(n / dt * 60, 1),
                    "steady_scans_per_min": float(line.rsplit(" s, ", 1)[1].split()[0]) if " s, " in line else None,
                    "peak_rss_mb": round(peak / 2**20)}

        res["batch"] = batch(args.n, "batch")
        res["ratio"] = round(res["batch"]["scans_per_min"] / res["loop"]["scans_per_min"], 2)
        print(f"batch: {args.n} scans in {res['batch']['seconds']} s = {res['batch']['scans_per_min']} scans/min "
              f"(after start-up {res['batch']['steady_scans_per_min']}), peak {res['batch']['peak_rss_mb']} MB; "
              f"batch / per-call = {res['ratio']}x", file=sys.stderr)
        res["memory"] = []
        for n in sizes:
            m = batch(n, f"mem{n}")
            res["memory"].append(m)
            print(f"memory: {n} scans -> peak {m['peak_rss_mb']} MB ({m['scans_per_min']} scans/min)", file=sys.stderr)
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
