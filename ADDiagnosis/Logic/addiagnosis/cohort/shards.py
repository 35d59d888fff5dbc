"""Shards and the batch's own files: ``--shard K/N`` (or torchrun's RANK/WORLD_SIZE) picks every N-th scan; each
shard writes ``parts/shard-K-of-N/``; ``run.json`` holds the settings every part must share; :func:`merge` joins
the parts into the table one process gives.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from addiagnosis.cohort.journal import all_records
from addiagnosis.cohort.table import RESULTS, count_statuses, row_for, write_table
from addiagnosis.errors import InputError, OutputError
from addiagnosis.files import write_text_atomic

MANIFEST = "manifest.json"
RUN = "run.json"
DONE = "done.json"


def parse_shard(text: str | None, env=None) -> tuple[int, int]:
    """``K/N`` (K counts from 1), else torchrun's RANK/WORLD_SIZE, else (1, 1)."""
    env = os.environ if env is None else env
    if text:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise InputError(f"--shard {text!r}: expected K/N, e.g. 1/4 (K counts from 1)")
        k, n = int(m.group(1)), int(m.group(2))
        if n < 1 or not 1 <= k <= n:
            raise InputError(f"--shard {text}: K must be 1..N (K counts from 1, e.g. SLURM --array=1-{max(n, 1)})")
        return k, n
    if env.get("WORLD_SIZE") and env.get("RANK"):
        n, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        if n > 1:
            return rank + 1, n
    return 1, 1


def shard_of(scans: list, k: int, n: int) -> list:
    """Every n-th scan of the (sorted) input list, starting at the k-th: balanced and the same on every node."""
    return scans[k - 1 :: n]


def part_dir(out: Path, k: int, n: int) -> Path:
    return out if n == 1 else out / "parts" / f"shard-{k}-of-{n}"


@dataclass
class Settings:
    """What a batch's results depend on (``run.json``'s ``settings``, in this order): a re-run must match them."""

    model: str
    model_version: str
    weights_sha256: str
    method: str
    target: str
    labels_sha256: str = ""
    regions: list = field(default_factory=list)
    save: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def check_run_file(out: Path, settings: Settings, classes: list[str], n_shards: int, pdir: Path | None = None) -> None:
    """Refuse an output folder holding results made with other settings (one line naming the first that differs);
    else write ``run.json``, and a copy into the shard's part folder ``pdir`` (what :func:`merge` checks: shards
    started together, or run elsewhere and copied in, pass this check each on its own)."""
    path = out / RUN
    now = settings.as_dict()
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        old_settings = old.get("settings") or {}
        diff = [k for k in now if old_settings.get(k) != now[k]]
        if old_settings and diff:
            k = diff[0]
            raise OutputError(f"holds results made with other settings ({k}: {old_settings.get(k)!r}, now "
                              f"{now[k]!r}); choose another --out or remove the folder", out)
    doc = {"settings": now, "classes": classes, "shards": n_shards}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
    if pdir is not None and pdir != out:  # write_text_atomic makes the folder
        write_text_atomic(pdir / RUN, json.dumps(doc, indent=1) + "\n")


def write_manifest(pdir: Path, k: int, n: int, columns: list[str], scans: list) -> None:
    """The part's columns and its scans' skeletons: what its table is rebuilt from."""
    write_text_atomic(pdir / MANIFEST, json.dumps({"shard": [k, n], "columns": columns,
                                                   "scans": [s.skeleton() for s in scans]}) + "\n")


def _part_settings(pdir: Path, run_doc: dict) -> dict:
    """The settings a part was made with (its own run.json; a part from before these copies: the batch's)."""
    try:
        doc = json.loads((pdir / RUN).read_text())
    except FileNotFoundError:
        doc = run_doc
    except (OSError, ValueError):
        raise InputError(f"unreadable {RUN}", pdir / RUN) from None
    return doc.get("settings") or {} if isinstance(doc, dict) else {}


def _same_settings(first: tuple[str, dict], shard: str, settings: dict, pdir: Path) -> None:
    """One line naming the first setting in which a shard differs from the first shard merged."""
    name, ref = first
    for key in list(ref) + [k for k in settings if k not in ref]:
        if ref.get(key) != settings.get(key):
            raise InputError(f"shards {name} and {shard} were made with different settings ({key}: "
                             f"{ref.get(key)!r} and {settings.get(key)!r}); re-run shard {shard} with the settings "
                             "of the others", pdir)


def load_run(out: Path) -> dict:
    try:
        return json.loads((out / RUN).read_text())
    except (OSError, ValueError):
        raise InputError(f"not a batch output folder (no readable {RUN})", out) from None


def write_part_results(out: Path, pdir: Path) -> tuple[Path, dict]:
    """results.tsv of one part (or of the single process) from its manifest and every journal under out."""
    manifest = json.loads((pdir / MANIFEST).read_text())
    classes = load_run(out)["classes"]
    by_id = {r["scan_id"]: r for r in all_records(out)}
    rows = [row_for(sk, by_id.get(sk["scan_id"]), manifest["columns"], classes) for sk in manifest["scans"]]
    return write_table(pdir / RESULTS, manifest["columns"], rows), count_statuses(rows)


def merge(out: str | os.PathLike, shards: int | None = None) -> tuple[Path, dict]:
    """Join the shards' parts into ``out/results.tsv`` (the table one process gives); one-line error if a part
    is missing or unfinished, or was made with other settings (model, weights, method, target, labels, saves)."""
    out = Path(out)
    run_doc = load_run(out)
    n = int(shards or run_doc.get("shards") or 1)
    if n == 1:
        if not (out / MANIFEST).is_file():
            raise InputError("nothing to merge (no manifest.json)", out)
        return write_part_results(out, out)
    columns, rows, missing, first = None, [], [], None
    by_id = {r["scan_id"]: r for r in all_records(out)}
    for k in range(1, n + 1):
        pdir = part_dir(out, k, n)
        if not (pdir / MANIFEST).is_file():
            missing.append(f"{k}/{n}")
            continue
        settings = _part_settings(pdir, run_doc)
        if first is None:
            first = (f"{k}/{n}", settings)
        _same_settings(first, f"{k}/{n}", settings, pdir)
        manifest = json.loads((pdir / MANIFEST).read_text())
        if columns is None:
            columns = manifest["columns"]
        elif manifest["columns"] != columns:
            raise InputError(f"shard {k}/{n} was run on a different input list or settings", pdir)
        rows += [row_for(sk, by_id.get(sk["scan_id"]), columns, run_doc["classes"]) for sk in manifest["scans"]]
    if missing:
        raise InputError(f"shard(s) {', '.join(missing)} have not run yet (run them with --shard K/N on the same "
                         "inputs and --out)", out)
    return write_table(out / RESULTS, columns, rows), count_statuses(rows)


def wait_and_merge(out: Path, n: int, wait_s: float, log) -> Path | None:
    """Rank 0 under torchrun: wait for every shard's done.json, then merge."""
    t0 = time.time()
    while time.time() - t0 < wait_s:
        if all((part_dir(out, k, n) / DONE).is_file() for k in range(1, n + 1)):
            return merge(out, n)[0]
        time.sleep(2.0)
    log(f"addiagnosis: not every shard finished within {wait_s:.0f} s; run 'addiagnosis merge {out}' later")
    return None
