"""Time the scene bridge and the headless views on a 166x256x256 scan (targets: push <= 0.3 s, 4 views <= 3 s).

Run: .venv/bin/python scripts/bench/bench_scene.py   (no model needed: a synthetic result with a realistic,
heavy-tailed relevance map on the scan's grid)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Logic"))

from addiagnosis.engine import DiagnosisResult  # noqa: E402
from addiagnosis.io.volume import Volume  # noqa: E402
from addiagnosis.mrml.runtime import SlicerRuntime  # noqa: E402
from addiagnosis.mrml.scene import push_results  # noqa: E402
from addiagnosis.mrml.views import SceneViews, render_views  # noqa: E402

CLASSES = ["CN", "EMCI", "MCI", "LMCI", "AD"]


def case(shape=(166, 256, 256)):
    rng = np.random.default_rng(0)
    aff = np.array([[0, 0, -1.2, 100], [-1.0, 0, 0, 128], [0, 1.0, 0, -128], [0, 0, 0, 1]])  # sagittal, LPS-like
    ii, jj, kk = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    r = np.sqrt(((ii - 83) / 75.0) ** 2 + ((jj - 128) / 110.0) ** 2 + ((kk - 128) / 95.0) ** 2)
    img = np.where(r < 1, 400 + 150 * np.cos(r * 6), 0).astype(np.float32)
    rel = (rng.standard_exponential(shape).astype(np.float32) ** 3) * (r < 0.9) * np.float32(1e-4)
    result = DiagnosisResult("bench", "0", CLASSES, [0.0] * 5, dict(zip(CLASSES, [0.1, 0.1, 0.2, 0.1, 0.5])),
                             "AD", "AD", "lrp-alpha1beta0", Volume(rel, aff, "scan relevance"), {}, {})
    return Volume(img, aff, "scan"), result


def main() -> None:
    vol, result = case()
    rt = SlicerRuntime()
    node = rt.add_volume(vol)
    views = SceneViews(rt)
    times = {}
    t = time.perf_counter()
    push_results(rt.scene, node, result, vr_logic=rt.vr_logic)
    times["push (first)"] = time.perf_counter() - t
    reruns = []
    for _ in range(5):
        t = time.perf_counter()
        push_results(rt.scene, node, result, vr_logic=rt.vr_logic)
        reruns.append(time.perf_counter() - t)
    times["push (re-run, update in place; median of 5)"] = float(np.median(reruns))
    out = Path(os.environ.get("BENCH_OUT", "/tmp/addiagnosis-bench"))
    t = time.perf_counter()
    views.render(out, node)
    times["render 4 views (first, 512x512)"] = time.perf_counter() - t
    t = time.perf_counter()
    views.render(out, node)
    times["render 4 views (again)"] = time.perf_counter() - t
    views.close()
    t = time.perf_counter()
    render_views(vol, result, out / "lib")
    times["render_views() end to end (new scene + push + render)"] = time.perf_counter() - t
    print(f"scan {vol.shape}, {os.cpu_count()} CPUs, {os.environ['VTK_DEFAULT_OPENGL_WINDOW']}")
    for k, v in times.items():
        print(f"{k:55s} {v:6.3f} s")


if __name__ == "__main__":
    main()
