"""The results table: its columns, one row per scan from the scan's input skeleton and its journal record, and
``results.tsv`` (plus ``results.parquet`` when pyarrow is importable), written atomically and sorted by scan id.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from addiagnosis.errors import display_name
from addiagnosis.files import atomic_file, write_text_atomic
from addiagnosis.prep.qc import COLUMNS as QC_COLUMNS

if TYPE_CHECKING:
    from addiagnosis.cohort.inputs import Scan
    from addiagnosis.cohort.regions import Regions

RESULTS = "results.tsv"
BASE_COLUMNS = ["scan_id", "subject", "session", "group", "path", "sha256", "status", "error", "predicted",
                "target"]
RESULT_COLUMNS = ["prediction_set", "method", "registration_correlation", "registration_quality", "brain_share",
                  "relevance_sum",
                  "relevance_positive_sum", "warnings", "t_read", "t_prepare", "t_model", "t_write", "t_total",
                  "output", *QC_COLUMNS]  # QC_COLUMNS: verdict, reasons, OOD score and percentile (issue 18)


def table_columns(scans: list[Scan], classes: list[str], regions: Regions | None) -> list[str]:
    cols = BASE_COLUMNS + [f"p_{c}" for c in classes] + RESULT_COLUMNS
    fixed, carried = set(cols), []
    for s in scans:  # carried columns (participants.tsv, the input table), in order of first appearance
        for key in s.extra:
            name = carried_name(key, fixed)
            if name not in carried:
                carried.append(name)
    cols += carried
    if regions is not None:
        cols += regions.columns
    return cols


def carried_name(key: str, fixed) -> str:
    """A carried input column keeps its name unless a result column has it (then ``participant_<name>``)."""
    return key if key not in fixed else f"participant_{key}"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.6e}"
    if isinstance(v, (list, tuple)):
        return "; ".join(_fmt(x) for x in v)
    return display_name(v)


def row_for(skel: dict, rec: dict | None, columns: list[str], classes: list[str]) -> dict:
    """The row of one scan: its input skeleton (ids, carried columns) and its record (``None``: pending)."""
    row = {c: "" for c in columns}
    row.update({k: display_name(skel.get(k, "")) for k in ("scan_id", "subject", "session", "group", "path")})
    fixed = set(BASE_COLUMNS + RESULT_COLUMNS + [f"p_{c}" for c in classes])
    for key, val in (skel.get("extra") or {}).items():
        name = carried_name(key, fixed)
        if name in row:
            row[name] = _fmt(val)
    if rec is None:
        row["status"] = "pending"
        return row
    for c in ("sha256", "status", "error", "predicted", "target") + tuple(RESULT_COLUMNS):
        if c in rec:
            row[c] = _fmt(rec[c])
    probs = rec.get("probabilities") or {}
    for c in classes:
        row[f"p_{c}"] = f"{probs[c]:.6f}" if c in probs else ""
    for key, val in (rec.get("regions") or {}).items():
        if key in row:
            row[key] = _fmt(val)
    if rec.get("status") == "ok" and rec.get("files"):
        row["output"] = _fmt(rec.get("output", ""))
    return row


def count_statuses(rows: list[dict]) -> dict:
    """Rows per status: ok, error (anything unknown counts as an error) and pending."""
    counts = {"ok": 0, "error": 0, "pending": 0}
    for r in rows:
        counts[r["status"] if r["status"] in counts else "error"] += 1
    return counts


def write_table(path: Path, columns: list[str], rows: list[dict]) -> Path:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", restval="", lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(sorted(rows, key=lambda r: r["scan_id"]))
    write_text_atomic(path, buf.getvalue())
    _write_parquet(path.with_suffix(".parquet"), columns, rows)
    return path


def _write_parquet(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Parquet beside the TSV when pyarrow is importable (not a dependency)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    data = {}
    for c in columns:
        vals = [r.get(c, "") for r in sorted(rows, key=lambda r: r["scan_id"])]
        try:
            data[c] = pa.array([float(v) if v != "" else None for v in vals], pa.float64()) \
                if c.startswith(("p_", "t_", "sum_", "density_", "relevance_")) else pa.array(vals, pa.string())
        except ValueError:
            data[c] = pa.array(vals, pa.string())
    with atomic_file(path) as tmp:
        pq.write_table(pa.table(data), str(tmp))
