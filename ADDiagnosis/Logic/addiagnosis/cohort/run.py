"""Cohort engine: many scans in, one results table out; overlapped, resumable, shardable.

Inputs (:func:`discover`): a folder (recursive ``.nii``/``.nii.gz``), a BIDS dataset
(``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``; ``participants.tsv`` columns are carried into the results), a
TSV/CSV table with a path column (optional subject/session/group/labels columns; every other column is
carried), a text file with one path per line, or single scan files.

Pipeline (:func:`run`): reading, decompression and the model card's preprocessing (template registration
for the bundled model) run in worker processes while the network and LRP run in the main process (model
loaded once). Per-scan files (``--save relevance,report,overview``) are mapped back onto the input grid and
written by the workers too; without them only summaries computed on the model grid are kept.

Robustness: every finished scan (ok or error) is one line of an append-only journal (``journal.jsonl``,
fsync'ed per scan) keyed by the file's SHA-256; ``results.tsv`` is rebuilt from the journal(s) at the end,
on Ctrl-C/SIGTERM, and by every re-run, which skips what is done (same content, same settings). A bad scan is
a row with its one-line error; a worker that dies (crash, out of memory) is replaced and the scans it held
are retried one at a time, the culprit becoming an error row.

Scale-out: ``--shard K/N`` (K counts from 1; SLURM arrays) or torchrun's RANK/WORLD_SIZE choose every N-th
scan of the sorted input list; each shard writes ``parts/shard-K-of-N/``; :func:`merge` joins them into the
table one process gives.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addiagnosis import RESEARCH_USE
from addiagnosis.errors import AddiagnosisError, InputError, OutputError, display_name
from addiagnosis.files import atomic_file, scan_stem, sha256_file, write_text_atomic

NIFTI_EXT = (".nii", ".nii.gz")
PATH_COLUMNS = ("path", "scan", "file", "filename", "image", "t1", "t1w", "nifti")
SUBJECT_COLUMNS = ("subject", "participant_id", "subject_id", "participant", "ptid")
SESSION_COLUMNS = ("session", "session_id", "ses", "visit", "viscode")
GROUP_COLUMNS = ("group", "diagnosis", "dx", "class", "label", "dx_bl")
LABELS_COLUMNS = ("labels", "label_map", "labelmap", "atlas")
EXPECTED = ("a folder of .nii/.nii.gz scans, a BIDS dataset (sub-*/[ses-*/]anat/*_T1w.nii[.gz]), a TSV/CSV "
            "table with a path column, or a text file with one scan path per line")
SAVE_CHOICES = ("relevance", "report", "overview")
BASE_COLUMNS = ["scan_id", "subject", "session", "group", "path", "sha256", "status", "error", "predicted",
                "target"]
RESULT_COLUMNS = ["method", "registration_correlation", "registration_quality", "brain_share", "relevance_sum",
                  "relevance_positive_sum", "warnings", "t_read", "t_prepare", "t_model", "t_write", "t_total",
                  "output"]
JOURNAL = "journal.jsonl"
MANIFEST = "manifest.json"
RUN = "run.json"
RESULTS = "results.tsv"
DONE = "done.json"


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Scan:
    """One scan of the cohort: where it is, its ids, and what the input said about its subject."""

    path: Path
    scan_id: str
    subject: str = ""
    session: str = ""
    group: str = ""
    extra: dict = field(default_factory=dict)
    labels: Path | None = None  # a per-scan label map on the scan's own grid
    name: str = ""  # folder name for per-scan files (unique in the cohort)

    def skeleton(self) -> dict:
        return {"scan_id": self.scan_id, "subject": self.subject, "session": self.session, "group": self.group,
                "path": str(self.path), "name": self.name, "extra": dict(self.extra),
                "labels": None if self.labels is None else str(self.labels)}


def _is_nifti(p: Path) -> bool:
    return p.name.endswith(NIFTI_EXT) and not p.name.startswith(".")


def _entity(text: str, key: str) -> str:
    m = re.search(rf"(?:^|[/_]){key}-([A-Za-z0-9]+)", text)
    return f"{key}-{m.group(1)}" if m else ""


def _find_column(header: list[str], wanted, explicit: str | None = None, what: str = "") -> str | None:
    from addiagnosis.research.dataset import find_column

    if explicit:
        col = find_column(header, (explicit.strip().lower(),))
        if col is None:
            raise InputError(f"no {what} column {explicit!r}; the table has {', '.join(header)}")
        return col
    return find_column(header, wanted)


def read_table_rows(path: Path) -> list[dict]:
    """Rows of a TSV/CSV file (delimiter from the suffix, else sniffed); one-line errors."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the table ({getattr(exc, 'strerror', None) or exc})", path) from None
    suffix = path.suffix.lower()
    first = text.splitlines()[0] if text.strip() else ""
    delim = "," if suffix == ".csv" else "\t" if suffix == ".tsv" else ("\t" if "\t" in first else ",")
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delim))
    if not rows:
        raise InputError("the table has no rows", path)
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in rows]


def _group_of(row: dict, header: list[str], group_column: str | None) -> tuple[str, str | None]:
    col = _find_column(header, GROUP_COLUMNS, group_column, "group")
    return (row.get(col, "") if col else ""), col


