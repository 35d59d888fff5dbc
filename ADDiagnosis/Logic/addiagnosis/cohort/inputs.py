"""Cohort inputs: which scans a batch runs, with their ids, subjects, sessions, groups and carried columns.

A folder (recursive ``.nii``/``.nii.gz``), a BIDS dataset (``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``;
``participants.tsv`` columns are carried into the results), a TSV/CSV table with a path column (optional
subject/session/group/labels columns; every other column is carried), a text file with one path per line, or
single scan files. A subject listed twice with one group is a warning line; with two groups, a one-line error.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from addiagnosis.errors import InputError, display_name
from addiagnosis.files import scan_stem

NIFTI_EXT = (".nii", ".nii.gz")
PATH_COLUMNS = ("path", "scan", "file", "filename", "image", "t1", "t1w", "nifti")
SUBJECT_COLUMNS = ("subject", "participant_id", "subject_id", "participant", "ptid")
SESSION_COLUMNS = ("session", "session_id", "ses", "visit", "viscode")
GROUP_COLUMNS = ("group", "diagnosis", "dx", "class", "label", "dx_bl")
LABELS_COLUMNS = ("labels", "label_map", "labelmap", "atlas")
EXPECTED = ("a folder of .nii/.nii.gz scans or DICOM series folders, a BIDS dataset "
            "(sub-*/[ses-*/]anat/*_T1w.nii[.gz]), a TSV/CSV table with a path column, or a text file with one scan "
            "path per line")


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


def table_column(header: list[str], wanted, explicit: str | None = None, what: str = "") -> str | None:
    """The header's column among ``wanted``, or the one named ``explicit`` (a one-line error if it is absent)."""
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
    col = table_column(header, GROUP_COLUMNS, group_column, "group")
    return (row.get(col, "") if col else ""), col


def check_repeated_subjects(entries, path: Path, log) -> None:
    """``entries``: (subject, session, group) per table row. A subject (and session) listed twice with two groups
    is refused in one line naming it (it would land in either group for ``compare``); with the same group, one
    warning line names every repeated subject."""
    groups: dict[tuple[str, str], str] = {}
    repeated: list[str] = []
    for subject, session, group in entries:
        if not subject:
            continue
        key = (subject, session)
        who = subject + (f" (session {session})" if session else "")
        if key in groups and groups[key] != group:
            raise InputError(f"subject {display_name(who)} is listed twice with different groups "
                             f"({display_name(groups[key])!r} and {display_name(group)!r}); keep one", path)
        if key in groups and who not in repeated:
            repeated.append(who)
        groups[key] = group
    if repeated:
        shown = ", ".join(display_name(w) for w in repeated[:5]) + (" ..." if len(repeated) > 5 else "")
        log(f"addiagnosis: warning: {display_name(path)}: {len(repeated)} subject(s) listed more than once with "
            f"the same group: {shown}")


def discover_table(path: Path, path_column: str | None = None, group_column: str | None = None,
                   log=None) -> list[Scan]:
    rows = read_table_rows(path)
    header = list(rows[0].keys())
    pcol = table_column(header, PATH_COLUMNS, path_column, "path")
    if pcol is None:
        raise InputError(f"the table has no path column (expected one of {', '.join(PATH_COLUMNS)}, or name it "
                         f"with --path-column); it has {', '.join(header)}", path)
    scol = table_column(header, SUBJECT_COLUMNS)
    vcol = table_column(header, SESSION_COLUMNS)
    lcol = table_column(header, LABELS_COLUMNS)
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
    check_repeated_subjects([(s.subject, s.session, s.group) for s in scans], path, log or _stderr)
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


def _participants(ptsv: Path, group_column: str | None, log) -> tuple[dict[str, dict], list[str]]:
    """participants.tsv of a BIDS dataset: ``sub-<id>`` -> its other columns, and the header."""
    rows = read_table_rows(ptsv)
    header = list(rows[0].keys())
    pid = table_column(header, ("participant_id",) + SUBJECT_COLUMNS)
    if pid is None:
        raise InputError("participants.tsv has no participant_id column", ptsv)
    participants: dict[str, dict] = {}
    keys = []
    for r in rows:
        key = r[pid] if r[pid].startswith("sub-") else f"sub-{r[pid]}"
        participants[key] = {k: v for k, v in r.items() if k != pid}
        keys.append((key, "", _group_of(r, header, group_column)[0]))
    check_repeated_subjects(keys, ptsv, log)
    return participants, header


def discover_bids(root: Path, group_column: str | None = None, log=None) -> list[Scan]:
    files = sorted({*root.glob("sub-*/anat/*_T1w.nii*"), *root.glob("sub-*/ses-*/anat/*_T1w.nii*")})
    files = [f for f in files if _is_nifti(f)]
    if not files:
        raise InputError("a BIDS dataset without T1w scans: expected sub-*/[ses-*/]anat/*_T1w.nii[.gz]", root)
    participants: dict[str, dict] = {}
    header: list[str] = []
    ptsv = root / "participants.tsv"
    if ptsv.is_file():
        participants, header = _participants(ptsv, group_column, log or _stderr)
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
    """NIfTI files, and folders holding DICOM files (each one scan: its series, read by io.volume.read_scan)."""
    from addiagnosis.io.dicom import is_dicom_file

    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".")
                             and (exclude is None or (d / n).resolve() != exclude))
        if any(not n.startswith(".") and not _is_nifti(d / n) and is_dicom_file(d / n) for n in filenames):
            files.append(d)  # a DICOM series folder: one scan
            dirnames[:] = []
            continue
        files += [d / n for n in filenames if _is_nifti(d / n)]
    files.sort()
    if not files:
        raise InputError(f"found no .nii/.nii.gz scans or DICOM series; expected {EXPECTED}", root)
    if files == [root]:
        return [Scan(root, scan_stem(root))]
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


def _discover_one(p: Path, path_column: str | None, group_column: str | None, excl: Path | None,
                  log) -> list[Scan]:
    """The scans one input names (a folder, BIDS dataset, table, list or scan file)."""
    if p.is_dir():
        ptsv = p / "participants.tsv"
        if is_bids(p):
            return discover_bids(p, group_column, log)
        if ptsv.is_file() and table_column(list(read_table_rows(ptsv)[0]), PATH_COLUMNS, path_column):
            return discover_table(ptsv, path_column, group_column, log)
        return discover_folder(p, excl)
    if p.name.endswith(NIFTI_EXT):  # named explicitly: hidden names too; a missing file is an error row
        return [Scan(p, scan_stem(p))]
    if not p.exists():
        raise InputError(f"no such file or folder; expected {EXPECTED}", p)
    if p.suffix.lower() in (".tsv", ".csv"):
        return discover_table(p, path_column, group_column, log)
    if p.suffix.lower() in (".txt", ".lst", ".list"):
        return discover_list(p)
    raise InputError(f"unknown input layout; expected {EXPECTED}", p)


def discover(inputs, path_column: str | None = None, group_column: str | None = None,
             exclude: str | os.PathLike | None = None, log=None) -> list[Scan]:
    """Every scan named by ``inputs`` (files, folders, BIDS datasets, tables, lists), with unique ids and names.
    ``log`` takes warning lines (default: stderr)."""
    excl = Path(exclude).resolve() if exclude else None
    scans: list[Scan] = []
    for raw in inputs:
        scans += _discover_one(Path(raw), path_column, group_column, excl, log or _stderr)
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


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
