#!/usr/bin/env python
"""Fingerprint of every explanation method's relevance maps: SHA-256 of each map's bytes, as JSON.

Run before and after a change to the LRP code that must not change a single bit (a refactoring), and compare:

    .venv/bin/python scripts/experiments/lrp_fingerprint.py /tmp/lrp_before.json
    ... change ...
    .venv/bin/python scripts/experiments/lrp_fingerprint.py /tmp/lrp_after.json --compare /tmp/lrp_before.json

Cases, each in float32 and float64 and for every method of ``models.card.METHODS``:
- ``random``: Testing/conftest.py's ``random_model`` (seed 0, 80x88x80), on a non-negative and on a signed
  random input (the alpha-beta rule's x- w- branch), reference a third random input, targets 0 and 4;
- ``bundled``: the bundled model on the bundled example scan's prepared tensor (its template as the reference),
  target = the predicted class; plus the map :meth:`Diagnoser.explain_on_grid` returns (float32, the engine path).
The prepared tensor's own hash is recorded too: if it changes, preprocessing changed, not LRP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))
sys.path.insert(0, str(ROOT / "Testing"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from addiagnosis.engine import Diagnoser  # noqa: E402
from addiagnosis.explain.lrp import FastLRP  # noqa: E402
from addiagnosis.io.volume import read_nifti  # noqa: E402
from addiagnosis.models.card import METHODS  # noqa: E402
from addiagnosis.resources import default_scan  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def digest(t) -> str:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def maps(model, x, ref, targets, prefix: str, out: dict) -> None:
    for dname, dtype in DTYPES.items():
        engine = FastLRP(model, dtype=dtype)
        cache = engine.forward(x)
        engine.set_reference(ref)  # after forward(): the shared planes buffer must not leak between inputs
        out[f"{prefix}/{dname}/logits"] = digest(cache.logits)
        for target in targets(cache):
            for method in METHODS:
                out[f"{prefix}/{dname}/t{target}/{method}"] = digest(engine.relevance(cache, target, method))


def random_cases(out: dict) -> None:
    from conftest import GRID, random_model

    model = random_model(seed=0)
    g = torch.Generator().manual_seed(0)
    pos = torch.rand((1, 1, *GRID), generator=g, dtype=torch.float64)
    signed = torch.randn((1, 1, *GRID), generator=g, dtype=torch.float64)
    ref = torch.rand((1, 1, *GRID), generator=g, dtype=torch.float64)
    for name, x in (("nonneg", pos), ("signed", signed)):
        maps(model, x, ref, lambda c: (0, 4), f"random/{name}", out)


def bundled_cases(out: dict) -> None:
    diag = Diagnoser()
    volume = read_nifti(default_scan())
    for method in METHODS:  # the engine path (float32 maps as the front ends get them)
        g = diag.explain_on_grid(volume, method)
        out[f"bundled/engine/{method}"] = digest(g.relevance)
    x = g.prepared.tensor
    out["bundled/input"] = digest(x)
    ref = diag.engine.reference_input
    out["bundled/reference"] = digest(ref)
    maps(diag.model, x, ref, lambda c: (int(c.logits.argmax()),), "bundled/direct", out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--compare", type=Path, help="an earlier fingerprint: report every entry that differs")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)  # float32 sums may depend on the thread count: fix it
    out: dict[str, str] = {}
    random_cases(out)
    bundled_cases(out)
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{len(out)} fingerprints -> {args.out}")
    if args.compare:
        old = json.loads(args.compare.read_text())
        differ = sorted(k for k in set(old) | set(out) if old.get(k) != out.get(k))
        for k in differ:
            print(f"DIFFERS: {k}")
        print(f"{len(old) - len([k for k in differ if k in old])}/{len(old)} identical")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
