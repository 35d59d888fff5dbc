"""Fit the bundled demo model's out-of-distribution model (issue 18) on its own training split.

No training data is kept in the repository, so the training table is made again with the project's synth and
the seeds scripts/assets/train_demo.sh and the card record: generator A (seed 11, 250 subjects, prefix a,
--variety wide) + generator B (seed 12, erode, prefix b), split by subject with seed 0 (70/15/15). The fit uses
the 350 training subjects, the threshold the 75 validation subjects; the 75 held-out test subjects are scored
to check that >= 95 % of in-distribution scans fall below the threshold.

    python scripts/experiments/ood_bundled.py WORK [--package DIR] [--write]

WORK holds (or gets) A_train/ and B_train/ (``addiagnosis synth`` folders) and the preprocessing cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.models import ood  # noqa: E402
from addiagnosis.models.package import find_package  # noqa: E402
from addiagnosis.research import oodfit, synth  # noqa: E402
from addiagnosis.research.dataset import load_items, split_subjects  # noqa: E402
from addiagnosis.research.train import preprocess_all  # noqa: E402

BUNDLED = ROOT / "ADDiagnosis" / "Resources" / "Models" / "addiagnosis-synthetic-demo"
TRAINING = (("A_train", "a", 11, "default"), ("B_train", "b", 12, "erode"))  # train_demo.sh step 1
N_TRAIN = 250


def cohorts(work: Path) -> list:
    items = []
    for folder, prefix, seed, atrophy in TRAINING:
        if not (work / folder / "participants.tsv").exists():
            synth.generate(N_TRAIN, work / folder, seed, 2, synth.generator_options(atrophy, "wide"), prefix)
        items += load_items(work / folder)
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--package", default=str(BUNDLED))
    ap.add_argument("--write", action="store_true", help="write ood.npz and the card's ood entry")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    pkg = find_package(a.package)
    items = cohorts(a.work)
    split = split_subjects(items, tuple(pkg.card["split"]["fractions"]), int(pkg.card["split"]["seed"]))
    files = preprocess_all(items, pkg.card.to_dict(), a.work / "cache", workers=2)
    X = torch.from_numpy(np.stack([np.load(f) for f in files]))[:, None]
    part = {k: [i for i, it in enumerate(items) if split[it.subject] == k] for k in ("train", "val", "test")}
    sizes = {k: len(v) for k, v in part.items()}
    if sizes != pkg.card["split"]["scans"]:
        raise SystemExit(f"split {sizes} differs from the card's {pkg.card['split']['scans']}")
    model = pkg.load_model("cpu")
    feats = {k: ood.features(model, X[v]) for k, v in part.items()}
    fit = ood.fit(feats["train"], feats["val"], ood.features_sha256(model.state_dict()))
    scores = {k: fit.distances(f) for k, f in feats.items()}
    out = {"threshold": fit.threshold, "shrinkage": fit.shrinkage,
           **{f"{k}_median": float(np.median(s)) for k, s in scores.items()},
           **{f"{k}_below_threshold": float(np.mean(s <= fit.threshold)) for k, s in scores.items()}}
    print(json.dumps(out, indent=1))
    np.savez(a.work / "ood_scores.npz", **scores)
    if a.write:
        entry = oodfit.attach(pkg.path, model, X[part["train"]], X[part["val"]])
        print(f"wrote {pkg.path / entry['file']} (threshold {entry['threshold']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
