"""Model cards and package discovery (contract). Torch-free: the Slicer module, the CLI's ``models`` and the
web app list models and show cards without importing torch; :mod:`addiagnosis.models.package` adds the weights.

A model package is a folder holding ``card.json`` and the weights file the card names. The card is
validated when it is read (:func:`read_card`): every problem is one :class:`ModelError` line. Keys this
version does not know are kept (``ModelCard.extra``, and mapping access ``card["key"]``), so newer cards
still load.

Where packages are found (:func:`search_path`), in this order of precedence:

1. each folder of ``$ADDIAGNOSIS_MODEL_PATH`` (``os.pathsep``-separated), in the order given;
2. the user folder: ``$ADDIAGNOSIS_HOME/models`` (default ``$XDG_DATA_HOME/addiagnosis/models``, i.e.
   ``~/.local/share/addiagnosis/models``);
3. the bundled folder ``ADDiagnosis/Resources/Models``.

Inside one folder, packages are taken in the order of their folder names. A package that cannot be used
(unreadable or invalid card, weights missing or outside the folder) is skipped with a one-line warning on
the ``addiagnosis`` logger; the others are still listed.

Name collisions: ``--model NAME`` picks the first package called NAME in that order (the later ones are
*shadowed*; ``addiagnosis models`` shows which package shadows which). A plain ``diagnose`` (no
``--model``) never resolves a name: it runs the bundled default package (the bundled card with
``"default": true``, else the first bundled package), so a same-named package in the user folder or on
``$ADDIAGNOSIS_MODEL_PATH`` cannot replace it unnoticed. Only when nothing is bundled does it take the first
package marked ``"default": true`` on the search path, else the first package found. ``--model FOLDER``
(a path: it contains a separator, or no package has that name and the folder holds a card) uses that folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from addiagnosis.errors import ModelError
from addiagnosis.resources import BUNDLED_MODELS_DIR

SYNTHETIC_NOTICE = "Model trained on synthetic data: it demonstrates the method and says nothing about real patients."
CLASSES = ("CN", "EMCI", "MCI", "LMCI", "AD")  # the stages, in order of severity

AUTO_METHOD = "auto"  # the model card's recommended method (``explanation.method``), else DEFAULT_METHOD
# Explanation methods by name, defined here only; explain.rules registers one implementation per name (tested).
METHODS = ("lrp-reference-alpha1.25beta0.25", "lrp-reference-alpha1beta0", "lrp-reference", "lrp-alpha1beta0",
           "lrp-epsilon", "lrp-composite", "gradient-x-input", "guided-backprop")
DEFAULT_METHOD = "lrp-alpha1beta0"
METHOD_CHOICES = (AUTO_METHOD, *METHODS)

CARD = "card.json"
FORMAT = "addiagnosis-model/1"
BUNDLED_DIR = BUNDLED_MODELS_DIR
MAX_CARD_BYTES = 8 << 20  # the bundled card is 20 KB
MAX_DEPTH = 32  # nesting of JSON objects/lists in a card
MAX_GRID = 4096  # voxels along one axis of the model grid
ORIGINS = ("env", "user", "bundled", "path")  # where a package was found

log = logging.getLogger("addiagnosis")
_NAME_BAD = re.compile(r"[/\\:\x00-\x1f\x7f]")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")


# ------------------------------------------------------------------------------------------ the schema
@dataclass(frozen=True)
class InputGrid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] | None  # mm; None: the input's own grid (seed-raw)
    orientation: str = ""


@dataclass(frozen=True)
class Preprocessing:
    kind: str
    spec: dict  # the whole ``preprocessing`` object (kind included), as the preprocessing registry reads it


@dataclass(frozen=True)
class Explanation:
    method: str | None = None  # recommended method; unknown names fall back to DEFAULT_METHOD


@dataclass(frozen=True)
class Weights:
    file: str  # relative to the package folder, never outside it
    sha256: str
    format: str = "torch-state-dict"


@dataclass(frozen=True)
class Conformal:
    """The card's ``conformal`` block: split-conformal prediction sets (addiagnosis.research.calibration)."""

    coverage: float  # e.g. 0.9: the set holds the true class this often (on data like the calibration split)
    threshold: float  # a class is in the set when 1 - p(class) <= threshold

    def classes(self, probabilities: Mapping[str, float]) -> list[str]:
        """The set for one scan, in class order (``probabilities``: class name -> calibrated probability)."""
        names = list(probabilities)
        return [names[i] for i in prediction_set([probabilities[n] for n in names], self.threshold)]


