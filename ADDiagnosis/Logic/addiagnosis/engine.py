"""The one path: Volume -> preprocessing -> network -> probabilities -> LRP -> relevance on the input grid.

Every front end (CLI, Slicer module, web app, self-test) calls :func:`diagnose` (or a
:class:`Diagnoser` it keeps) and nothing else for these steps.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from addiagnosis import RESEARCH_USE, __version__
from addiagnosis.errors import AddiagnosisError, ModelError
from addiagnosis.explain import clusters as map_reading
from addiagnosis.explain.lrp import FastLRP
from addiagnosis.explain.rules import REFERENCE_METHODS
from addiagnosis.io.checks import check_volume
from addiagnosis.io.volume import Volume
from addiagnosis.metrics import share_inside
from addiagnosis.models import ood as ood_model
from addiagnosis.models.card import AUTO_METHOD, METHOD_CHOICES, METHODS, SYNTHETIC_NOTICE
from addiagnosis.models.package import ModelPackage, find_package
from addiagnosis.prep import qc as quality
from addiagnosis.prep.physical import Prepared, prepare, reference_input
from addiagnosis.prep.template import use_package_template

ProgressCallback = Callable[[str, float], None]  # (stage text, fraction done)


@dataclass
class DiagnosisResult:
    model_name: str
    model_version: str
    class_names: list[str]
    logits: list[float]
    probabilities: dict[str, float]
    predicted: str
    target: str
    method: str
    relevance: Volume  # exactly the input's shape and IJK->RAS
    summary: dict
    preprocessing: dict
    timings: dict = field(default_factory=dict)
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)  # e.g. poor template registration
    model_notice: str | None = None  # e.g. "trained on synthetic data" (shown wherever the result is)
    model_intended_use: str | None = None
    research_use: str = RESEARCH_USE
    model_path: str | None = None  # the package folder the model came from
    weights_sha256: str | None = None  # of the weights file actually loaded (checked against the card)
    qc: dict | None = None  # {verdict, reasons: [{check, verdict, detail}], ood: {score, percentile, threshold}}
    prediction_set: list[str] | None = None  # split-conformal set of stages (the card's ``conformal`` block)
    prediction_set_coverage: float | None = None  # e.g. 0.9
    # clusters, regions per atlas region, the atlas and the cluster threshold (explain.clusters.read_map)
    reading: dict | None = None

    def report(self, input_volume: Volume | None = None, extra: dict | None = None) -> dict:
        rep = {
            "research_use": self.research_use,
            "model": {"name": self.model_name, "version": self.model_version, "class_names": self.class_names,
                      "notice": self.model_notice, "intended_use": self.model_intended_use,
                      "path": self.model_path, "weights_sha256": self.weights_sha256},
            "probabilities": self.probabilities,
            "logits": dict(zip(self.class_names, self.logits)),
            "predicted_class": self.predicted,
            **({"prediction_set": {"coverage": self.prediction_set_coverage, "classes": list(self.prediction_set)}}
               if self.prediction_set is not None else {}),
            "target_class": self.target,
            "method": self.method,
            "relevance_summary": self.summary,
            "preprocessing": self.preprocessing,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "device": self.device,
            "warnings": list(self.warnings),
            "qc": self.qc,
            **(self.reading or {}),  # clusters, cluster_threshold, regions, atlas (issue 20)
            "software": software_versions(),
        }
        if input_volume is not None:
            rep["input"] = {
                "name": input_volume.name,
                "shape": list(input_volume.shape),
                "spacing_mm": [round(s, 6) for s in input_volume.spacing],
                "ijk_to_ras": input_volume.ijk_to_ras.tolist(),
                **({k: v for k, v in input_volume.meta.items() if k in ("source", "sha256", "series_uid")}),
            }
        if extra:
            rep.update(extra)
        return rep


def software_versions() -> dict:
    import nibabel
    import scipy

    return {"addiagnosis": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "nibabel": nibabel.__version__, "scipy": scipy.__version__}


def resolve_device(device: str | None) -> torch.device:
    device = (device or "cpu").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AddiagnosisError("--device cuda asked for, but no CUDA GPU is available to PyTorch")
        return torch.device(device)
    if device != "cpu":
        raise AddiagnosisError(f"unknown device {device!r} (cpu, cuda or auto)")
    return torch.device("cpu")


@dataclass
class GridExplanation:
    """A scan classified and explained on the model grid, before relevance goes back onto the input grid."""

    prepared: Prepared | None  # the network input and the way back (None when a tensor was given)
    logits: torch.Tensor  # (C,) float64, on the CPU
    probabilities: np.ndarray  # (C,) float64 softmax
    predicted: int  # class index
    target: int  # class index whose relevance this is
    method: str  # resolved method name
    relevance: np.ndarray  # (D,H,W) float32, on the model grid
    features: np.ndarray | None = None  # penultimate-layer features (the OOD score's input)
    qc: dict | None = None  # input quality control and OOD score (prep.qc.assess + with_ood)

    def on_input(self) -> np.ndarray:
        """The relevance on the input grid (float32; same shape as the input volume)."""
        return self.prepared.to_input(self.relevance).astype(np.float32, copy=False)


class Diagnoser:
    """A loaded model package ready to diagnose many scans (weights read and folded once)."""

    def __init__(self, package: ModelPackage | str | None = None, device: str | None = "cpu",
                 model: torch.nn.Module | None = None):
        """``model``: other weights of the package's architecture (the randomisation check); default its own."""
        self.package = package if isinstance(package, ModelPackage) else find_package(package)
        self.device = resolve_device(device)
        own = model is None
        model = self.package.load_model("cpu") if own else model
        self.model = model
        self.engine = FastLRP(model, device=self.device)
        # the package's OOD fit (None without one, or for other weights than the package's own)
        self.ood = ood_model.load(self.package.path, self.package.card, model.state_dict()) if own else None
        self.recommended_method = self.package.card.recommended_method

    def resolve_method(self, method: str | None) -> str:
        """``auto``/None -> the model's recommended method; prepares the reference input when one is needed."""
        use_package_template(self.package.path, self.package.card)  # a package's own template: no nilearn
        if method in (None, "", AUTO_METHOD):
            method = self.recommended_method
        if method not in METHODS:
            raise AddiagnosisError(f"unknown method {method!r}; choose from {', '.join(METHOD_CHOICES)}")
        if method in REFERENCE_METHODS and self.engine.reference is None:
            ref = reference_input(self.package.card)
            if ref is None:
                kind = self.package.card.preprocessing.kind
                raise AddiagnosisError(f"{method} needs a reference scan, and this model's preprocessing ({kind}) "
                                       "defines none: choose another method")
            self.engine.set_reference(ref)
        return method

    def target_index(self, target: str | int | None, predicted: int) -> int:
        if target is None or target == "":
            return predicted
        if isinstance(target, int):
            if not 0 <= target < len(self.package.class_names):
                raise ModelError(f"class index {target} outside 0..{len(self.package.class_names) - 1}")
            return target
        return self.package.class_index(target)

    def explain_tensor(self, tensor: torch.Tensor, method: str | None = AUTO_METHOD,
                       target: str | int | None = None, progress: ProgressCallback | None = None,
                       timings: dict | None = None) -> GridExplanation:
        """Classify a prepared network input (1,1,D,H,W) and explain ``target`` (default: the predicted class).

        ``timings`` (if given) receives the seconds of the forward pass and of the relevance.
        """
        method = self.resolve_method(method)
        note = progress or (lambda stage, frac: None)
        timings = {} if timings is None else timings
        t = time.perf_counter()
        note("classifying", 0.3)
        cache = self.engine.forward(tensor)
        logits = cache.logits[0].double().cpu()
        features = cache.hidden_pre[0].double().cpu().numpy()
        probs = torch.softmax(logits, 0).numpy()
        predicted = int(np.argmax(probs))
        timings["forward"] = time.perf_counter() - t

        t = time.perf_counter()
        tgt = self.target_index(target, predicted)
        note(f"explaining {self.package.class_names[tgt]} ({method})", 0.5)
        rel_grid = self.engine.relevance(cache, tgt, method).float().cpu().numpy()
        del cache
        timings["relevance"] = time.perf_counter() - t
        return GridExplanation(None, logits, probs, predicted, tgt, method, rel_grid, features)

    def explain_on_grid(self, volume: Volume, method: str | None = AUTO_METHOD, target: str | int | None = None,
                        progress: ProgressCallback | None = None, timings: dict | None = None) -> GridExplanation:
        """Preprocess, classify and explain: relevance on the model grid plus the way back (``prepared``).

        The steps :meth:`run` takes before mapping relevance onto the input grid; evaluation takes them too.
        ``timings`` (if given) receives the seconds of preprocess, forward and relevance.
        """
        check_volume(volume)  # the one image validation, whatever made the Volume (file, Slicer node, web)
        method = self.resolve_method(method)
        if target not in (None, "") and not isinstance(target, int):
            self.package.class_index(target)  # fail before any work on an unknown class name
        note = progress or (lambda stage, frac: None)
        timings = {} if timings is None else timings
        t = time.perf_counter()
        note("preprocessing", 0.1)
        prepared = prepare(volume, self.package.card)
        timings["preprocess"] = time.perf_counter() - t
        explained = self.explain_tensor(prepared.tensor, method, target, note, timings)
        explained.prepared = prepared
        t = time.perf_counter()
        record = quality.assess(volume, prepared.info, self.package.card)
        explained.qc = quality.with_ood(record, None if self.ood is None else self.ood.score(explained.features))
        timings["qc"] = time.perf_counter() - t
        return explained

    def run(self, volume: Volume, method: str | None = AUTO_METHOD, target: str | int | None = None,
            progress: ProgressCallback | None = None) -> DiagnosisResult:
        note = progress or (lambda stage, frac: None)
        timings = {}
        g = self.explain_on_grid(volume, method, target, note, timings)
        names = self.package.class_names

        t = time.perf_counter()
        note("mapping relevance onto the input grid", 0.85)
        rel_in = g.on_input()
        relevance = Volume(rel_in, volume.ijk_to_ras.copy(), f"{volume.name} relevance")
        timings["map_back"] = time.perf_counter() - t
        summary = relevance_summary(rel_in, g.relevance, g.prepared.input_mask, volume, g.prepared.mask_name)
        t = time.perf_counter()
        reading = map_reading.read_map(relevance, g.prepared.info)
        timings["clusters_regions"] = time.perf_counter() - t
        note("done", 1.0)
        probabilities = {n: float(p) for n, p in zip(names, g.probabilities)}
        conformal = self.package.card.conformal  # probabilities are calibrated: the temperature is in the weights
        return DiagnosisResult(
            model_name=self.package.name, model_version=self.package.version, class_names=names,
            logits=[float(v) for v in g.logits], probabilities=probabilities,
            predicted=names[g.predicted], target=names[g.target], method=g.method, relevance=relevance,
            summary=summary, preprocessing=g.prepared.info, timings=timings, device=str(self.device),
            warnings=[str(w) for w in g.prepared.info.get("warnings", [])],
            model_notice=SYNTHETIC_NOTICE if self.package.card.synthetic else None,
            model_intended_use=self.package.card.intended_use,
            model_path=str(self.package.path.resolve()), weights_sha256=self.package.weights_sha256, qc=g.qc,
            prediction_set=None if conformal is None else conformal.classes(probabilities),
            prediction_set_coverage=None if conformal is None else conformal.coverage, reading=reading,
        )


