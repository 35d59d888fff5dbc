"""Training: ``addiagnosis train DATA --out PACKAGE`` (subject-level split, balanced, seeded, resumable).

DATA is any dataset :mod:`.dataset` reads: a folder of class sub-folders (``AD/ CN/ EMCI/ LMCI/ MCI/``), a
folder with a ``participants.tsv`` (as written by ``addiagnosis synth``), or a TSV/CSV table (subject id,
label and optionally scan path columns). Hyperparameters travel in a :class:`TrainConfig`.

What happens:
1. every scan is preprocessed once as the new model's card says (default: template alignment to MNI152 on
   a 2 mm 80x96x80 grid) and cached as float16 (``--cache``; keyed by the preprocessing);
2. subjects (never scans) are split train/validation/test, stratified by class, with ``--seed``;
3. the seed 3D CNN is trained with class-balanced sampling, augmentation (shifts, left-right flips,
   intensity scaling, noise), Adam; after every epoch the validation balanced accuracy decides the best
   weights and early stopping (``--patience``); ``--max-minutes`` time-boxes the run;
4. a checkpoint after every epoch (``OUT.train/last.pt``): rerunning the same command resumes from it;
5. the best weights are scored on validation and test subjects and written as a model package whose card
   holds data description, split sizes, metrics and intended use.

Launched with ``torchrun --nproc_per_node N -m addiagnosis.cli.main train ...`` it trains with
DistributedDataParallel (gloo on CPU, nccl on GPU): each process takes its share of every epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from addiagnosis import __version__
from addiagnosis.errors import AddiagnosisError
from addiagnosis.files import atomic_file
from addiagnosis.metrics import classification_report
from addiagnosis.models.network import ClassificationModel3D
from addiagnosis.prep.align import DEFAULT_CENTRE_MNI
from addiagnosis.research.dataset import CLASSES, Item, load_items, split_subjects

__all__ = ["CLASSES", "Item", "TrainConfig", "load_items", "preprocess_all", "split_subjects", "train"]

DEFAULT_GRID = {"shape": [80, 96, 80], "spacing": [2.0, 2.0, 2.0],
                "orientation": "RAS, MNI152 space (template alignment)"}
DEFAULT_PREPROCESSING = {"kind": "template", "centre_mni": list(DEFAULT_CENTRE_MNI), "skull_strip": True,
                         "normalise": {"low": 1.0, "high": 99.0, "clip": [0.0, 1.5]}}
PHYSICAL_PREPROCESSING = {"kind": "physical", "centre": "head", "normalise": {"low": 0.5, "high": 99.5}}


@dataclass
class TrainConfig:
    """Everything :func:`train` can be told besides where the data is and where the package goes."""

    seed: int = 0
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8  # epochs without a better validation balanced accuracy before stopping
    max_minutes: float | None = None  # time box of the epoch loop
    grid_shape: list | tuple | None = None  # model grid shape (default DEFAULT_GRID's)
    spacing: float | None = None  # model grid spacing in mm (default DEFAULT_GRID's)
    preprocessing: dict | None = None  # the card's preprocessing (default DEFAULT_PREPROCESSING)
    cache: str | None = None  # folder for preprocessed arrays (default next to the data)
    workers: int = 2  # preprocessing processes
    threads: int = 2  # torch threads per process
    fractions: tuple = (0.7, 0.15, 0.15)  # train/validation/test share of the subjects
    name: str | None = None  # package name (default: the output folder's name)
    version: str = "1"
    default: bool = False  # mark the package as the default model
    augment_data: bool = True

    def grid(self) -> dict:
        grid = dict(DEFAULT_GRID)
        if self.grid_shape:
            grid["shape"] = [int(s) for s in self.grid_shape]
        if self.spacing:
            grid["spacing"] = [float(self.spacing)] * 3
        return grid

    def early_stop(self) -> str:
        return f"early stopping (no better validation balanced accuracy for {self.patience} epochs)"

    def resume_key(self, d: TrainingData) -> str:
        """What a checkpoint must have been written with to be resumed (on the data ``d``)."""
        return json.dumps({"seed": self.seed, "grid": d.card["input_grid"], "pre": d.card["preprocessing"],
                           "classes": d.classes, "lr": self.lr, "batch": self.batch_size,
                           "fractions": list(self.fractions)}, sort_keys=True)


@dataclass
class TrainingData:
    """The preprocessed dataset in memory, split by subject."""

    items: list[Item]
    classes: list[str]
    card: dict  # input_grid, preprocessing, class_names: what the new package's card says about its input
    X: torch.Tensor  # float16 (N,1,D,H,W)
    y: torch.Tensor  # class indices (N,)
    idx: dict[str, list[int]]  # 'train'/'val'/'test' -> item indices
    subjects: dict[str, int]  # 'train'/'val'/'test' -> number of subjects


@dataclass
class TrainingState:
    """What the checkpoint keeps besides the current weights: the loop's state and the best weights."""

    state: dict
    best: dict | None = None


