"""Calibrate the bundled demo model (issue 19): temperature on its validation split, folded into the weights;
split-conformal thresholds on its held-out test split; ECE, coverage and set size on both test cohorts.

No training data is kept in the repository, so the subjects are made again with the project's own synth code
and the seeds that scripts/train_demo.sh and the card record: the training table is generator A (seed 11,
250 subjects, prefix a) + generator B (seed 12, 250, prefix b), split by subject with seed 0 (70/15/15);
only the 75 validation and 75 test subjects are generated (every subject has its own random stream, so they
are identical to those of a full run); the test cohorts are seeds 21 (A) and 22 (B), 100 subjects each.

    python scripts/experiments/calibrate_bundled.py WORK [--package DIR] [--write]

Without ``--write`` it only measures (and checks that the regenerated validation split gives the card's
recorded validation metrics); with it, the package's weights.pt, its checksum and the card's ``calibration``
and ``conformal`` blocks are written in one checked rewrite (research.packaging.rewrite_card).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.metrics import classification_report  # noqa: E402
from addiagnosis.models.package import ModelPackage, find_package  # noqa: E402
from addiagnosis.research import calibration as cal  # noqa: E402
from addiagnosis.research import synth  # noqa: E402
from addiagnosis.research.dataset import Item, split_subjects  # noqa: E402
from addiagnosis.research.packaging import write_calibrated  # noqa: E402
from addiagnosis.research.train import preprocess_all  # noqa: E402

BUNDLED = ROOT / "ADDiagnosis" / "Resources" / "Models" / "addiagnosis-synthetic-demo"
TRAINING = (("a", 11, "default"), ("b", 12, "erode"))  # prefix, seed, atrophy model (train_demo.sh step 1)
TESTS = (("A-default", "at", 21, "default"), ("B-erode", "bt", 22, "erode"))
N_TRAIN, N_TEST = 250, 100


def _options(atrophy: str) -> dict:
    return synth.generator_options(atrophy, "wide")


def _jobs(out: Path, prefix: str, seed: int, n: int, atrophy: str, keep=None) -> list[tuple[str, dict]]:
    jobs = []
    for i, label in enumerate(synth.cohort_labels(n, seed)):
        sid = f"{prefix}-s{seed}-{i:04d}"  # synth.generate's naming
        if keep is None or sid in keep:
            p = synth.subject_params(seed, i, label, _options(atrophy))
            p["participant_id"] = sid
            jobs.append((str(out), p))
    return jobs


def _make(job):
    sid = job[1]["participant_id"]
    if not (Path(job[0]) / "scans" / f"{sid}.nii.gz").exists():
        synth._generate_one(job)
    return job[1]


def regenerate(work: Path) -> dict[str, list[Item]]:
    """The validation and test subjects of the training table, and the two test cohorts, as Items."""
    all_items = [Item(f"{p}-s{s}-{i:04d}", lab, Path()) for p, s, _ in TRAINING
                 for i, lab in enumerate(synth.cohort_labels(N_TRAIN, s))]
    split = split_subjects(all_items, (0.7, 0.15, 0.15), 0)
    keep = {sid for sid, side in split.items() if side in ("val", "test")}
    jobs = []
    for prefix, seed, atrophy in TRAINING:
        jobs += _jobs(work / "train_heldout", prefix, seed, N_TRAIN, atrophy, keep)
    for _, prefix, seed, atrophy in TESTS:
        jobs += _jobs(work / prefix, prefix, seed, N_TEST, atrophy)
    for sub in ("scans", "masks", "meta"):
        for d in {Path(j[0]) for j in jobs}:
            (d / sub).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(2) as pool:
        metas = list(pool.map(_make, jobs, chunksize=4))
    print(f"synth: {len(metas)} subjects in {work}", flush=True)

    def item(out: str, m: dict) -> Item:
        sid = m["participant_id"]
        return Item(sid, m["class"], Path(out) / "scans" / f"{sid}.nii.gz",
                    Path(out) / "masks" / f"{sid}_atrophy.nii.gz", m["severity"])

    groups: dict[str, list[Item]] = {"val": [], "test": [], **{name: [] for name, *_ in TESTS}}
    for (out, _), m in zip(jobs, metas):
        sid = m["participant_id"]
        key = split.get(sid) if Path(out).name == "train_heldout" else \
            next(name for name, prefix, *_ in TESTS if sid.startswith(prefix + "-"))
        groups[key].append(item(out, m))
    for name, prefix, *_ in TESTS:
        _write_table(work / prefix, groups[name])
    return groups


def _write_table(folder: Path, items: list[Item]) -> None:
    """participants.tsv, so that `addiagnosis evaluate PACKAGE FOLDER` reads the cohort."""
    with open(folder / "participants.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(["participant_id", "class", "severity", "scan", "mask"])
        for it in items:
            w.writerow([it.subject, it.label, f"{it.severity:.4f}", f"scans/{it.path.name}",
                        f"masks/{it.mask.name}"])


def logits(pkg: ModelPackage, items: list[Item], cache: Path) -> np.ndarray:
    files = preprocess_all(items, pkg.card.to_dict(), cache, workers=2)
    X = torch.from_numpy(np.stack([np.load(f) for f in files]))[:, None]
    return cal.logits_of(pkg.load_model("cpu"), X)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--package", default=str(BUNDLED))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    pkg = find_package(a.package)
    if "calibration" in pkg.card.raw:
        raise SystemExit(f"{pkg.path} is calibrated already (temperature {pkg.card['calibration']['temperature']})")
    groups = regenerate(a.work)
    classes = list(pkg.class_names)
    lg, ys = {}, {}
    for key, items in groups.items():
        lg[key] = logits(pkg, items, a.work / "cache")
        ys[key] = np.array([classes.index(it.label) for it in items])
    np.savez(a.work / "logits.npz", **{f"{k}_logits": v for k, v in lg.items()}, **{f"{k}_y": v for k, v in ys.items()})
    check = classification_report(cal.softmax(lg["val"]), ys["val"], classes)
    recorded = pkg.card["metrics"]["val"]
    print(f"validation split regenerated: balanced accuracy {check['balanced_accuracy']:.4f} (card "
          f"{recorded['balanced_accuracy']:.4f}), ECE {check['expected_calibration_error']:.4f} (card "
          f"{recorded['expected_calibration_error']:.4f}), NLL {check['nll']:.4f} (card {recorded['nll']:.4f})")
    t, cblock, kblock = cal.calibrate(
        lg["val"], ys["val"], lg["test"], ys["test"],
        fitted_on=f"validation split of the training subjects ({len(ys['val'])} subjects, split seed 0)",
        calibrated_on=f"held-out test split of the training subjects ({len(ys['test'])} subjects, split seed 0)")
    cblock["by_cohort"] = {name: cal.cohort_figures(lg[name], ys[name], t, kblock["threshold"]) for name, *_ in TESTS}
    kblock["by_cohort"] = {name: {k: cblock["by_cohort"][name][k] for k in ("n", "coverage", "mean_set_size",
                                                                            "set_sizes")} for name, *_ in TESTS}
    print(json.dumps({"calibration": cblock, "conformal": kblock}, indent=1))
    if a.write:  # folded weights, their checksum and both blocks in one checked rewrite of the package
        write_calibrated(pkg.path, t, cblock, kblock)
        print(f"wrote {pkg.path} (temperature {t:.4f} folded into the weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