def prediction_set(probabilities, threshold: float) -> list[int]:
    """Indices of the classes whose score 1 - p is at most ``threshold``; never empty (else the most probable)."""
    probs = [float(p) for p in probabilities]
    members = [i for i, p in enumerate(probs) if 1.0 - p <= threshold]
    return members or [max(range(len(probs)), key=probs.__getitem__)]


@dataclass(frozen=True, eq=False)
class ModelCard(Mapping):
    """A validated ``card.json``. Typed fields for what the code uses; ``card["key"]`` reads the JSON itself."""

    name: str
    version: str
    class_names: tuple[str, ...]
    input_grid: InputGrid
    preprocessing: Preprocessing
    intended_use: str
    training_data: str
    weights: Weights | None = None  # None only for a card not yet written into a package
    explanation: Explanation = field(default_factory=Explanation)
    metrics: dict | None = None
    evaluation: dict | None = None
    calibration: dict | None = None  # temperature scaling, already folded into the weights (issue 19)
    conformal: Conformal | None = None  # prediction sets (issue 19)
    notice: str | None = None
    limitations: str | None = None
    synthetic: bool = False
    default: bool = False
    format: str = FORMAT
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they are
    raw: dict = field(default_factory=dict, repr=False)  # the JSON object as read

    # Mapping over the JSON object: code that reads a card as a dict keeps working.
    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def recommended_method(self) -> str:
        m = self.explanation.method
        return m if m in METHODS else DEFAULT_METHOD

    @property
    def notices(self) -> list[str]:
        """Lines to show wherever this model's result is shown (the research-use line is shown anyway)."""
        return [SYNTHETIC_NOTICE] if self.synthetic else []

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.raw))

    @classmethod
    def from_dict(cls, data: Any, folder: str | os.PathLike | None = None,
                  require_weights: bool = True) -> ModelCard:
        """Validate a card (as parsed from JSON); ``folder``: the package folder its weights must lie in."""
        return _parse(data, None if folder is None else Path(folder), require_weights)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _fail(key: str, want: str, got: Any = None, show: bool = True) -> ModelError:
    tail = f" (got {_kind(got)})" if show else ""
    return ModelError(f"model card: '{key}' must be {want}{tail}")


def _text(data: dict, key: str, required: bool = True, nonempty: bool = True, one_line: bool = False,
          max_len: int = 100_000) -> str | None:
    if key not in data or data[key] is None:
        if required:
            raise ModelError(f"model card lacks '{key}'") if key not in data else _fail(key, "text", None)
        return None
    v = data[key]
    if not isinstance(v, str):
        raise _fail(key, "text", v)
    if nonempty and not v.strip():
        raise _fail(key, "non-empty text", show=False)
    if one_line and re.search(r"[\x00-\x1f\x7f]", v):
        raise _fail(key, "one line of text without control characters", show=False)
    if len(v) > max_len:
        raise _fail(key, f"at most {max_len} characters", show=False)
    return v


def _obj(data: dict, key: str, required: bool = True) -> dict | None:
    if key not in data:
        if required:
            raise ModelError(f"model card lacks '{key}'")
        return None
    v = data[key]
    if v is None and not required:
        return None
    if not isinstance(v, dict):
        raise _fail(key, "an object", v)
    return v


def _flag(data: dict, key: str) -> bool:
    v = data.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _fail(key, "true or false", v)
    return v


