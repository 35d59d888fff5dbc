"""Start-up cost of the command line: ``addiagnosis --help`` and ``addiagnosis models`` against ``python -c pass``.

    .venv/bin/python scripts/bench/cli_help.py [--runs 5]

Each command runs ``--runs`` times as a fresh process (the same interpreter); the median wall time is reported
with its ratio to the bare interpreter's, plus the peak memory (max RSS) of one run and whether torch was
imported. Issue 16: --help imported torch (1.4 s, 285 MB) before the command table loaded modules lazily.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import resource, runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("addiagnosis.cli", run_name="__main__")
except SystemExit:
    pass
finally:
    sys.stderr.write("PROBE %d %d\\n" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "torch" in sys.modules))
"""
CASES = {"python -c pass": None, "addiagnosis --help": ["--help"], "addiagnosis models": ["models"]}


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def probe(argv: list[str]) -> tuple[float, bool]:
    """(max RSS in MB, torch imported) of one run."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=["addiagnosis", *argv])], capture_output=True,
                          text=True, check=True)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("PROBE "))
    _, rss_kb, torch = line.split()
    return int(rss_kb) / 1024.0, torch == "1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = None
    rows = {}
    for name, argv in CASES.items():
        cmd = [sys.executable, "-c", "pass"] if argv is None else [sys.executable, "-m", "addiagnosis.cli", *argv]
        median = wall(cmd, args.runs)
        base = base or median
        row = {"median_s": round(median, 4), "ratio": round(median / base, 2)}
        if argv is not None:
            row["max_rss_mb"], row["torch_imported"] = probe(argv)
            row["max_rss_mb"] = round(row["max_rss_mb"], 1)
        rows[name] = row
        print(f"{name:<22} median {median * 1000:7.1f} ms  x{row['ratio']:<5}"
              + (f" {row['max_rss_mb']:6.1f} MB  torch: {row['torch_imported']}" if argv else ""), flush=True)
    print(json.dumps({"runs": args.runs, "python": sys.version.split()[0], "cases": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