def discover_table(path: Path, path_column: str | None = None, group_column: str | None = None) -> list[Scan]:
    rows = read_table_rows(path)
    header = list(rows[0].keys())
    pcol = _find_column(header, PATH_COLUMNS, path_column, "path")
    if pcol is None:
        raise InputError(f"the table has no path column (expected one of {', '.join(PATH_COLUMNS)}, or name it "
                         f"with --path-column); it has {', '.join(header)}", path)
    scol = _find_column(header, SUBJECT_COLUMNS)
    vcol = _find_column(header, SESSION_COLUMNS)
    lcol = _find_column(header, LABELS_COLUMNS)
    base = path.parent
    scans = []
    for row in rows:
        raw = row.get(pcol, "")
        p = Path(raw) if raw else base / "(no path given)"
        p = p if p.is_absolute() else base / p
        subject = row.get(scol, "") if scol else ""
        session = row.get(vcol, "") if vcol else ""
        group, gcol = _group_of(row, header, group_column)
        labels = None
        if lcol and row.get(lcol):
            lp = Path(row[lcol])
            labels = lp if lp.is_absolute() else base / lp
        used = {pcol, scol, vcol, gcol, lcol}
        extra = {k: v for k, v in row.items() if k not in used}
        sid = "_".join(x for x in (subject, session) if x) or _relative_id(p, base)
        scans.append(Scan(p, sid, subject, session, group, extra, labels))
    return scans


def _relative_id(p: Path, root: Path) -> str:
    try:
        rel = p.relative_to(root)
    except ValueError:
        rel = Path(p.name)
    return str(rel.parent / scan_stem(rel)) if str(rel.parent) != "." else scan_stem(rel)


def is_bids(root: Path) -> bool:
    return (root / "dataset_description.json").is_file() or any(root.glob("sub-*/anat")) or \
        any(root.glob("sub-*/ses-*/anat"))


def discover_bids(root: Path, group_column: str | None = None) -> list[Scan]:
    files = sorted({*root.glob("sub-*/anat/*_T1w.nii*"), *root.glob("sub-*/ses-*/anat/*_T1w.nii*")})
    files = [f for f in files if _is_nifti(f)]
    if not files:
        raise InputError("a BIDS dataset without T1w scans: expected sub-*/[ses-*/]anat/*_T1w.nii[.gz]", root)
    participants: dict[str, dict] = {}
    header: list[str] = []
    ptsv = root / "participants.tsv"
    if ptsv.is_file():
        rows = read_table_rows(ptsv)
        header = list(rows[0].keys())
        pid = _find_column(header, ("participant_id",) + SUBJECT_COLUMNS)
        if pid is None:
            raise InputError("participants.tsv has no participant_id column", ptsv)
        for r in rows:
            key = r[pid] if r[pid].startswith("sub-") else f"sub-{r[pid]}"
            participants[key] = {k: v for k, v in r.items() if k != pid}
    scans = []
    for f in files:
        rel = f.relative_to(root)
        subject = rel.parts[0]
        session = rel.parts[1] if rel.parts[1].startswith("ses-") else ""
        info = dict(participants.get(subject, {}))
        group, gcol = _group_of(info, header, group_column) if header else ("", None)
        extra = {k: v for k, v in info.items() if k != gcol}
        sid = scan_stem(f)
        sid = sid[: -len("_T1w")] if sid.endswith("_T1w") else sid
        scans.append(Scan(f, sid, subject, session, group, extra))
    return scans


def discover_folder(root: Path, exclude: Path | None = None) -> list[Scan]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                             and (exclude is None or (d / n).resolve() != exclude))
        files += [d / n for n in filenames if _is_nifti(d / n)]
    files.sort()
    if not files:
        raise InputError(f"found no .nii/.nii.gz scans; expected {EXPECTED}", root)
    return [Scan(f, _relative_id(f, root), _entity(str(f.relative_to(root)), "sub"),
                 _entity(str(f.relative_to(root)), "ses")) for f in files]


def discover_list(path: Path) -> list[Scan]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the scan list ({exc.strerror or exc})", path) from None
    out = []
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            p = Path(line)
            p = p if p.is_absolute() else path.parent / p
            out.append(Scan(p, scan_stem(p)))
    if not out:
        raise InputError("the scan list names no scans", path)
    return out


def discover(inputs, path_column: str | None = None, group_column: str | None = None,
             exclude: str | os.PathLike | None = None) -> list[Scan]:
    """Every scan named by ``inputs`` (files, folders, BIDS datasets, tables, lists), with unique ids and names."""
    excl = Path(exclude).resolve() if exclude else None
    scans: list[Scan] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            ptsv = p / "participants.tsv"
            if is_bids(p):
                scans += discover_bids(p, group_column)
            elif ptsv.is_file() and _find_column(list(read_table_rows(ptsv)[0]), PATH_COLUMNS, path_column):
                scans += discover_table(ptsv, path_column, group_column)
            else:
                scans += discover_folder(p, excl)
        elif p.name.endswith(NIFTI_EXT):  # named explicitly: hidden names too; a missing file is an error row
            scans.append(Scan(p, scan_stem(p)))
        elif not p.exists():
            raise InputError(f"no such file or folder; expected {EXPECTED}", p)
        elif p.suffix.lower() in (".tsv", ".csv"):
            scans += discover_table(p, path_column, group_column)
        elif p.suffix.lower() in (".txt", ".lst", ".list"):
            scans += discover_list(p)
        else:
            raise InputError(f"unknown input layout; expected {EXPECTED}", p)
    if not scans:
        raise InputError(f"no scans given; expected {EXPECTED}")
    seen_paths, unique = set(), []
    for s in scans:  # the same file named twice is one scan
        key = str(s.path.resolve()) if s.path.exists() else str(s.path)
        if key not in seen_paths:
            seen_paths.add(key)
            unique.append(s)
    _make_unique(unique)
    return unique


