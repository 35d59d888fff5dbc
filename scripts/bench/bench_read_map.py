"""Cost of reading a map (issue 20): explain.clusters.read_map (atlas onto the scan, clusters, regions) against
the engine's relevance_summary on the same map, in the same run.

    .venv/bin/python scripts/bench/bench_read_map.py [--shape 160] [--runs 5]

A synthetic relevance map (a few Gaussian blobs over low noise) on a 1 mm grid of ``--shape``^3, registered by a
known affine; the median of ``--runs`` of each, and the ratio. Also times the atlas lookup read_map first used
(one lookup per voxel with relevance: 1.04 s on the example scan's 2 M voxels against 0.29 s for the whole-grid
mapping it uses now).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.engine import relevance_summary  # noqa: E402
from addiagnosis.explain import clusters as cl  # noqa: E402
from addiagnosis.io.volume import Volume  # noqa: E402
from addiagnosis.prep import atlas as atlases  # noqa: E402


def synthetic(n: int) -> tuple[Volume, dict]:
    rng = np.random.default_rng(0)
    aff = np.eye(4)
    aff[:3, 3] = -n / 2.0
    m = np.eye(4)
    m[:3, 3] = [3.0, -5.0, 8.0]
    rel = rng.normal(0, 1e-6, (n, n, n)).astype(np.float32)
    idx = np.indices((n, n, n), dtype=np.float32)
    for centre in ([-26, -20, -14], [28, -20, -14], [0, -60, 40]):
        c = np.linalg.solve(aff, m @ np.append(centre, 1.0))[:3]
        rel += np.exp(-((idx - c[:, None, None, None]) ** 2).sum(0) / 50.0).astype(np.float32) * 1e-4
    return Volume(rel, aff, "bench"), {"mni_to_input_ras": m.tolist()}


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, default=160)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    vol, prep = synthetic(args.shape)
    atlases.load_atlas()
    cl.read_map(vol, prep)  # warm: imports, atlas file
    base = median_time(lambda: relevance_summary(vol.array, vol.array, None, vol), args.runs)
    reading = median_time(lambda: cl.read_map(vol, prep), args.runs)
    atlas = atlases.load_atlas()
    grid_to_mni = np.linalg.inv(np.asarray(prep["mni_to_input_ras"])) @ vol.ijk_to_ras
    idx = np.flatnonzero(vol.array)
    ijk = np.column_stack(np.unravel_index(idx, vol.shape))
    per_voxel = median_time(lambda: atlases.labels_at_voxels(atlas, grid_to_mni, ijk), 1)
    whole = median_time(lambda: atlases.labels_on_grid(atlas, grid_to_mni, vol.shape), args.runs)
    print(json.dumps({"shape": vol.shape, "relevance_summary_s": round(base, 3), "read_map_s": round(reading, 3),
                      "read_map_over_summary": round(reading / base, 2),
                      "atlas_per_voxel_lookup_s": round(per_voxel, 3), "atlas_whole_grid_s": round(whole, 3),
                      "per_voxel_over_whole_grid": round(per_voxel / whole, 2)}))


if __name__ == "__main__":
    main()
