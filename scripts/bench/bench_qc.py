"""What the input QC (prep/qc.py) and the OOD score add to a diagnosis, against registration in the same run.

    python scripts/bench/bench_qc.py [--repeat 5]

For the bundled example scan and a 1 mm 256^3 synthetic head: the median time of ``prep.physical.prepare``
(registration + resampling), of ``qc.assess`` and of the OOD score (features from the network's forward pass
are there anyway: only the Mahalanobis distance is extra), after one warm-up that builds the caches. The
budget (issue 18) is 0.1 s per diagnosis.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.engine import Diagnoser  # noqa: E402
from addiagnosis.io.volume import read_nifti  # noqa: E402
from addiagnosis.prep import qc  # noqa: E402
from addiagnosis.prep.physical import prepare  # noqa: E402
from addiagnosis.research import qcset  # noqa: E402
from addiagnosis.resources import default_scan  # noqa: E402


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    d = Diagnoser(None)
    d.resolve_method(None)
    card = d.package.card
    scans = {"bundled example": read_nifti(default_scan()),
             "1 mm 256^3": qcset.subject(31, 0, spacing=[1.0, 1.0, 1.0], fov_mm=[256.0, 256.0, 256.0])[0]}
    feats = np.zeros(128)
    for name, vol in scans.items():
        prepared = prepare(vol, card)  # warm-up: template caches
        qc.assess(vol, prepared.info, card)
        t_prep = median_time(lambda v=vol: prepare(v, card), max(1, a.repeat // 2))
        t_qc = median_time(lambda v=vol, p=prepared: qc.assess(v, p.info, card), a.repeat * 4)
        t_ood = median_time(lambda: d.ood.score(feats), a.repeat * 4) if d.ood is not None else float("nan")
        print(f"{name} {vol.shape}: preprocessing {t_prep:.3f} s, QC {t_qc * 1000:.1f} ms "
              f"({100 * t_qc / t_prep:.1f} % of preprocessing), OOD score {t_ood * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