def _make_unique(scans: list[Scan]) -> None:
    """Unique scan ids (``id~2`` for a repeat) and per-scan folder names (:func:`.outputs.unique_names`)."""
    from addiagnosis.io.outputs import unique_names

    ids: dict[str, int] = {}
    for s in scans:
        n = ids.get(s.scan_id, 0)
        ids[s.scan_id] = n + 1
        if n:
            s.scan_id = f"{s.scan_id}~{n + 1}"
    names = unique_names([s.scan_id.replace("/", "__") for s in scans], stem=lambda p: p.name)
    for s, name in zip(scans, names):
        s.name = name


# ------------------------------------------------------------------------------------------ sharding
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


def shard_of(scans: list[Scan], k: int, n: int) -> list[Scan]:
    """Every n-th scan of the (sorted) input list, starting at the k-th: balanced and the same on every node."""
    return scans[k - 1 :: n]


def part_dir(out: Path, k: int, n: int) -> Path:
    return out if n == 1 else out / "parts" / f"shard-{k}-of-{n}"


# ------------------------------------------------------------------------------------------ journal
class Journal:
    """Append-only JSON lines, one per finished scan, flushed and fsync'ed before the next scan counts."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    @staticmethod
    def read(path: Path) -> list[dict]:
        out = []
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return out
        for line in data.split(b"\n"):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line torn by a kill: that scan is simply not done
                    continue
        return out

    def open(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # cut a torn last line so the next record starts on its own line
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        self.fh = open(self.path, "a", encoding="utf-8")
        return self

    def append(self, record: dict) -> None:
        self.fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def all_records(out: Path) -> list[dict]:
    """Records of every journal under ``out`` (single process and every shard), oldest first."""
    paths = [out / JOURNAL] + sorted((out / "parts").glob(f"*/{JOURNAL}"))
    recs = []
    for p in paths:
        recs += Journal.read(p)
    recs.sort(key=lambda r: r.get("finished", 0))
    return recs


def _stat_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


# ------------------------------------------------------------------------------------------ labels
@dataclass
class Regions:
    names: list[str]  # region k (1..K) is names[k-1]
    grid: np.ndarray | None  # labels on the model grid (0 = unlabelled), when one map serves every scan
    voxel_ml: float
    sha256: str = ""

    @property
    def columns(self) -> list[str]:
        safe = [_safe_region(n) for n in self.names]
        return [f"sum_{s}" for s in safe] + ["sum_unlabelled"] + [f"density_{s}" for s in safe]

    def values(self, rel: np.ndarray, labels: np.ndarray) -> dict:
        k = len(self.names)
        lab = np.clip(labels.astype(np.int64, copy=False).ravel(), 0, k + 1)
        lab[lab > k] = 0
        sums = np.bincount(lab, weights=rel.astype(np.float64, copy=False).ravel(), minlength=k + 1)
        counts = np.bincount(lab, minlength=k + 1)
        out = {}
        for i, name in enumerate(self.names, 1):
            s = _safe_region(name)
            out[f"sum_{s}"] = float(sums[i])
            out[f"density_{s}"] = float(sums[i] / (counts[i] * self.voxel_ml)) if counts[i] else None
        out["sum_unlabelled"] = float(sums[0])
        return out


def _safe_region(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(name)).strip("_") or "region"


def read_label_names(path: Path | None, labels: np.ndarray | None = None) -> list[str]:
    """Names from a TSV/CSV (index + name columns), else region_<k> for every label value."""
    if path is not None:
        rows = read_table_rows(Path(path))
        header = list(rows[0].keys())
        icol = _find_column(header, ("index", "label", "value", "id", "idx"))
        ncol = _find_column(header, ("name", "region", "label_name", "structure"))
        if icol is None or ncol is None:
            raise InputError(f"label names need an index and a name column; the table has {', '.join(header)}",
                             path)
        table = {}
        for r in rows:
            try:
                table[int(float(r[icol]))] = r[ncol]
            except ValueError:
                raise InputError(f"label index {r[icol]!r} is not a number", path) from None
        table.pop(0, None)
        top = max(table) if table else 0
        return [table.get(i, f"region_{i}") for i in range(1, top + 1)]
    top = int(labels.max()) if labels is not None and labels.size else 0
    return [f"region_{i}" for i in range(1, top + 1)]


def read_labelmap(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"unreadable label map ({' '.join(str(exc).split())[:100]})", path) from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"a label map must be 3D, got shape {data.shape}", path)
    if data.dtype.kind == "f" and not np.allclose(data, np.round(data)):
        raise InputError("a label map must hold integer labels", path)
    if data.min() < 0 or data.max() > 32767:
        raise InputError("label values must lie in 0..32767", path)
    return np.round(data).astype(np.int32), img.affine


def labels_onto(labels: np.ndarray, grid_to_labels_ijk: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto a grid (4x4: grid voxel -> label-map voxel)."""
    from addiagnosis.prep.physical import resample

    return np.rint(resample(labels.astype(np.float32), grid_to_labels_ijk, shape, order="nearest")).astype(np.int32)