def _check_json(value: Any, limit: int = MAX_DEPTH) -> None:
    """Bounded nesting, and text that can be printed (no lone surrogates from ``\\ud800`` escapes)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise ModelError("model card holds text that is not valid Unicode")
            continue
        if isinstance(v, dict):
            items = [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple)):
            items = v
        else:
            continue
        if depth >= limit:
            raise ModelError(f"model card: nested more than {limit} levels deep")
        stack.extend((x, depth + 1) for x in items)


def check_name(name: Any, what: str = "model name") -> str:
    """A package name that is safe as a folder name: no separators, no '..', no control characters."""
    if not isinstance(name, str):
        raise ModelError(f"invalid {what}: must be text (got {_kind(name)})")
    if (not name or len(name) > 100 or name != name.strip() or name.startswith((".", "-"))
            or _NAME_BAD.search(name)):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise ModelError(f"invalid {what} {shown!r} (1-100 characters, no '/', '\\', ':' or control characters, "
                         "not starting with '.' or '-')")
    return name


def check_weights_file(file: str, folder: Path | None = None) -> str:
    """The weights file named by a card: a relative path that stays inside the package folder."""
    p = PurePosixPath(file)
    if (not file or "\\" in file or "\x00" in file or ":" in file or p.is_absolute() or ".." in p.parts
            or p.name in ("", ".")):
        raise ModelError(f"model card: 'weights.file' must be a file name inside the package folder (got {file!r})")
    if folder is not None:
        root = folder.resolve()
        target = (root / file).resolve()
        if target == root or root not in target.parents:
            raise ModelError(f"model card: 'weights.file' {file!r} points outside the package folder")
    return file


def _numbers(v: Any, key: str, n: int, want: str, integer: bool, lo: float, hi: float) -> tuple:
    if not isinstance(v, (list, tuple)) or len(v) != n:
        raise _fail(key, want, v)
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or (integer and not isinstance(x, int)):
            raise _fail(key, want, x)
        if not lo <= x <= hi:  # NaN and infinities fail too; huge integers are compared exactly
            raise _fail(key, want, show=False)
        out.append(int(x) if integer else float(x))
    return tuple(out)


def _json_copy(data: dict) -> dict:
    """A private copy, as it reads back from disk (tuples become lists); nesting and keys checked first."""
    _check_json(data)
    if any(not isinstance(k, str) for k in data):
        raise ModelError("model card: keys must be text")
    try:
        return json.loads(json.dumps(data))
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model card holds a value that is not JSON ({' '.join(str(exc).split())[:80]})") from None


def _format(data: dict) -> str:
    fmt = data.get("format", FORMAT)
    if not isinstance(fmt, str):
        raise _fail("format", "text", fmt)
    if fmt != FORMAT:
        if fmt.startswith("addiagnosis-model/"):
            raise ModelError(f"model card format {fmt!r} is not {FORMAT!r} (a newer ADDiagnosis may read it)")
        raise ModelError(f"not an ADDiagnosis model card (format {fmt[:40]!r})")
    return fmt


def _version(data: dict) -> str:
    if "version" not in data:
        raise ModelError("model card lacks 'version'")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise _fail("version", "text", version)
    version = str(version)
    if not version.strip() or len(version) > 100 or re.search(r"[\x00-\x1f\x7f]", version):
        raise _fail("version", "one line of text (1-100 characters)", show=False)
    return version


def _class_names(data: dict) -> list:
    if "class_names" not in data:
        raise ModelError("model card lacks 'class_names'")
    classes = data["class_names"]
    if not isinstance(classes, list) or not 2 <= len(classes) <= 1000:
        raise _fail("class_names", "a list of 2 to 1000 class names", classes)
    seen = {}
    for c in classes:
        if not isinstance(c, str):
            raise _fail("class_names", "a list of text", c)
        if not c.strip() or c != c.strip() or len(c) > 100 or re.search(r"[\x00-\x1f\x7f]", c):
            raise _fail("class_names", "non-empty one-line names (at most 100 characters, no outer spaces)",
                        show=False)
        if c.lower() in seen:
            raise ModelError(f"model card: class name {c!r} appears twice in 'class_names'")
        seen[c.lower()] = c
    return classes


def _weights(w: dict | None, folder: Path | None) -> Weights | None:
    if w is None:
        return None
    file = w.get("file")
    if not isinstance(file, str):
        raise _fail("weights.file", "text", file)
    sha = w.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _fail("weights.sha256", "64 hexadecimal digits", sha, show=not isinstance(sha, str))
    wfmt = w.get("format", "torch-state-dict")
    if wfmt != "torch-state-dict":
        raise ModelError(f"model card: weights format {str(wfmt)[:40]!r} is not 'torch-state-dict'")
    return Weights(check_weights_file(file, folder), sha.lower(), wfmt)


def _parse(data: Any, folder: Path | None, require_weights: bool) -> ModelCard:
    if not isinstance(data, dict):
        raise ModelError(f"model card must be a JSON object (got {_kind(data)})")
    data = _json_copy(data)
    fmt = _format(data)
    name = check_name(_text(data, "name", one_line=True), "model name")
    version = _version(data)

    classes = _class_names(data)

    grid = _obj(data, "input_grid")
    if "shape" not in grid:
        raise ModelError("model card lacks 'input_grid.shape'")
    shape = _numbers(grid["shape"], "input_grid.shape", 3, f"a list of 3 integers from 1 to {MAX_GRID}", True,
                     1, MAX_GRID)
    spacing = grid.get("spacing")
    if spacing is not None:
        spacing = _numbers(spacing, "input_grid.spacing", 3, "null or a list of 3 positive numbers (mm)", False,
                           1e-3, 1e3)
    orientation = _text(grid, "orientation", required=False, nonempty=False) or ""

    pre = _obj(data, "preprocessing")
    kind = pre.get("kind")
    if not isinstance(kind, str) or not kind.strip():
        raise _fail("preprocessing.kind", "non-empty text", kind)

    intended_use = _text(data, "intended_use")
    training_data = _text(data, "training_data", nonempty=False)

    weights = _weights(_obj(data, "weights", required=require_weights), folder)

    exp = _obj(data, "explanation", required=False) or {}
    method = exp.get("method")
    if method is not None and not isinstance(method, str):
        raise _fail("explanation.method", "text", method)

    known = {"format", "name", "version", "class_names", "input_grid", "preprocessing", "intended_use",
             "training_data", "weights", "explanation", "metrics", "evaluation", "notice", "limitations",
             "synthetic", "default"}
    known |= {"calibration", "conformal"}
    calibration, conformal = _calibration_blocks(data)
    return ModelCard(
        name=name, version=version, class_names=tuple(classes),
        input_grid=InputGrid(shape, spacing, orientation),
        preprocessing=Preprocessing(kind, pre),
        intended_use=intended_use, training_data=training_data, weights=weights,
        explanation=Explanation(method),
        metrics=_obj(data, "metrics", required=False), evaluation=_obj(data, "evaluation", required=False),
        calibration=calibration, conformal=conformal,
        notice=_text(data, "notice", required=False, nonempty=False),
        limitations=_text(data, "limitations", required=False, nonempty=False),
        synthetic=_flag(data, "synthetic"), default=_flag(data, "default"), format=fmt,
        extra={k: v for k, v in data.items() if k not in known}, raw=data,
    )


def _calibration_blocks(data: dict) -> tuple[dict | None, Conformal | None]:
    """The optional ``calibration`` (temperature > 0) and ``conformal`` (coverage, threshold) blocks."""
    calib = _obj(data, "calibration", required=False)
    if calib is not None:
        t = calib.get("temperature")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1e6:
            raise _fail("calibration.temperature", "a positive number", t)
    conf = _obj(data, "conformal", required=False)
    if conf is None:
        return calib, None
    values = []
    for key, lo, hi in (("coverage", 0.0, 1.0), ("threshold", 0.0, 1.0)):
        v = conf.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or (key == "coverage"
                                                                                          and v in (lo, hi)):
            raise _fail(f"conformal.{key}", f"a number between {lo:g} and {hi:g}", v)
        values.append(float(v))
    return calib, Conformal(*values)


def _no_duplicate_keys(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:40]!r} appears twice")
        out[k] = v
    return out


def parse_card(text: bytes | str, folder: str | os.PathLike | None = None, require_weights: bool = True) -> ModelCard:
    """A card from the bytes of ``card.json``: UTF-8 JSON, one object, no duplicate keys, validated."""
    if isinstance(text, bytes):
        if len(text) > MAX_CARD_BYTES:
            raise ModelError(f"model card is larger than {MAX_CARD_BYTES >> 20} MB")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ModelError("model card is not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ModelError(f"model card: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise ModelError(f"model card is not valid JSON ({' '.join(str(exc).split())[:100]})") from None
    return ModelCard.from_dict(data, folder, require_weights)


def read_card(folder: str | os.PathLike, require_weights: bool = True) -> ModelCard:
    """The validated card of a package folder (its weights must name a file inside the folder)."""
    folder = Path(folder)
    path = folder / CARD
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"unreadable model card ({exc.strerror or type(exc).__name__})", path) from None
    try:
        return parse_card(raw, folder, require_weights)
    except ModelError as exc:
        raise ModelError(exc.problem, path) from None


def recommended_method(card: ModelCard | Mapping) -> str:
    """The card's ``explanation.method`` when it names a known method, else :data:`DEFAULT_METHOD`."""
    if isinstance(card, ModelCard):
        return card.recommended_method
    exp = card.get("explanation")
    method = exp.get("method") if isinstance(exp, Mapping) else None
    return method if method in METHODS else DEFAULT_METHOD


def card_text(card: ModelCard | Mapping) -> str:
    """A few lines describing a model (the Slicer module's tooltip and card panel)."""
    if not isinstance(card, ModelCard):
        card = ModelCard.from_dict(dict(card), require_weights=False)
    g = card.input_grid
    grid = "x".join(str(s) for s in g.shape) + " voxels"
    if g.spacing:
        grid += " at " + " x ".join(f"{s:g}" for s in g.spacing) + " mm"
    if g.orientation:
        grid += f" ({g.orientation})"
    lines = [f"{card.name} {card.version}",
             f"classes: {', '.join(card.class_names)}",
             f"input grid: {grid}",
             f"preprocessing: {card.preprocessing.kind}",
             f"explanation: {card.recommended_method} (recommended)",
             f"intended use: {card.intended_use}",
             f"training data: {card.training_data or '?'}"]
    return "\n".join(lines + card.notices)