@dataclass
class TrainRun:
    """What every epoch of one run works with (:func:`epoch_loop`, :func:`train_epoch`)."""

    net: torch.nn.Module  # ``model`` or its DistributedDataParallel wrapper
    model: ClassificationModel3D
    opt: torch.optim.Optimizer
    data: TrainingData
    cfg: TrainConfig
    ckpt: Path | None = None  # where to checkpoint after every epoch (rank 0 only)
    rank: int = 0
    world: int = 1
    log: Callable = print


@dataclass
class Epoch:
    """One epoch of this process: its number, its draw of the training items and its clock."""

    number: int
    order: torch.Tensor  # this process's share of the sampled training items
    gen: torch.Generator  # the epoch's seeded generator (augmentation)
    steps: int  # optimiser steps
    run_t0: float  # when the run started (less the resumed epochs' time): the ETA's clock
    budget: float | None = None  # seconds of the time box (TrainConfig.max_minutes)


# ------------------------------------------------------------------------------------------ data
def _cache_key(card: dict) -> str:
    spec = {"pre": card["preprocessing"], "grid": card["input_grid"]["shape"],
            "spacing": card["input_grid"]["spacing"]}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _prep_one(job):
    path, cache_file, card = job
    torch.set_num_threads(1)
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.prep.physical import prepare

    if Path(cache_file).exists():
        return cache_file, None
    vol = read_nifti(path)
    prep = prepare(vol, card)
    arr = prep.tensor[0, 0].numpy().astype(np.float16)
    with atomic_file(cache_file) as tmp:
        np.save(tmp, arr)
    reg = prep.info.get("registration", {})
    return cache_file, reg.get("correlation")


def preprocess_all(items: list[Item], card: dict, cache_dir: Path, workers: int = 2, log=print) -> list[Path]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = [cache_dir / (hashlib.sha1(str(it.path.resolve()).encode()).hexdigest()[:16] + ".npy")
             for it in items]
    todo = [(str(it.path), str(f), card) for it, f in zip(items, files) if not f.exists()]
    if todo:
        log(f"preprocessing {len(todo)} scan(s) ({card['preprocessing']['kind']}) into {cache_dir} "
            f"with {workers} worker(s)")
        t0 = time.time()
        corrs = []
        it = map(_prep_one, todo) if workers <= 1 else ProcessPoolExecutor(workers).map(_prep_one, todo,
                                                                                          chunksize=2)
        for k, (_, corr) in enumerate(it, 1):
            if corr is not None:
                corrs.append(corr)
            if k % 20 == 0 or k == len(todo):
                el = time.time() - t0
                log(f"  preprocessed {k}/{len(todo)}, {el:.0f} s, ETA {el / k * (len(todo) - k):.0f} s")
        if corrs:
            log(f"  registration correlation: median {np.median(corrs):.3f}, min {np.min(corrs):.3f}")
    return files