def model_grid_affine(card: dict) -> np.ndarray | None:
    """IJK->RAS of the model grid when it is fixed in template (MNI) space (preprocessing kind ``template``)."""
    spec = dict(card.get("preprocessing") or {})
    if spec.get("kind") != "template":
        return None
    from addiagnosis.prep.align import model_grid
    from addiagnosis.prep.physical import grid_affine

    shape, spacing, centre = model_grid(spec, dict(card["input_grid"]))
    return grid_affine(shape, spacing, centre)


def load_regions(card: dict, labels: str | None, names: str | None, per_scan: bool) -> Regions | None:
    """The label map (template space) on the model grid, or only names when label maps come per scan."""
    if not labels and not per_scan:
        return None
    shape = tuple(int(s) for s in card["input_grid"]["shape"])
    spacing = card["input_grid"].get("spacing") or [1.0, 1.0, 1.0]
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    names_path = Path(names) if names else None
    if not labels:
        kind = (card.get("preprocessing") or {}).get("kind")
        if kind == "seed-raw":  # raw voxels reshaped: no geometric map from the model grid onto a scan
            raise InputError("per-scan label maps need a model whose grid maps onto the scan (physical or template "
                             "preprocessing); this model's seed-raw preprocessing reshapes raw voxels")
        if names_path is None:
            raise InputError("per-scan label maps need --label-names (a TSV with index and name columns)")
        return Regions(read_label_names(names_path), None, voxel_ml)

    lpath = Path(labels)
    if not lpath.is_file():
        raise InputError("no such label map", lpath)
    g_aff = model_grid_affine(card)
    if g_aff is None:
        kind = (card.get("preprocessing") or {}).get("kind")
        raise InputError(f"--labels is a map in template space, but this model's grid ({kind} preprocessing) is "
                         "not: give per-scan label maps in a table's labels column instead", lpath)
    data, aff = read_labelmap(lpath)
    if names_path is None:
        for cand in (lpath.with_name(scan_stem(lpath) + ".tsv"), lpath.with_name(scan_stem(lpath) + ".csv")):
            if cand.is_file():
                names_path = cand
                break
    grid = labels_onto(data, np.linalg.inv(aff) @ g_aff, shape)
    return Regions(read_label_names(names_path, data), grid, voxel_ml, sha256_file(lpath))


def synthetic_labelmap(out: str | os.PathLike) -> tuple[Path, Path]:
    """A small label map of the MNI template (:mod:`.template`): medial temporal lobes, ventricles and lobes.

    Writes ``labels.nii.gz`` (2 mm MNI grid, NIfTI intent label) and ``labels.tsv`` (index, name).
    Coarse boxes in MNI mm inside the template brain, meant for tests and demonstrations, not anatomy.
    """
    import nibabel as nib
    from scipy import ndimage

    from addiagnosis.prep.template import atlas

    A = atlas()
    x, y, z = A.mni_coords()
    brain = A.brain
    lab = np.zeros(A.shape, np.int16)
    names = ["mtl_left", "mtl_right", "ventricles", "periventricular", "frontal", "parietal", "occipital",
             "temporal_lateral", "cerebellum", "central"]
    mtl = A.mtl_weight > 0.2
    peri = ndimage.binary_dilation(A.ventricles, iterations=2) & brain & ~A.ventricles
    rules = [
        (mtl & (x < 0)), (mtl & (x >= 0)), A.ventricles, peri,
        brain & (y > 0) & (z > -20),
        brain & (y <= 0) & (y > -70) & (z > 25),
        brain & (y <= -70) & (z > -10),
        brain & (np.abs(x) > 35) & (z <= 25) & (z > -45) & (y <= 0),
        brain & (z <= -25) & (y < -40),
        brain,
    ]
    for i, mask in enumerate(rules, 1):
        lab[(lab == 0) & mask] = i
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(lab, A.affine)
    img.header.set_intent("label")
    img.set_qform(A.affine, code=4)
    img.set_sform(A.affine, code=4)
    lpath, npath = out / "labels.nii.gz", out / "labels.tsv"
    nib.save(img, str(lpath))
    npath.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in enumerate(names, 1)))
    return lpath, npath


# ------------------------------------------------------------------------------------------ workers
_W: dict = {}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a killed batch not yet reaped by its parent is a zombie: dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _init_worker(card: dict, threads: int, parent: int | None = None) -> None:
    if parent:  # die with the batch: a killed batch leaves no orphans (a pool worker never sees EOF by itself)
        import threading

        def watch():
            while _alive(parent):
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="addiagnosis-parent-watch", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker must not inherit the batch's handler
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    except ImportError:
        pass
    _W["card"] = card


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, AddiagnosisError):
        return exc.problem
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = display_name(" ".join(str(exc).split()))[:200]
    return f"unexpected error ({type(exc).__name__}{': ' + text if text else ''})"