_CACHE: dict[tuple, Diagnoser] = {}


def get_diagnoser(package: ModelPackage | str | None = None, device: str | None = "cpu") -> Diagnoser:
    """A cached :class:`Diagnoser` (re-used while the weights file is unchanged)."""
    pkg = package if isinstance(package, ModelPackage) else find_package(package)
    wpath = pkg.weights_path
    key = (str(pkg.path.resolve()), str(resolve_device(device)),
           wpath.stat().st_mtime_ns if wpath.exists() else 0)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Diagnoser(pkg, device)
    return _CACHE[key]


def diagnose(volume: Volume, package: ModelPackage | str | None = None, method: str | None = AUTO_METHOD,
             target: str | int | None = None, device: str | None = "cpu",
             progress: ProgressCallback | None = None) -> DiagnosisResult:
    return get_diagnoser(package, device).run(volume, method, target, progress)


def relevance_summary(rel: np.ndarray, rel_grid: np.ndarray, mask: np.ndarray | None, volume: Volume,
                      mask_name: str = "head") -> dict:
    pos = np.clip(rel, 0, None)
    pos_sum = float(pos.sum(dtype=np.float64))
    out = {
        "sum_model_grid": float(rel_grid.sum(dtype=np.float64)),
        "sum": float(rel.sum(dtype=np.float64)),
        "positive_sum": pos_sum,
        "negative_sum": float(rel.sum(dtype=np.float64)) - pos_sum,
        "max": float(rel.max()),
        "min": float(rel.min()),
    }
    if pos_sum > 0:
        # top 1 % of all voxels; partition only the positive values (introselect crawls on the many zeros)
        k = max(1, rel.size // 100)
        vals = pos[pos > 0]
        thr = float(vals.min()) if vals.size <= k else float(np.partition(vals, vals.size - k)[vals.size - k])
        out["top1pct_threshold"] = thr
        top = np.argwhere(pos >= thr)
        centre = top.mean(axis=0)
        out["top1pct_centroid_ras"] = [float(v) for v in (volume.ijk_to_ras @ np.append(centre, 1.0))[:3]]
        if mask is not None and mask.shape == rel.shape:
            # relevance outside the brain is a known failure mode of models trained on raw, skull-on scans
            out[f"positive_fraction_in_{mask_name}"] = share_inside(rel, mask)
    return out