# ------------------------------------------------------------------------------------------ training
def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 3) -> torch.Tensor:
    """x: (B,1,D,H,W) -> augmented copy (integer shifts, left-right flip, intensity scale/offset, noise)."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        v = x[b]
        shifts = [int(s) for s in torch.randint(-max_shift, max_shift + 1, (3,), generator=gen)]
        v = torch.roll(v, shifts=shifts, dims=(1, 2, 3))
        if torch.rand(1, generator=gen).item() < 0.5:
            v = torch.flip(v, dims=(1,))  # axis 0 of the RAS grid is left-right
        inside = v > 0
        scale = 0.9 + 0.2 * torch.rand(1, generator=gen).item()
        noise = 0.03 * torch.rand(1, generator=gen).item()
        v = v * scale + inside * noise * torch.randn(v.shape, generator=gen)
        out[b] = v
    return out


def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist, dist.get_rank(), dist.get_world_size()


def predict(model, X: torch.Tensor, batch: int = 8) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            out.append(torch.softmax(model(X[i:i + batch].float()), 1).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dense_2.out_features))


def train(data, out, config: TrainConfig | None = None, *, log=print, **options) -> dict:
    """Train and write a package; returns the card. ``options`` override fields of ``config``."""
    cfg = replace(config or TrainConfig(), **options)
    t_start = time.time()
    dist, rank, world = _dist()
    torch.set_num_threads(max(1, int(cfg.threads)))
    out = Path(out)
    say = log if rank == 0 else (lambda *a, **k: None)
    d = load_training_data(data, cfg, dist, rank, say)

    torch.manual_seed(cfg.seed)
    model = ClassificationModel3D(d.card["input_grid"]["shape"], n_classes=len(d.classes))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = out.parent / (out.name + ".train") / "last.pt"
    progress = resume(ckpt, model, opt, cfg.resume_key(d), say)
    net = model if dist is None else torch.nn.parallel.DistributedDataParallel(model)
    run = TrainRun(net, model, opt, d, cfg, ckpt if rank == 0 else None, rank, world, say)
    stop_reason = epoch_loop(run, progress)
    state = progress.state
    say(f"stopped: {stop_reason}; best epoch {state['best_epoch']} (val balanced accuracy "
        f"{state['best_bacc']:.3f})")
    if dist is not None:
        dist.barrier()
    if rank != 0:
        return {}
    model.load_state_dict(progress.best)
    model.eval()
    reports = {k: classification_report(predict(model, d.X[d.idx[k]]), d.y[d.idx[k]].numpy(), d.classes)
               for k in ("val", "test") if d.idx[k]}
    card_out = model_card(out, cfg, d, progress, stop_reason, reports, Path(data), world)
    from addiagnosis.models.package import write_package
    from addiagnosis.research.calibration import calibrate_trained

    # issue 19: temperature (validation split) folded into the weights, conformal thresholds in the card
    write_package(out, calibrate_trained(model, d, card_out, say), card_out, overwrite=True)
    from addiagnosis.research.oodfit import attach

    card_out["ood"] = attach(out, model, d.X[d.idx["train"]], d.X[d.idx["val"]])  # issue 18: OOD fit of the features
    say(f"wrote model package {out} in {(time.time() - t_start) / 60:.1f} min")
    return card_out


def load_training_data(data, cfg: TrainConfig, dist=None, rank: int = 0, log=print) -> TrainingData:
    """Items, preprocessed once into the cache (rank 0 first), loaded into memory and split by subject."""
    items = load_items(data)
    classes = [c for c in CLASSES if any(it.label == c for it in items)]
    if len(classes) < 2:
        raise AddiagnosisError(f"need at least two classes to train; found {classes}")
    card = {"input_grid": cfg.grid(), "preprocessing": dict(cfg.preprocessing or DEFAULT_PREPROCESSING),
            "class_names": classes}
    data_path = Path(data)
    cache_dir = Path(cfg.cache) if cfg.cache else (data_path if data_path.is_dir() else data_path.parent) / \
        ".addiagnosis-cache" / _cache_key(card)
    if rank == 0:
        files = preprocess_all(items, card, cache_dir, cfg.workers, log)
    if dist is not None:
        dist.barrier()
        if rank != 0:
            files = preprocess_all(items, card, cache_dir, 1, log)
    split = split_subjects(items, cfg.fractions, cfg.seed)
    idx = {k: [i for i, it in enumerate(items) if split[it.subject] == k] for k in ("train", "val", "test")}
    if not idx["train"] or not idx["val"]:
        raise AddiagnosisError("too few subjects for a train/validation split")
    X = torch.from_numpy(np.stack([np.load(f) for f in files]))[:, None]  # float16 (N,1,D,H,W)
    y = torch.tensor([classes.index(it.label) for it in items])
    n_sub = {k: len({items[i].subject for i in v}) for k, v in idx.items()}
    log(f"data: {len(items)} scans of {len(split)} subjects; split by subject: "
        f"train {n_sub['train']}, val {n_sub['val']}, test {n_sub['test']} (seed {cfg.seed})")
    return TrainingData(items, classes, card, X, y, idx, n_sub)


# ------------------------------------------------------------------------------------------ resume
def resume(ckpt: Path, model, opt, key: str, log=print) -> TrainingState:
    """The loop's progress from ``ckpt`` (weights and optimiser loaded), or a fresh start."""
    progress = TrainingState({"epoch": 0, "best_bacc": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [],
                         "elapsed": 0.0})
    if ckpt.exists():
        saved = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        if saved.get("config") != key:
            raise AddiagnosisError("a checkpoint from a different configuration exists; remove it or use "
                                   "another --out", ckpt)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        progress = TrainingState(json.loads(saved["state"]), saved["best_model"])
        log(f"resuming from {ckpt} after epoch {progress.state['epoch']}")
    return progress