def prepare_job(job: dict) -> dict:
    """Worker step: hash, read, validate and preprocess one scan (everything picklable comes back)."""
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.prep.physical import prepare

    card = job.get("card") or _W["card"]
    path = Path(job["path"])
    res = {"ok": False, "sha256": "", "stat": _stat_key(path)}
    t0 = time.perf_counter()
    try:
        if not path.exists():
            raise InputError("no such file")
        res["sha256"] = sha256_file(path)
        vol = read_nifti(path)
        t1 = time.perf_counter()
        prep = prepare(vol, card)
        t2 = time.perf_counter()
        res.update(ok=True, tensor=prep.tensor.numpy().reshape(prep.tensor.shape[2:]), info=prep.info,
                   in_shape=list(vol.shape), ijk_to_ras=vol.ijk_to_ras.tolist(),
                   t_read=t1 - t0, t_prepare=t2 - t1)
        if job.get("labels"):
            data, aff = read_labelmap(Path(job["labels"]))
            if "grid_to_input_ijk" not in prep.info:
                raise InputError("this model's preprocessing gives no map onto the scan for its label map")
            g2i = np.asarray(prep.info["grid_to_input_ijk"])
            res["labels_grid"] = labels_onto(data, np.linalg.inv(aff) @ vol.ijk_to_ras @ g2i, res["tensor"].shape)
    except BaseException as exc:  # noqa: B902 - one bad scan is a row, never the end of the run
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        res.update(ok=False, error=_one_line(exc))
    res["t_worker"] = time.perf_counter() - t0
    return res


def map_to_input(rel_grid: np.ndarray, info: dict, in_shape) -> np.ndarray:
    """Relevance on the model grid -> the input grid, from the recorded transform (as ``Prepared.to_input``)."""
    from addiagnosis.prep.physical import resample_back, seed_raw_back

    if "grid_to_input_ijk" in info:
        return resample_back(np.asarray(info["grid_to_input_ijk"], dtype=np.float64), in_shape)(rel_grid)
    if info.get("kind") == "seed-raw":
        return seed_raw_back(info["slices_in_scan"], info["reshape"][1:], in_shape)(rel_grid)
    raise AddiagnosisError(f"cannot map relevance back for preprocessing {info.get('kind')!r}")


def finish_job(job: dict) -> dict:
    """Worker step: per-scan files (relevance on the input grid, report.json, overview.png), atomically."""
    from types import SimpleNamespace

    from addiagnosis.io.outputs import RESULT_FILES, OutputSet
    from addiagnosis.io.report import overview_png
    from addiagnosis.io.volume import Volume, read_nifti, write_nifti

    t0 = time.perf_counter()
    save = set(job["save"])
    record = job["record"]
    try:
        files = {}
        with OutputSet(job["folder"], replaces=RESULT_FILES) as out:
            rel = None
            if save & {"relevance", "overview"}:
                rel = Volume(map_to_input(job["rel_grid"], job["info"], job["in_shape"]), job["ijk_to_ras"],
                             f"{record['scan_id']} relevance")
            if "relevance" in save:
                write_nifti(rel, out.path("relevance.nii.gz"),
                            f"ADDiagnosis {record['method']} relevance for {record['target']}")
                files["relevance"] = "relevance.nii.gz"
            if "overview" in save:
                vol = read_nifti(job["path"])
                result = SimpleNamespace(relevance=rel, probabilities=record["probabilities"],
                                         predicted=record["predicted"], target=record["target"],
                                         method=record["method"], research_use=RESEARCH_USE,
                                         model_notice=job.get("notice"))
                overview_png(vol, result, out.path("overview.png"))
                files["overview"] = "overview.png"
            if "report" in save:
                files["report"] = "report.json"
                report = {"research_use": RESEARCH_USE, "scan": record, "model": job["model"],
                          "preprocessing": job["info"], "files": files}
                out.path("report.json").write_text(json.dumps(report, indent=2) + "\n")
        return {"ok": True, "files": files, "t_write": time.perf_counter() - t0}
    except BaseException as exc:  # noqa: B902
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return {"ok": False, "error": f"writing per-scan files failed: {_one_line(exc)}",
                "t_write": time.perf_counter() - t0}


class InlineExecutor:
    """``--workers 0``: the same jobs, run in this process (debugging, platforms without fork)."""

    def __init__(self, card: dict, threads: int):
        _W["card"] = card

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: B902
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _make_pool(workers: int, card: dict, threads: int, device: str = "cpu"):
    """Worker processes. On Linux with the model on the CPU they are forked from this process once the model
    card's preprocessing is warm (imports, template atlas): no start-up per worker, pages shared. With a GPU
    in this process (fork after CUDA is unsafe) and elsewhere they start fresh (forkserver or spawn)."""
    if workers <= 0:
        return InlineExecutor(card, threads)
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and str(device).startswith("cpu") and "fork" in methods:
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload(["addiagnosis.cohort.run", "addiagnosis.prep.physical", "addiagnosis.io.volume"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(card, threads, os.getpid()))


def _kill_pool(pool) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())
    try:
        pool.shutdown(wait=False, cancel_futures=True)
    except Exception:
        pass
    for p in procs:
        try:
            p.terminate()
        except Exception:
            pass
    for p in procs:
        try:
            p.join(2)
        except Exception:
            pass


