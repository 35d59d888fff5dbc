"""``addiagnosis batch | merge | labels``: the cohort engine's command line (``compare`` is in :mod:`.research`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from addiagnosis import RESEARCH_USE
from addiagnosis.cli.options import engine_options
from addiagnosis.cohort.inputs import discover
from addiagnosis.cohort.regions import synthetic_labelmap
from addiagnosis.cohort.run import Options, run
from addiagnosis.cohort.shards import merge, parse_shard


def add_batch_arguments(p) -> None:
    """The cohort options of ``addiagnosis batch`` (inputs, engine, outputs, throughput, resume, shards)."""
    p.add_argument("inputs", nargs="*", help="scans, folders (recursive), BIDS datasets, TSV/CSV tables with a "
                                            "path column, or text files with one path per line")
    p.add_argument("--list", action="append", default=[], help="a text file with one scan path per line")
    p.add_argument("--out", default="addiagnosis-batch", help="output folder (default ./addiagnosis-batch)")
    p.add_argument("--target", help="class to explain for every scan (default: each scan's predicted class)")
    p.add_argument("--save", default="", help="per-scan files to write: any of relevance,report,overview "
                                              "(default: none; the results table holds the summaries)")
    p.add_argument("--labels", help="label map in the model's template space (NIfTI; names in a TSV beside it "
                                    "or --label-names): per-region relevance sums and densities; default: the "
                                    "anatomical atlas (docs/atlas.md) for template models; 'none': no regions")
    p.add_argument("--label-names", help="TSV/CSV with index and name columns for the label map(s)")
    p.add_argument("--path-column", help="the table's column holding scan paths (default: path/scan/file/...)")
    p.add_argument("--group-column", help="column giving each subject's group (default: group/diagnosis/dx/...)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that read and preprocess scans (default: one per CPU core; 0: in-process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model process (default 1)")
    p.add_argument("--shard", help="K/N: this process does every N-th scan starting at the K-th (K from 1); "
                                   "default from torchrun's RANK/WORLD_SIZE")
    p.add_argument("--strict", action="store_true", help="exit code 2 when any scan failed")
    p.add_argument("--strict-qc", action="store_true", help="exit code 2 when any scan fails quality control")
    p.add_argument("--retry-errors", action="store_true", help="re-run scans that failed before")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress even when stderr is not a terminal")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run_cli(args) -> int:
    """``addiagnosis batch``: discover, run, summarise; exit 0 (failures counted), 2 with --strict."""
    out = Path(args.out)
    inputs = list(args.inputs) + list(getattr(args, "list", None) or [])
    save = tuple(x.strip() for x in (args.save or "").split(",") if x.strip())
    scans = discover(inputs, args.path_column, args.group_column, exclude=out)
    shard = parse_shard(args.shard)
    device = args.device
    if device == "cuda" and os.environ.get("LOCAL_RANK"):  # torchrun: one GPU per process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    opts = Options(out=out, model=args.model, device=device, method=args.method, target=args.target,
                   save=save, labels=args.labels, label_names=args.label_names, workers=args.workers,
                   threads=args.threads, shard=shard, strict=args.strict, retry_errors=args.retry_errors,
                   progress=False if args.quiet else args.progress)
    opts.shard_given = bool(args.shard)
    summary = run(scans, opts)
    where = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    print(f"{where}{summary.ok} of {summary.total} scans diagnosed, {summary.failed} failed"
          + (f", {summary.pending} pending" if summary.pending else "")
          + (f" ({summary.skipped} already done)" if summary.skipped else "")
          + f"; {summary.seconds:.1f} s, {summary.scans_per_min:.1f} scans/min -> {summary.table}")
    if summary.merged:
        print(f"all {shard[1]} shards merged -> {summary.merged}")
    if summary.notice:
        print(summary.notice)
    print(RESEARCH_USE)
    if summary.interrupted:
        print("addiagnosis: interrupted; finished scans are kept, re-run the same command to finish",
              file=sys.stderr)
        return 130
    return 2 if (args.strict and summary.failed) or (args.strict_qc and qc_failures(summary.table)) else 0


def qc_failures(table) -> int:
    """Rows of a results table whose input failed quality control (issue 18)."""
    import csv

    try:
        with open(table, newline="", encoding="utf-8") as fh:
            return sum(row.get("qc_verdict") == "fail" for row in csv.DictReader(fh, delimiter="\t"))
    except OSError:
        return 0


def cmd_merge(args) -> int:
    table, counts = merge(args.out, args.shards)
    print(f"merged {sum(counts.values())} scans ({counts['ok']} ok, {counts['error']} failed, "
          f"{counts['pending']} pending) -> {table}")
    return 2 if counts["pending"] and args.strict else 0


def cmd_labels(args) -> int:
    lpath, npath = synthetic_labelmap(args.out)
    print(f"synthetic MNI label map -> {lpath} (names {npath})")
    return 0


def register_cli(subparsers) -> None:
    """``batch`` (this engine), ``merge`` and ``labels``."""
    import argparse

    b = subparsers.add_parser("batch", help="diagnose a cohort (scans, folder, BIDS, table): one results table, "
                                            "worker processes, resumable, shardable")
    add_batch_arguments(b)
    engine_options(b)
    b.add_argument("--no-figures", action="store_true", help=argparse.SUPPRESS)  # old flag: figures are opt-in now
    b.set_defaults(func=run_cli)
    m = subparsers.add_parser("merge", help="join the parts of a sharded batch into one results table")
    m.add_argument("out", help="the --out folder every shard wrote into")
    m.add_argument("--shards", type=int, help="number of shards (default: from run.json)")
    m.add_argument("--strict", action="store_true", help="exit code 2 when scans are still pending")
    m.set_defaults(func=cmd_merge)
    lab = subparsers.add_parser("labels", help="write a small synthetic label map of the MNI template "
                                               "(for --labels demonstrations)")
    lab.add_argument("--out", required=True)
    lab.set_defaults(func=cmd_labels)