def save_checkpoint(ckpt: Path, model, opt, progress: TrainingState, key: str) -> None:
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(ckpt) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "best_model": progress.best,
                    "state": json.dumps(progress.state), "config": key}, str(tmp))


# ------------------------------------------------------------------------------------------ epochs
def epoch_loop(run: TrainRun, progress: TrainingState) -> str:
    """Train until ``cfg.epochs``, early stopping or the time box; checkpoint to ``run.ckpt`` after every epoch.

    Returns why the loop stopped.
    """
    model, d, cfg = run.model, run.data, run.cfg
    state = progress.state
    ytr = d.y[d.idx["train"]]
    counts = torch.bincount(ytr, minlength=len(d.classes)).double()
    weights = (1.0 / counts.clamp(min=1))[ytr]
    n_per_epoch = len(d.idx["train"])
    steps = math.ceil(n_per_epoch / (cfg.batch_size * run.world))
    Xval, yval = d.X[d.idx["val"]], d.y[d.idx["val"]].numpy()
    budget = None if cfg.max_minutes is None else cfg.max_minutes * 60.0
    run_t0 = time.time() - state["elapsed"]
    epoch_times = []
    key = cfg.resume_key(d)
    stop_reason = "max epochs"
    if state["bad_epochs"] >= cfg.patience:  # a finished run, resumed: write the package again, train no more
        stop_reason = cfg.early_stop()
    elif budget is not None and state.get("stop", "").startswith("time budget"):
        stop_reason = state["stop"]
    while state["epoch"] < cfg.epochs and not stop_reason.startswith(("early", "time")):
        ep = state["epoch"] + 1
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + ep)
        order = torch.multinomial(weights, n_per_epoch, replacement=True, generator=gen)
        order = order[run.rank::run.world]
        run.net.train()
        t_ep = time.time()
        losses = train_epoch(run, Epoch(ep, order, gen, steps, run_t0, budget))
        rep = classification_report(predict(model, Xval), yval, d.classes)
        epoch_times.append(time.time() - t_ep)
        _record_epoch(progress, model, ep, losses, rep, epoch_times[-1], run.log)
        state["elapsed"] = time.time() - run_t0
        if state["bad_epochs"] >= cfg.patience:
            stop_reason = cfg.early_stop()
        elif budget is not None and state["elapsed"] + np.mean(epoch_times) > budget:
            stop_reason = f"time budget ({cfg.max_minutes} min)"
        state["stop"] = stop_reason
        if run.ckpt is not None:
            save_checkpoint(run.ckpt, model, run.opt, progress, key)
        if stop_reason != "max epochs":
            break
    return stop_reason


