#!/usr/bin/env python
"""Fingerprint of a tiny train + resume + evaluate run: SHA-256 of weights.pt, card.json and evaluate's outputs.

Timing fields are left out (the card's ``training.minutes`` and per-epoch ``seconds``, the metrics' ``seconds``).
Run before and after a change to the training code that must not change the result (a refactoring):

    .venv/bin/python scripts/experiments/train_fingerprint.py /tmp/train_before.json
    .venv/bin/python scripts/experiments/train_fingerprint.py /tmp/train_after.json --compare /tmp/train_before.json

The data are Testing/unit/test_train.py's 20 synthetic two-class scans (24^3 voxels); the run trains 3 epochs
with augmentation (the per-epoch generators), writes the package, then resumes from the checkpoint to 4;
``evaluate`` then scores the package on the same scans (metrics.json and subjects.tsv).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from addiagnosis.research import evaluate, train  # noqa: E402

PHYSICAL = {"kind": "physical", "centre": "fov", "normalise": {"low": 0.5, "high": 99.5}}


def make_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("CN", "AD"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            a = rng.normal(0.1, 0.02, (24, 24, 24)).astype(np.float32)
            a[4:20, 4:20, 4:20] += 1.0
            a[8:16, 8:16, 8:16] = 0.3 if label == "AD" else 1.0
            sid = f"{100 + i + (0 if label == 'CN' else 50):03d}_S_{1000 + i:04d}"
            path = root / label / f"ADNI_{sid}_MR_scan.nii.gz"
            nib.save(nib.Nifti1Image(a, np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    return root


def card_digest(path: Path) -> str:
    card = json.loads(path.read_text())
    card["training"].pop("minutes", None)
    for h in card["training"]["history"]:
        h.pop("seconds", None)
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()


def without_seconds(value):
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def run(tmp: Path) -> dict:
    data = make_data(tmp / "data")
    out = tmp / "pkg"
    kw = dict(seed=3, batch_size=4, lr=3e-3, patience=10, grid_shape=(80, 80, 80), spacing=1.2,
              preprocessing=PHYSICAL, cache=str(tmp / "cache"), workers=1, threads=2,
              fractions=(0.6, 0.2, 0.2), log=lambda m: None, augment_data=True)
    result = {}
    for name, epochs in (("train", 3), ("resume", 4)):
        train.train(data, out, epochs=epochs, **kw)
        result[f"{name}/weights.pt"] = hashlib.sha256((out / "weights.pt").read_bytes()).hexdigest()
        result[f"{name}/card.json"] = card_digest(out / "card.json")
    evaluate.evaluate(str(out), data, tmp / "eval", randomisation_n=2, log=lambda m: None)
    metrics = without_seconds(json.loads((tmp / "eval" / "metrics.json").read_text()))
    metrics.pop("data", None)  # the temporary folder's path
    result["evaluate/metrics.json"] = hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()
    result["evaluate/subjects.tsv"] = hashlib.sha256((tmp / "eval" / "subjects.tsv").read_bytes()).hexdigest()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--compare", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp))
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1))
    if args.compare:
        old = json.loads(args.compare.read_text())
        differ = [k for k in sorted(set(old) | set(result)) if old.get(k) != result.get(k)]
        print("identical" if not differ else f"DIFFERS: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
