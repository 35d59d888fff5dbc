"""Training: ``addiagnosis train DATA --out PACKAGE`` (subject-level split, balanced, seeded, resumable).

DATA is a folder of class sub-folders (``AD/ CN/ EMCI/ LMCI/ MCI/``, the original project's layout), a
folder with a ``participants.tsv`` (as written by ``addiagnosis synth``), or a TSV/CSV file with a subject
id column (``participant_id``/``subject``/``subject_id``/``id``), a label column (``class``/``label``/
``diagnosis``/``group``/``dx``) and optionally a scan path column (``scan``/``path``/``file``; relative
to the TSV's folder).

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

Launched with ``torchrun --nproc_per_node N -m addiagnosis.cli train ...`` it trains with
DistributedDataParallel (gloo on CPU, nccl on GPU): each process takes its share of every epoch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .errors import AddiagnosisError
from .metrics import classification_report
from .model import ClassificationModel3D

CLASSES = ["CN", "EMCI", "MCI", "LMCI", "AD"]
DEFAULT_GRID = {"shape": [80, 96, 80], "spacing": [2.0, 2.0, 2.0],
                "orientation": "RAS, MNI152 space (template alignment)"}
DEFAULT_PREPROCESSING = {"kind": "template", "centre_mni": [0.0, -18.0, 16.0], "skull_strip": True,
                         "normalise": {"low": 1.0, "high": 99.0, "clip": [0.0, 1.5]}}
ID_COLS = ("participant_id", "subject", "subject_id", "id", "rid", "ptid")
LABEL_COLS = ("class", "label", "diagnosis", "group", "dx")
SCAN_COLS = ("scan", "path", "file", "image")
ADNI_ID = re.compile(r"\d{3}_S_\d{4}")


@dataclass
class Item:
    subject: str
    label: str
    path: Path
    mask: Path | None = None


# ------------------------------------------------------------------------------------------ data
def _find_col(header: list[str], names) -> str | None:
    low = {h.lower().strip(): h for h in header}
    for n in names:
        if n in low:
            return low[n]
    return None


def read_table(path: Path) -> list[Item]:
    delim = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=delim))
    if not rows:
        raise AddiagnosisError("table has no rows", path)
    header = list(rows[0].keys())
    sid, lab = _find_col(header, ID_COLS), _find_col(header, LABEL_COLS)
    scan, mask = _find_col(header, SCAN_COLS), _find_col(header, ("mask", "atrophy_mask"))
    if sid is None or lab is None:
        raise AddiagnosisError(f"table needs a subject id column ({'/'.join(ID_COLS)}) and a label column "
                               f"({'/'.join(LABEL_COLS)}); it has {', '.join(header)}", path)
    base = path.parent
    items = []
    for r in rows:
        s = str(r[sid]).strip()
        if scan and r.get(scan):
            p = Path(r[scan])
            p = p if p.is_absolute() else base / p
        else:
            cands = [base / f"{s}.nii.gz", base / f"{s}.nii", base / "scans" / f"{s}.nii.gz"]
            p = next((c for c in cands if c.exists()), cands[0])
        m = None
        if mask and r.get(mask):
            m = Path(r[mask])
            m = m if m.is_absolute() else base / m
        items.append(Item(s, str(r[lab]).strip(), p, m))
    return items


def load_items(data: str | os.PathLike) -> list[Item]:
    """Items (subject, label, scan path) from a class-folder tree, a folder with participants.tsv, or a table."""
    data = Path(data)
    if not data.exists():
        raise AddiagnosisError("no such data folder or table", data)
    if data.is_file():
        items = read_table(data)
    elif (data / "participants.tsv").is_file():
        items = read_table(data / "participants.tsv")
    else:
        items = []
        for sub in sorted(p for p in data.iterdir() if p.is_dir()):
            label = next((c for c in CLASSES if c.lower() == sub.name.lower()), None)
            if label is None:
                continue
            for f in sorted(sub.rglob("*")):
                if f.name.endswith((".nii", ".nii.gz")):
                    m = ADNI_ID.search(str(f.relative_to(data)))
                    sid = m.group(0) if m else f.name.split(".nii")[0]
                    items.append(Item(sid, label, f))
        if not items:
            raise AddiagnosisError("found no class sub-folders (AD/ CN/ EMCI/ LMCI/ MCI/) with .nii/.nii.gz "
                                   "scans, and no participants.tsv", data)
    for it in items:
        canon = next((c for c in CLASSES if c.lower() == it.label.lower()), None)
        if canon is None:
            raise AddiagnosisError(f"unknown label {it.label!r} for subject {it.subject} "
                                   f"(known: {', '.join(CLASSES)})", data)
        it.label = canon
    missing = [str(it.path) for it in items if not it.path.exists()]
    if missing:
        raise AddiagnosisError(f"{len(missing)} scan(s) missing, e.g. {missing[0]}", data)
    return items


def split_subjects(items: list[Item], fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """Subject -> 'train'/'val'/'test', stratified by class; all scans of a subject share one side."""
    labels: dict[str, list[str]] = {}
    for it in items:
        labels.setdefault(it.subject, []).append(it.label)
    by_class: dict[str, list[str]] = {}
    for s, labs in sorted(labels.items()):
        major = max(sorted(set(labs)), key=labs.count)
        by_class.setdefault(major, []).append(s)
    rng = np.random.default_rng([int(seed), 42])
    out = {}
    f_val = fractions[1]
    f_test = fractions[2] if len(fractions) > 2 else 0.0
    for c in sorted(by_class):
        subs = list(by_class[c])
        rng.shuffle(subs)
        n = len(subs)
        n_val = int(round(n * f_val))
        n_test = int(round(n * f_test))
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1 if f_test > 0 else 0)
        n_train = max(n - n_val - n_test, 0)
        for i, s in enumerate(subs):
            out[s] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out


def _cache_key(card: dict) -> str:
    spec = {"pre": card["preprocessing"], "grid": card["input_grid"]["shape"],
            "spacing": card["input_grid"]["spacing"]}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _prep_one(job):
    path, cache_file, card = job
    torch.set_num_threads(1)
    from .preprocess import prepare
    from .volume import read_nifti

    if Path(cache_file).exists():
        return cache_file, None
    vol = read_nifti(path)
    prep = prepare(vol, card)
    arr = prep.tensor[0, 0].numpy().astype(np.float16)
    tmp = str(cache_file) + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, cache_file)
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


def train(data, out, *, seed: int = 0, epochs: int = 40, batch_size: int = 8, lr: float = 1e-3,
          weight_decay: float = 1e-4, patience: int = 8, max_minutes: float | None = None,
          grid_shape=None, spacing=None, preprocessing: dict | None = None, cache: str | None = None,
          workers: int = 2, threads: int = 2, fractions=(0.7, 0.15, 0.15), name: str | None = None,
          version: str = "1", default: bool = False, log=print, augment_data: bool = True) -> dict:
    """Train and write a package; returns the card."""
    t_start = time.time()
    dist, rank, world = _dist()
    torch.set_num_threads(max(1, int(threads)))
    out = Path(out)
    say = log if rank == 0 else (lambda *a, **k: None)
    items = load_items(data)
    classes = [c for c in CLASSES if any(it.label == c for it in items)]
    if len(classes) < 2:
        raise AddiagnosisError(f"need at least two classes to train; found {classes}")
    grid = dict(DEFAULT_GRID)
    if grid_shape:
        grid["shape"] = [int(s) for s in grid_shape]
    if spacing:
        grid["spacing"] = [float(spacing)] * 3
    pre = dict(preprocessing or DEFAULT_PREPROCESSING)
    card = {"input_grid": grid, "preprocessing": pre, "class_names": classes}
    data_path = Path(data)
    cache_dir = Path(cache) if cache else (data_path if data_path.is_dir() else data_path.parent) / \
        ".addiagnosis-cache" / _cache_key(card)
    if rank == 0:
        files = preprocess_all(items, card, cache_dir, workers, say)
    if dist is not None:
        dist.barrier()
        if rank != 0:
            files = preprocess_all(items, card, cache_dir, 1, say)
    split = split_subjects(items, fractions, seed)
    idx = {k: [i for i, it in enumerate(items) if split[it.subject] == k] for k in ("train", "val", "test")}
    if not idx["train"] or not idx["val"]:
        raise AddiagnosisError("too few subjects for a train/validation split")
    X = torch.from_numpy(np.stack([np.load(f) for f in files]))[:, None]  # float16 (N,1,D,H,W)
    y = torch.tensor([classes.index(it.label) for it in items])
    n_sub = {k: len({items[i].subject for i in v}) for k, v in idx.items()}
    say(f"data: {len(items)} scans of {len(split)} subjects; split by subject: "
        f"train {n_sub['train']}, val {n_sub['val']}, test {n_sub['test']} (seed {seed})")

    torch.manual_seed(seed)
    model = ClassificationModel3D(grid["shape"], n_classes=len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    ckpt_dir = out.parent / (out.name + ".train")
    ckpt = ckpt_dir / "last.pt"
    state = {"epoch": 0, "best_bacc": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": [],
             "elapsed": 0.0}
    best_state = None
    if ckpt.exists():
        saved = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        if saved.get("config") != _config(seed, grid, pre, classes, lr, batch_size, fractions):
            raise AddiagnosisError("a checkpoint from a different configuration exists; remove it or use "
                                   "another --out", ckpt)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        best_state = saved["best_model"]
        state = json.loads(saved["state"])
        say(f"resuming from {ckpt} after epoch {state['epoch']}")
    net = model
    if dist is not None:
        net = torch.nn.parallel.DistributedDataParallel(model)

    ytr = y[idx["train"]]
    counts = torch.bincount(ytr, minlength=len(classes)).double()
    weights = (1.0 / counts.clamp(min=1))[ytr]
    n_per_epoch = len(idx["train"])
    steps = math.ceil(n_per_epoch / (batch_size * world))
    Xval, yval = X[idx["val"]], y[idx["val"]].numpy()
    budget = None if max_minutes is None else max_minutes * 60.0
    run_t0 = time.time() - state["elapsed"]
    epoch_times = []
    stop_reason = "max epochs"
    if state["bad_epochs"] >= patience:  # a finished run, resumed: write the package again, train no more
        stop_reason = f"early stopping (no better validation balanced accuracy for {patience} epochs)"
    elif budget is not None and state.get("stop", "").startswith("time budget"):
        stop_reason = state["stop"]
    while state["epoch"] < epochs and not stop_reason.startswith(("early", "time")):
        ep = state["epoch"] + 1
        gen = torch.Generator().manual_seed(seed * 100_003 + ep)
        order = torch.multinomial(weights, n_per_epoch, replacement=True, generator=gen)
        order = order[rank::world]
        net.train()
        t_ep = time.time()
        losses = []
        for s in range(steps):
            bi = order[s * batch_size:(s + 1) * batch_size]
            if len(bi) == 0:
                continue
            tr = torch.tensor(idx["train"])[bi]
            xb = X[tr].float()
            if augment_data:
                xb = augment(xb, gen)
            loss = F.cross_entropy(net(xb), y[tr])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach().item())
            if rank == 0 and (s + 1) % 10 == 0:
                per_step = (time.time() - t_ep) / (s + 1)
                left = per_step * (steps - s - 1) + per_step * steps * (epochs - ep)
                if budget is not None:
                    left = min(left, max(budget - (time.time() - run_t0), 0))
                say(f"epoch {ep}/{epochs} step {s + 1}/{steps} loss {np.mean(losses[-10:]):.3f} "
                    f"elapsed {(time.time() - run_t0) / 60:.1f} min, ETA {left / 60:.1f} min")
        pv = predict(model, Xval)
        rep = classification_report(pv, yval, classes)
        bacc = rep["balanced_accuracy"]
        epoch_times.append(time.time() - t_ep)
        improved = bacc > state["best_bacc"] + 1e-9 or (
            abs(bacc - state["best_bacc"]) <= 1e-9 and rep["nll"] < state.get("best_nll", 1e9))
        if improved:
            state.update(best_bacc=bacc, best_epoch=ep, bad_epochs=0, best_nll=rep["nll"])
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        state["epoch"] = ep
        state["elapsed"] = time.time() - run_t0
        state["history"].append({"epoch": ep, "train_loss": float(np.mean(losses)) if losses else None,
                                 "val_balanced_accuracy": bacc, "val_nll": rep["nll"],
                                 "seconds": round(epoch_times[-1], 1)})
        say(f"epoch {ep}: train loss {np.mean(losses):.3f}, val balanced accuracy {bacc:.3f} "
            f"(best {state['best_bacc']:.3f} at epoch {state['best_epoch']}), {epoch_times[-1]:.0f} s")
        if state["bad_epochs"] >= patience:
            stop_reason = f"early stopping (no better validation balanced accuracy for {patience} epochs)"
        elif budget is not None and state["elapsed"] + np.mean(epoch_times) > budget:
            stop_reason = f"time budget ({max_minutes} min)"
        state["stop"] = stop_reason
        if rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_dir / "last.pt.tmp"
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "best_model": best_state,
                        "state": json.dumps(state),
                        "config": _config(seed, grid, pre, classes, lr, batch_size, fractions)}, str(tmp))
            os.replace(tmp, ckpt)
        if stop_reason != "max epochs":
            break
    say(f"stopped: {stop_reason}; best epoch {state['best_epoch']} (val balanced accuracy "
        f"{state['best_bacc']:.3f})")
    if dist is not None:
        dist.barrier()
    if rank != 0:
        return {}
    model.load_state_dict(best_state)
    model.eval()
    reports = {}
    for k in ("val", "test"):
        if idx[k]:
            reports[k] = classification_report(predict(model, X[idx[k]]), y[idx[k]].numpy(), classes)
    counts_all = {c: sum(1 for it in items if it.label == c) for c in classes}
    dataset_json = (data_path / "dataset.json") if data_path.is_dir() else None
    dataset = json.loads(dataset_json.read_text()) if dataset_json and dataset_json.exists() else None
    card_out = {
        "name": name or out.name,
        "version": version,
        "architecture": "seed-cnn3d",
        "class_names": classes,
        "input_grid": grid,
        "preprocessing": pre,
        "intended_use": ("Research and teaching only: demonstrates explainable (LRP) 3D CNN classification. "
                         "Not a medical device, not for clinical diagnosis."),
        "training_data": _data_description(data_path, items, counts_all, dataset),
        "split": {"unit": "subject", "seed": seed, "fractions": list(fractions),
                  "subjects": n_sub, "scans": {k: len(v) for k, v in idx.items()}},
        "training": {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stop": stop_reason,
                     "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                     "optimizer": "Adam", "class_balancing": "inverse-frequency sampling",
                     "augmentation": "integer shifts up to 3 voxels, left-right flip, intensity scale "
                                     "0.9-1.1, Gaussian noise" if augment_data else None,
                     "processes": world, "threads": threads, "minutes": round(state["elapsed"] / 60, 1),
                     "history": state["history"], "software": f"addiagnosis {__version__}, "
                                                              f"torch {torch.__version__}"},
        "metrics": reports,
        "default": bool(default),
    }
    if pre.get("kind") == "template":  # a healthy reference exists: explain relative to it (lrp.py)
        card_out["explanation"] = {"method": "lrp-reference",
                                   "reference": "the MNI152 template taken through this card's preprocessing"}
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
    from .package import write_package

    write_package(out, model.state_dict(), card_out, overwrite=True)
    say(f"wrote model package {out} in {(time.time() - t_start) / 60:.1f} min")
    return card_out


def _config(seed, grid, pre, classes, lr, batch_size, fractions) -> str:
    return json.dumps({"seed": seed, "grid": grid, "pre": pre, "classes": classes, "lr": lr,
                       "batch": batch_size, "fractions": list(fractions)}, sort_keys=True)


def _data_description(path: Path, items, counts, dataset) -> str:
    text = f"{len(items)} scans of {len({it.subject for it in items})} subjects from {path.name}: " + \
        ", ".join(f"{c} {n}" for c, n in counts.items()) + "."
    if dataset is not None:
        text = ("SYNTHETIC data (addiagnosis synth, seed {seed}): subjects made from the MNI ICBM152 template "
                "with graded, known atrophy of the medial temporal lobe and ventricles; no patient data. "
                .format(seed=dataset.get("seed"))) + text
    return text


# ------------------------------------------------------------------------------------------ CLI
def register_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model package (subject-level split)",
                              description="Train the 3D CNN on a folder of class sub-folders, a folder with "
                                          "participants.tsv, or a TSV/CSV table; writes a model package.")
    p.add_argument("data", help="class-folder tree, synth output folder, or TSV/CSV table")
    p.add_argument("--out", required=True, help="model package folder to write")
    p.add_argument("--name", default=None, help="package name (default: folder name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs)")
    p.add_argument("--max-minutes", type=float, default=None, help="time box for the training loop")
    p.add_argument("--grid", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="model grid shape (default 80 96 80)")
    p.add_argument("--spacing", type=float, default=None, help="model grid spacing in mm (default 2)")
    p.add_argument("--preprocessing", default="template", choices=["template", "physical"])
    p.add_argument("--cache", default=None, help="folder for preprocessed arrays")
    p.add_argument("--workers", type=int, default=2, help="preprocessing processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--default", action="store_true", help="mark the package as the default model")
    p.set_defaults(func=run)


def run(args) -> int:
    pre = DEFAULT_PREPROCESSING if args.preprocessing == "template" else {
        "kind": "physical", "centre": "head", "normalise": {"low": 0.5, "high": 99.5}}
    train(args.data, args.out, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          patience=args.patience, max_minutes=args.max_minutes, grid_shape=args.grid, spacing=args.spacing,
          preprocessing=pre, cache=args.cache, workers=args.workers, threads=args.threads, name=args.name,
          default=args.default, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":  # python -m addiagnosis.train DATA --out PKG (torchrun works too)
    import argparse

    ap = argparse.ArgumentParser(prog="addiagnosis-train")
    register_cli(ap.add_subparsers(dest="cmd"))
    ns = ap.parse_args(["train", *sys.argv[1:]])
    sys.exit(ns.func(ns))