def train_epoch(run: TrainRun, epoch: Epoch) -> list[float]:
    """``epoch.steps`` optimiser steps over this process's share ``epoch.order`` of the sampled items; the losses."""
    d, cfg, opt, steps, ep = run.data, run.cfg, run.opt, epoch.steps, epoch.number
    t_ep = time.time()
    losses = []
    for s in range(steps):
        bi = epoch.order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
        if len(bi) == 0:
            continue
        tr = torch.tensor(d.idx["train"])[bi]
        xb = d.X[tr].float()
        if cfg.augment_data:
            xb = augment(xb, epoch.gen)
        loss = F.cross_entropy(run.net(xb), d.y[tr])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
        if (s + 1) % 10 == 0:
            per_step = (time.time() - t_ep) / (s + 1)
            left = per_step * (steps - s - 1) + per_step * steps * (cfg.epochs - ep)
            if epoch.budget is not None:
                left = min(left, max(epoch.budget - (time.time() - epoch.run_t0), 0))
            run.log(f"epoch {ep}/{cfg.epochs} step {s + 1}/{steps} loss {np.mean(losses[-10:]):.3f} "
                    f"elapsed {(time.time() - epoch.run_t0) / 60:.1f} min, ETA {left / 60:.1f} min")
    return losses


def _record_epoch(progress: TrainingState, model, ep: int, losses: list[float], rep: dict, seconds: float,
                  log=print) -> None:
    """Best weights and early-stopping count from the validation report; the epoch into the history."""
    state = progress.state
    bacc = rep["balanced_accuracy"]
    improved = bacc > state["best_bacc"] + 1e-9 or (
        abs(bacc - state["best_bacc"]) <= 1e-9 and rep["nll"] < state.get("best_nll", 1e9))
    if improved:
        state.update(best_bacc=bacc, best_epoch=ep, bad_epochs=0, best_nll=rep["nll"])
        progress.best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        state["bad_epochs"] += 1
    state["epoch"] = ep
    state["history"].append({"epoch": ep, "train_loss": float(np.mean(losses)) if losses else None,
                             "val_balanced_accuracy": bacc, "val_nll": rep["nll"],
                             "seconds": round(seconds, 1)})
    log(f"epoch {ep}: train loss {np.mean(losses):.3f}, val balanced accuracy {bacc:.3f} "
        f"(best {state['best_bacc']:.3f} at epoch {state['best_epoch']}), {seconds:.0f} s")


# ------------------------------------------------------------------------------------------ card
def explanation_block(kind: str | None) -> dict:
    """The card's recommended method: relative to the template where there is one (alpha 1.25, beta 0.25: chosen
    on randomisation, stability and localisation together, docs/training.md, issue 19), else plain LRP."""
    if kind != "template":  # no healthy reference: plain LRP, stable across storage and noise
        return {"method": "lrp-alpha1beta0"}
    return {"method": "lrp-reference-alpha1.25beta0.25", "alternatives": {
        "lrp-reference-alpha1beta0": "alpha1-beta0 on the differences from the template: the most stable across "
                                     "how a scan is stored and noise, but its maps resemble a random-weight "
                                     "network's more (model randomisation |r| above 0.3; docs/training.md)",
        "lrp-reference": "alpha2-beta1 on the differences from the template: a little more relevance in the "
                         "true atrophy, but not stable across how a scan is stored or noise (docs/training.md)",
        "lrp-alpha1beta0": "plain LRP, no reference: stable, but credits intact tissue around the evidence"}}