# ------------------------------------------------------------------------------------------ progress
class Ticker:
    """Progress on stderr: done/total, scans/min, ETA; redrawn in place on a terminal, a line every 10 s else."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.shown = -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def rate(self, done: int) -> float:
        el = time.perf_counter() - self.t0
        return done / el * 60.0 if el > 0 else 0.0

    def __call__(self, done: int, failed: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        if final and not self.tty and self.shown == done:
            return
        self.shown = done
        self.last = now
        rate = self.rate(done)
        left = self.total - done
        eta = left / rate * 60.0 if rate > 0 else float("nan")
        eta_s = "--:--" if not math.isfinite(eta) else f"{int(eta // 60)}:{int(eta % 60):02d}"
        width = len(str(self.total))
        line = (f"[{done:>{width}}/{self.total}] {rate:6.1f} scans/min  ETA {eta_s}"
                + (f"  {failed} failed" if failed else ""))
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Options:
    out: Path
    model: str | None = None
    device: str = "cpu"
    method: str | None = "auto"
    target: str | None = None
    save: tuple = ()
    labels: str | None = None
    label_names: str | None = None
    workers: int | None = None
    threads: int = 1
    shard: tuple = (1, 1)
    strict: bool = False
    retry_errors: bool = False
    progress: bool | None = None
    window: int = 2  # prepared scans waiting per worker (keeps the model busy; bounds memory)
    merge_wait_s: float = 3600.0
    shard_given: bool = False  # --shard named: no automatic merge by rank 0 (torchrun only)


@dataclass
class RunSummary:
    total: int
    ok: int
    failed: int
    pending: int
    skipped: int
    seconds: float
    table: Path
    scans_per_min: float
    interrupted: bool = False
    merged: Path | None = None
    notice: str | None = None


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, n)


def _settings(diagnoser, method: str, target: str | None, regions: Regions | None, save) -> dict:
    pkg = diagnoser.package
    return {"model": pkg.name, "model_version": pkg.version,
            "weights_sha256": str(pkg.card.get("weights", {}).get("sha256", "")), "method": method,
            "target": target or "predicted", "labels_sha256": regions.sha256 if regions else "",
            "regions": list(regions.names) if regions else [], "save": sorted(save)}


def _check_run_file(out: Path, settings: dict, classes: list[str], n_shards: int) -> None:
    path = out / RUN
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        old_settings = old.get("settings") or {}
        diff = [k for k in settings if old_settings.get(k) != settings[k]]
        if old_settings and diff:
            k = diff[0]
            raise OutputError(f"holds results made with other settings ({k}: {old_settings.get(k)!r}, now "
                              f"{settings[k]!r}); choose another --out or remove the folder", out)
    doc = {"settings": settings, "classes": classes, "shards": n_shards}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")


def run(scans: list[Scan], opts: Options, log=None) -> RunSummary:
    """Diagnose ``scans`` (this shard's share of them) into ``opts.out``; see the module docstring."""
    import torch

    from addiagnosis.engine import get_diagnoser

    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a directory", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output directory is not writable ({exc.strerror or exc})", out) from None
    save = tuple(opts.save or ())
    bad = [s for s in save if s not in SAVE_CHOICES]
    if bad:
        raise InputError(f"--save {','.join(bad)}: choose from {', '.join(SAVE_CHOICES)}")
    k, n = opts.shard
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(opts.threads)))
    diagnoser = get_diagnoser(opts.model, opts.device)
    dev = str(diagnoser.device)
    card = diagnoser.package.card
    classes = diagnoser.package.class_names
    method = diagnoser.resolve_method(opts.method)
    target_idx = diagnoser.package.class_index(opts.target) if opts.target else None
    regions = load_regions(card, opts.labels, opts.label_names, any(s.labels for s in scans))
    settings = _settings(diagnoser, method, opts.target, regions, save)
    _check_run_file(out, settings, classes, n)
    pdir = part_dir(out, k, n)
    pdir.mkdir(parents=True, exist_ok=True)
    mine = shard_of(scans, k, n)
    columns = table_columns(scans, classes, regions)
    write_text_atomic(pdir / MANIFEST, json.dumps({"shard": [k, n], "columns": columns,
                                               "scans": [s.skeleton() for s in mine]}) + "\n")
    (pdir / DONE).unlink(missing_ok=True)

    # what is done already (any journal under out/): by file identity, else by content hash
    records = all_records(out)
    by_stat = {r["stat"]: r for r in records if r.get("stat")}
    by_sha = {r["sha256"]: r for r in records if r.get("sha256")}
    by_id = {r["scan_id"]: r for r in records}
    journal = Journal(pdir / JOURNAL).open()
    todo, skipped = [], 0

    for s in mine:
        rec = by_stat.get(_stat_key(s.path) or "")
        if rec is None and records and s.path.is_file():
            try:
                rec = by_sha.get(sha256_file(s.path))
            except OSError:  # unreadable now: it is run again and becomes a row with its one-line error
                rec = None
        if rec is not None and (rec.get("status") == "ok" or not opts.retry_errors):
            skipped += 1
            if by_id.get(s.scan_id) is not rec:  # the same content under this scan's name: no recomputation
                alias = {**rec, "scan_id": s.scan_id, "stat": _stat_key(s.path), "finished": time.time()}
                journal.append(alias)
            continue
        todo.append(s)

    brain_grid = None
    g_aff = model_grid_affine(card)
    if g_aff is not None:
        from addiagnosis.prep.align import model_grid, template_on_grid

        brain_grid = template_on_grid(*model_grid(dict(card["preprocessing"]), dict(card["input_grid"])))[1]
    notice = None
    if card.get("synthetic"):
        from addiagnosis.engine import SYNTHETIC_NOTICE

        notice = SYNTHETIC_NOTICE
    model_info = {"name": diagnoser.package.name, "version": diagnoser.package.version, "class_names": classes,
                  "notice": notice, "intended_use": card.get("intended_use")}

    workers = default_workers() if opts.workers is None else max(0, int(opts.workers))
    workers = min(workers, max(1, len(todo))) if workers else 0
    show = opts.progress if opts.progress is not None else sys.stderr.isatty()
    ticker = Ticker(len(todo), bool(show))
    if skipped:
        log(f"addiagnosis: {skipped} scan(s) already done in {out} (skipped)")

    done = failed = 0
    t_start = time.perf_counter()
    interrupted = False
    pool = None
    old_term = None
    if hasattr(signal, "SIGTERM"):
        try:
            old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            old_term = None

    def record_base(s: Scan, res: dict) -> dict:
        return {"scan_id": s.scan_id, "path": str(s.path), "sha256": res.get("sha256", ""),
                "stat": res.get("stat"), "finished": time.time()}

    def commit(rec: dict) -> None:
        nonlocal done, failed
        journal.append(rec)
        done += 1
        failed += rec["status"] != "ok"
        if rec["status"] != "ok":
            log(f"addiagnosis: error: {display_name(rec['path'])}: {display_name(rec['error'])}")
        ticker(done, failed)

    try:
        pool = _make_pool(workers, card, 1, dev) if todo else InlineExecutor(card, 1)
        queue = deque((s, 0) for s in todo)  # (scan, attempts)
        suspects: deque = deque()  # jobs in flight when a worker died: retried one at a time
        inflight: dict = {}  # future -> (kind, scan, tries, alone, job)
        limit = max(1, workers * max(1, opts.window)) if workers else 1
        state = {"broken": False}

        def submit(kind: str, s: Scan, tries: int, alone: bool, job: dict) -> None:
            try:
                fut = pool.submit(prepare_job if kind == "prep" else finish_job, job)
            except BrokenProcessPool:
                state["broken"] = True
                suspects.append((kind, s, tries + 1, job))
                return
            inflight[fut] = (kind, s, tries, alone, job)

        while queue or inflight or suspects:
            serial = bool(suspects) or any(v[3] for v in inflight.values())
            while not serial and queue and sum(1 for v in inflight.values() if v[0] == "prep") < limit:
                s, tries = queue.popleft()
                submit("prep", s, tries, False,
                       {"path": str(s.path), "labels": None if s.labels is None else str(s.labels)})
            if suspects and not inflight and not state["broken"]:
                kind, s, tries, job = suspects.popleft()
                submit(kind, s, tries, True, job)
            finished = wait(list(inflight), return_when=FIRST_COMPLETED)[0] if inflight else ()
            for fut in finished:
                kind, s, tries, alone, job = inflight.pop(fut)
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    state["broken"] = True
                    if alone:  # it broke the pool by itself: this scan is the culprit
                        commit({**record_base(s, {"stat": _stat_key(s.path)}), "status": "error",
                                "error": "the worker process died on this scan (crash or out of memory)"})
                    else:
                        suspects.append((kind, s, tries + 1, job))
                    continue
                if kind == "prep":
                    rec = record_base(s, res)
                    if not res["ok"]:
                        commit({**rec, "status": "error", "error": res["error"],
                                "t_total": round(res["t_worker"], 4)})
                        continue
                    rec, extra = _model_step(diagnoser, method, target_idx, s, res, rec, regions, brain_grid)
                    if rec["status"] == "ok" and save:
                        rec["output"] = f"scans/{s.name}"
                        submit("finish", s, tries, False,
                               {"save": save, "record": rec, "folder": str(out / "scans" / s.name),
                                "path": str(s.path), "notice": notice, "model": model_info, **extra})
                    else:
                        commit(rec)
                else:
                    rec = job["record"]
                    rec["t_write"] = round(res["t_write"], 4)
                    rec["t_total"] = round(rec["t_total"] + res["t_write"], 4)
                    if res["ok"]:
                        rec["files"] = res["files"]
                    else:
                        rec.update(status="error", error=res["error"])
                    commit(rec)
            if state["broken"]:  # a worker died: every job it may have held is retried alone in a new pool
                for fut in list(inflight):
                    kind, s, tries, alone, job = inflight.pop(fut)
                    suspects.append((kind, s, tries + 1, job))
                _kill_pool(pool)
                pool = _make_pool(workers, card, 1, dev)
                state["broken"] = False
        ticker(done, failed, final=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if pool is not None:
            if interrupted:
                _kill_pool(pool)
            else:
                pool.shutdown(wait=True)
        journal.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - t_start
    table, counts = write_part_results(out, pdir)
    if not interrupted:
        write_text_atomic(pdir / DONE, json.dumps({"finished": time.time(), "counts": counts}) + "\n")
    merged = None
    if n > 1 and k == 1 and not interrupted and os.environ.get("WORLD_SIZE") and not opts.shard_given:
        merged = _wait_and_merge(out, n, opts.merge_wait_s, log)
    return RunSummary(total=len(mine), ok=counts["ok"], failed=counts["error"], pending=counts["pending"],
                      skipped=skipped, seconds=seconds, table=table,
                      scans_per_min=done / seconds * 60.0 if seconds > 0 else 0.0, interrupted=interrupted,
                      merged=merged, notice=notice)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _model_step(diagnoser, method, target_idx, s: Scan, res: dict, rec: dict, regions: Regions | None,
                brain_grid) -> tuple[dict, dict]:
    """Main process: network + LRP on the model grid; summaries (and regional sums) from the grid."""
    import torch

    from addiagnosis.metrics import share_inside

    t0 = time.perf_counter()
    try:
        g = diagnoser.explain_tensor(torch.from_numpy(res["tensor"])[None, None], method, target_idx)
    except Exception as exc:
        return {**rec, "status": "error", "error": _one_line(exc)}, {}
    probs, pred, tgt, rel = g.probabilities, g.predicted, g.target, g.relevance
    names = diagnoser.package.class_names
    reg = (res["info"].get("registration") or {})
    pos = float(np.clip(rel, 0, None).sum(dtype=np.float64))
    rec.update({
        "status": "ok", "error": "", "probabilities": {c: float(p) for c, p in zip(names, probs)},
        "predicted": names[pred], "target": names[tgt], "method": method,
        "registration_correlation": reg.get("correlation"), "registration_quality": reg.get("quality"),
        "brain_share": share_inside(rel, brain_grid) if brain_grid is not None else None,
        "relevance_sum": float(rel.sum(dtype=np.float64)), "relevance_positive_sum": pos,
        "warnings": [str(w) for w in res["info"].get("warnings", [])],
    })
    if regions is not None:
        labels = res.get("labels_grid") if res.get("labels_grid") is not None else regions.grid
        if labels is not None:
            rec["regions"] = regions.values(rel, labels)
    t_model = time.perf_counter() - t0
    rec.update(t_read=round(res["t_read"], 4), t_prepare=round(res["t_prepare"], 4), t_model=round(t_model, 4),
               t_write=0.0, t_total=round(res["t_worker"] + t_model, 4))
    extra = {"rel_grid": rel, "info": res["info"], "in_shape": res["in_shape"], "ijk_to_ras": res["ijk_to_ras"]}
    return rec, extra


# ------------------------------------------------------------------------------------------ results table
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


def _load_run(out: Path) -> dict:
    try:
        return json.loads((out / RUN).read_text())
    except (OSError, ValueError):
        raise InputError(f"not a batch output folder (no readable {RUN})", out) from None


def write_part_results(out: Path, pdir: Path) -> tuple[Path, dict]:
    """results.tsv of one part (or of the single process) from its manifest and every journal under out."""
    manifest = json.loads((pdir / MANIFEST).read_text())
    classes = _load_run(out)["classes"]
    by_id = {r["scan_id"]: r for r in all_records(out)}
    rows = [row_for(sk, by_id.get(sk["scan_id"]), manifest["columns"], classes) for sk in manifest["scans"]]
    counts = {"ok": 0, "error": 0, "pending": 0}
    for r in rows:
        counts[r["status"] if r["status"] in counts else "error"] += 1
    return write_table(pdir / RESULTS, manifest["columns"], rows), counts


def merge(out: str | os.PathLike, shards: int | None = None) -> tuple[Path, dict]:
    """Join the shards' parts into ``out/results.tsv`` (the table one process gives); one-line error if a part
    is missing or unfinished."""
    out = Path(out)
    run_doc = _load_run(out)
    n = int(shards or run_doc.get("shards") or 1)
    if n == 1:
        if not (out / MANIFEST).is_file():
            raise InputError("nothing to merge (no manifest.json)", out)
        return write_part_results(out, out)
    columns, rows, missing = None, [], []
    by_id = {r["scan_id"]: r for r in all_records(out)}
    for k in range(1, n + 1):
        pdir = part_dir(out, k, n)
        if not (pdir / MANIFEST).is_file():
            missing.append(f"{k}/{n}")
            continue
        manifest = json.loads((pdir / MANIFEST).read_text())
        if columns is None:
            columns = manifest["columns"]
        elif manifest["columns"] != columns:
            raise InputError(f"shard {k}/{n} was run on a different input list or settings", pdir)
        rows += [row_for(sk, by_id.get(sk["scan_id"]), columns, run_doc["classes"]) for sk in manifest["scans"]]
    if missing:
        raise InputError(f"shard(s) {', '.join(missing)} have not run yet (run them with --shard K/N on the same "
                         "inputs and --out)", out)
    counts = {"ok": 0, "error": 0, "pending": 0}
    for r in rows:
        counts[r["status"] if r["status"] in counts else "error"] += 1
    return write_table(out / RESULTS, columns, rows), counts


def _wait_and_merge(out: Path, n: int, wait_s: float, log) -> Path | None:
    """Rank 0 under torchrun: wait for every shard's done.json, then merge."""
    t0 = time.time()
    while time.time() - t0 < wait_s:
        if all((part_dir(out, k, n) / DONE).is_file() for k in range(1, n + 1)):
            return merge(out, n)[0]
        time.sleep(2.0)
    log(f"addiagnosis: not every shard finished within {wait_s:.0f} s; run 'addiagnosis merge {out}' later")
    return None


# ------------------------------------------------------------------------------------------ CLI
