"""What the GUI and the worker say to each other: one dataclass per message, an enum of kinds, JSON lines.

GUI -> worker (the worker's stdin): :class:`Load` (import torch, load a model, prepare its method ahead of the
first click), :class:`Diagnose` (one job), :class:`Quit`. Worker -> GUI (its stdout): :class:`Ready`,
:class:`Progress`, :class:`Done`, :class:`Failed`, :class:`Bye`. A line that is not a message (a library
printing something) is ignored.

Voxels do not go through the pipe: each job has a folder with ``volume.npy`` (voxels in IJK order, as the node
holds them) and ``ijk_to_ras.npy`` (4x4 float64) in, ``relevance.npy`` (float32, the input's grid) and
``result.json`` (the result's other fields) out, written under temporary names and renamed, ``result.json``
last. ``.npy`` keeps dtype, shape and every bit of the matrix.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from dataclasses import dataclass, field

import numpy as np

from addiagnosis import RESEARCH_USE
from addiagnosis.files import atomic_file
from addiagnosis.io.volume import Volume


class Kind(str, enum.Enum):
    LOAD = "load"
    DIAGNOSE = "diagnose"
    QUIT = "quit"
    READY = "ready"
    PROGRESS = "progress"
    DONE = "done"
    FAILED = "failed"
    BYE = "bye"


@dataclass
class Load:
    """Load ``model`` (a package folder or name; None: the default) on ``device`` and prepare ``method``."""

    model: str | None = None
    method: str = "auto"
    device: str = "cpu"


@dataclass
class Diagnose:
    """One diagnosis: the scan is in ``folder`` (``volume.npy``, ``ijk_to_ras.npy``), the result goes there."""

    job: int
    folder: str
    name: str = "volume"
    model: str | None = None
    method: str = "auto"
    target: str | None = None
    device: str = "cpu"


@dataclass
class Quit:
    pass


@dataclass
class Ready:
    """The worker is up (imports done): its process id, and how long it took to start."""

    pid: int
    seconds: float = 0.0


@dataclass
class Progress:
    job: int
    fraction: float
    stage: str


@dataclass
class Done:
    """The job's result is in its folder; ``worker``: pid, seconds, peak memory, whether the model was loaded."""

    job: int
    worker: dict = field(default_factory=dict)


@dataclass
class Failed:
    """One line for the user (``job`` -1: not about a job, e.g. a failed :class:`Load`); ``code`` 2: bad input."""

    job: int
    message: str
    code: int = 1


@dataclass
class Bye:
    """The worker is leaving on its own (``reason``: idle, parent gone, quit)."""

    reason: str


MESSAGES = {Kind.LOAD: Load, Kind.DIAGNOSE: Diagnose, Kind.QUIT: Quit, Kind.READY: Ready, Kind.PROGRESS: Progress,
            Kind.DONE: Done, Kind.FAILED: Failed, Kind.BYE: Bye}
KINDS = {cls: kind for kind, cls in MESSAGES.items()}


def encode(message) -> bytes:
    """One JSON line: ``{"kind": ..., <the dataclass's fields>}``."""
    data = dataclasses.asdict(message)
    data["kind"] = KINDS[type(message)].value
    return (json.dumps(data) + "\n").encode("utf-8")


def decode(line):
    """The message on ``line`` (bytes or str), or None where the line is not one of ours."""
    try:
        data = json.loads(line)
        cls = MESSAGES[Kind(data.pop("kind"))]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------ the job folder
@dataclass
class WorkerResult:
    """What the worker sends back: the engine's DiagnosisResult fields the scene and the panel use.

    Fields the engine adds later arrive in ``extra`` (and as attributes through it) without a change here."""

    model_name: str
    model_version: str
    class_names: list
    logits: list
    probabilities: dict
    predicted: str
    target: str
    method: str
    relevance: Volume
    summary: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    device: str = "cpu"
    warnings: list = field(default_factory=list)
    model_notice: str | None = None
    model_intended_use: str | None = None
    research_use: str = RESEARCH_USE
    qc: dict | None = None  # {"verdict": "pass"|"warn"|"fail", "reasons": [...]}, when the engine gives one
    prediction_set: list | None = None
    worker: dict = field(default_factory=dict)  # pid, seconds, peak memory
    extra: dict = field(default_factory=dict)

    def __getattr__(self, name):  # only called for names that are not fields
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(name)


def write_request(folder: str, volume: Volume) -> None:
    np.save(os.path.join(folder, "volume.npy"), np.ascontiguousarray(volume.array), allow_pickle=False)
    np.save(os.path.join(folder, "ijk_to_ras.npy"), np.asarray(volume.ijk_to_ras, dtype=np.float64),
            allow_pickle=False)


def read_request(task: Diagnose) -> Volume:
    array = np.load(os.path.join(task.folder, "volume.npy"), allow_pickle=False)
    aff = np.load(os.path.join(task.folder, "ijk_to_ras.npy"), allow_pickle=False)
    return Volume(array, aff, task.name or "volume")


def write_result(folder: str, result) -> None:
    """The engine's result into ``folder``: every dataclass field but the relevance goes to ``result.json``."""
    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "relevance"}
    data["relevance_name"] = result.relevance.name
    with atomic_file(os.path.join(folder, "relevance.npy")) as tmp:
        np.save(tmp, np.asarray(result.relevance.array, dtype=np.float32), allow_pickle=False)
    with atomic_file(os.path.join(folder, "result.json")) as tmp:
        tmp.write_text(json.dumps(data, default=_plain))


def read_result(folder: str, worker: dict) -> WorkerResult:
    with open(os.path.join(folder, "result.json")) as fh:
        data = json.load(fh)
    rel = np.load(os.path.join(folder, "relevance.npy"), allow_pickle=False)
    aff = np.load(os.path.join(folder, "ijk_to_ras.npy"), allow_pickle=False)
    names = {f.name for f in dataclasses.fields(WorkerResult)} - {"relevance", "worker", "extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names and k != "relevance_name"}
    return WorkerResult(relevance=Volume(rel, aff, data.get("relevance_name", "relevance")), worker=worker,
                        extra=extra, **known)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)