def model_card(out: Path, cfg: TrainConfig, d: TrainingData, progress: TrainingState, stop_reason: str,
               reports: dict, data_path: Path, world: int = 1) -> dict:
    """The new package's card: data, split, the training run, ``reports`` (val/test metrics), intended use."""
    state, items, classes, pre = progress.state, d.items, d.classes, d.card["preprocessing"]
    counts_all = {c: sum(1 for it in items if it.label == c) for c in classes}
    # what synth wrote (or, for a table, a dataset.json beside it: e.g. several synth cohorts in one table)
    dataset_json = (data_path if data_path.is_dir() else data_path.parent) / "dataset.json"
    dataset = json.loads(dataset_json.read_text()) if dataset_json.exists() else None
    card_out = {
        "name": cfg.name or out.name,
        "version": cfg.version,
        "architecture": "seed-cnn3d",
        "class_names": classes,
        "input_grid": d.card["input_grid"],
        "preprocessing": pre,
        "intended_use": ("Research and teaching only: demonstrates explainable (LRP) 3D CNN classification. "
                         "Not a medical device, not for clinical diagnosis."),
        "training_data": _data_description(data_path, items, counts_all, dataset),
        "split": {"unit": "subject", "seed": cfg.seed, "fractions": list(cfg.fractions),
                  "subjects": d.subjects, "scans": {k: len(v) for k, v in d.idx.items()}},
        "training": {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stop": stop_reason,
                     "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                     "optimizer": "Adam", "class_balancing": "inverse-frequency sampling",
                     "augmentation": "integer shifts up to 3 voxels, left-right flip, intensity scale "
                                     "0.9-1.1, Gaussian noise" if cfg.augment_data else None,
                     "processes": world, "threads": cfg.threads, "minutes": round(state["elapsed"] / 60, 1),
                     "history": state["history"], "software": f"addiagnosis {__version__}, "
                                                              f"torch {torch.__version__}"},
        "metrics": reports,
        "default": bool(cfg.default),
    }
    card_out["explanation"] = explanation_block(pre.get("kind"))
    if dataset is not None:
        card_out["synthetic"] = True
        card_out["intended_use"] = (
            "Demonstration only. Trained on SYNTHETIC data (MNI152-derived subjects with simulated atrophy); "
            "it demonstrates the method (3D CNN + LRP, scored against known atrophy) and is NOT a diagnostic "
            "device: its output on real MRI scans means nothing clinically. Research and teaching use only.")
        card_out["limitations"] = (
            "Synthetic atrophy (tissue loss in the medial temporal lobe, ventricular widening) is simpler "
            "than real disease; real scans differ in contrast, anatomy and artefacts. No real patient was "
            "used for training or testing.")
        card_out["notice"] = dataset.get("notice")
        card_out["license_notice_template"] = "MNI ICBM152 2009a: see 'notice'"
    return card_out


def _data_description(path: Path, items, counts, dataset) -> str:
    text = f"{len(items)} scans of {len({it.subject for it in items})} subjects from {path.name}: " + \
        ", ".join(f"{c} {n}" for c, n in counts.items()) + "."
    if dataset is not None:
        parts = dataset.get("cohorts") or [dataset]  # one synth cohort, or several (a table's dataset.json)
        which = "; ".join(f"seed {c.get('seed')}, atrophy model {(c.get('options') or {}).get('atrophy', 'default')}"
                          for c in parts)
        text = (f"SYNTHETIC data (addiagnosis synth: {which}): subjects made from the MNI ICBM152 template "
                "with graded, known atrophy of the medial temporal lobe and ventricles; no patient data. ") + text
    return text
