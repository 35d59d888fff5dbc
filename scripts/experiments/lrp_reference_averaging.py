"""Can lrp-reference be stabilised by averaging? Maps averaged over K noisy copies of the network input.

    PYTHONPATH=ADDiagnosis/Logic python scripts/experiments/lrp_reference_averaging.py

Bundled model and example scan, AD target: Pearson r (input grid, brain) between the scan's map and the maps
of its flip / pad / resample twins (:mod:`addiagnosis.research.stability`) and of the input with 1 % and 2 % noise, for
plain lrp-reference (K=0) and averages over K copies with Gaussian noise of sigma (fraction of the input's 99th
percentile). An experiment behind docs/training.md, not part of the product.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))
SAMPLE = ROOT / "ADDiagnosis" / "Resources" / "SampleData" / "synthetic-AD-subject.nii.gz"
SETTINGS = ((0, 0.0), (4, 0.02), (8, 0.02), (8, 0.05))


def main() -> int:
    from addiagnosis.engine import Diagnoser
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.metrics import pearson
    from addiagnosis.prep.physical import prepare
    from addiagnosis.research import stability

    torch.set_num_threads(1)
    d = Diagnoser()
    d.resolve_method("lrp-reference")
    engine = d.engine
    vol = read_nifti(SAMPLE)
    target = d.package.class_index("AD")

    def rmap(x, k, sigma, seed):
        if k == 0:
            return engine.relevance(engine.forward(x), target, "lrp-reference").float().numpy()
        rng = np.random.default_rng(seed)
        acc = 0.0
        for _ in range(k):
            c = engine.forward(stability.noisy(x, sigma, rng))
            acc = acc + engine.relevance(c, target, "lrp-reference").float().numpy()
        return acc / k

    prep = prepare(vol, d.package.card)
    mask = prep.input_mask
    twins = stability.twins(vol)
    twin_preps = {name: prepare(t, d.package.card) for name, t in twins.items()}
    for k, sigma in SETTINGS:
        base = prep.to_input(rmap(prep.tensor, k, sigma, 1))
        out = {}
        for name, t in twins.items():
            m = stability.onto(twin_preps[name].to_input(rmap(twin_preps[name].tensor, k, sigma, 2)), t, vol)
            out[name] = round(pearson(base[mask], m[mask]), 3)
        rng = np.random.default_rng(5)
        for frac in stability.NOISE:
            m = prep.to_input(rmap(stability.noisy(prep.tensor, frac, rng), k, sigma, 3))
            out[f"noise_{frac}"] = round(pearson(base[mask], m[mask]), 3)
        print(f"K={k} sigma={sigma}", out, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
