"""Headless rendering of Slicer's own slice and 3D views (slicer-core + Mesa EGL): overlay where it belongs.

``ADDIAGNOSIS_SCREENSHOTS=docs/images`` also writes the README's picture there (slicer-views.png).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core runtime is not installed (pip install '.[scene]')")

from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from addiagnosis.engine import DiagnosisResult  # noqa: E402
from addiagnosis.io.volume import Volume  # noqa: E402
from addiagnosis.mrml.runtime import SlicerRuntime  # noqa: E402
from addiagnosis.mrml.scene import PushOptions, push_results  # noqa: E402
from addiagnosis.mrml.views import SHEET_CAPTION_H, SceneViews, egl_available, render_views, views_sheet  # noqa: E402

OK, WHY = egl_available()
pytestmark = pytest.mark.skipif(not OK, reason=f"no off-screen OpenGL (Mesa EGL) here: {WHY}")
CLASSES = ["CN", "EMCI", "MCI", "LMCI", "AD"]


def synthetic_case():
    """An oblique, anisotropic head with a relevance box (high), a faint shell (below threshold), zero elsewhere."""
    shape = (96, 110, 90)
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.array([[1.8 * c, -2.0 * s, 0, -80], [1.8 * s, 2.0 * c, 0, -120], [0, 0, 2.2, -95], [0, 0, 0, 1]])
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(((ii - 48) / 40) ** 2 + ((jj - 55) / 48) ** 2 + ((kk - 45) / 38) ** 2)
    img = np.where(r < 1, 300 + 200 * np.cos(r * 5) ** 2, 0).astype(np.float32)
    rel = np.zeros(shape, np.float32)
    rel[(r > 0.55) & (r < 0.6)] = 0.01  # faint: under the threshold, must stay invisible
    rel[60:74, 40:58, 38:52] = 1.0
    rel[63:71, 44:54, 41:49] = 2.0
    centre = (aff @ np.array([66.5, 48.5, 44.5, 1.0]))[:3]
    probs = dict(zip(CLASSES, [0.05, 0.05, 0.1, 0.1, 0.7]))
    result = DiagnosisResult("synthetic", "0", CLASSES, [0.0] * 5, probs, "AD", "AD", "lrp-alpha1beta0",
                             Volume(rel, aff, "scan relevance"), {"top1pct_centroid_ras": centre.tolist()}, {})
    return Volume(img, aff, "scan"), result


def hot(rgb: np.ndarray) -> np.ndarray:
    """Pixels with the overlay's colour: red/orange/yellow, far from grey (R == G == B)."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 0] > 100)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    vol, result = synthetic_case()
    rt = SlicerRuntime()
    node = rt.add_volume(vol)
    views = SceneViews(rt, size=(256, 256))
    out = push_results(rt.scene, node, result, PushOptions(opacity=0.7), vr_logic=rt.vr_logic)
    folder = tmp_path_factory.mktemp("views")
    files = views.render(folder, node, result.summary["top1pct_centroid_ras"])
    yield rt, views, files, result, out
    views.close()


def pixel_relevance(view, result, size):
    """Relevance (nearest voxel) under every pixel of a slice view, from Slicer's XY->RAS of that view."""
    w, h = size
    xy_to_ras = np.array([[view.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    ys, xs = np.mgrid[0:h, 0:w]
    xy = np.stack([xs.ravel(), (h - 1 - ys).ravel(), np.zeros(xs.size), np.ones(xs.size)])  # PNG rows top-down
    ijk = (np.linalg.inv(result.relevance.ijk_to_ras) @ xy_to_ras @ xy)[:3].round().astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(result.relevance.shape)[:, None]), axis=0)
    rel = result.relevance.array
    sure_hi = ndimage.minimum_filter(rel, size=3)
    sure_zero = ndimage.maximum_filter(rel, size=3) == 0
    hi = np.zeros(xs.size, bool)
    zero = np.zeros(xs.size, bool)
    i, j, k = ijk[:, inside]
    hi[inside] = sure_hi[i, j, k] >= 1.0
    zero[inside] = sure_zero[i, j, k]
    return hi.reshape(h, w), zero.reshape(h, w)


@pytest.mark.parametrize("key", ["axial", "coronal", "sagittal"])
def test_overlay_colour_where_relevance_is_high_only(rendered, key):
    rt, views, files, result, out = rendered
    rgb = np.asarray(Image.open(files[key]).convert("RGB"))
    assert rgb.shape == (256, 256, 3)
    hi, zero = pixel_relevance(views.slices[key], result, (256, 256))
    assert hi.sum() > 50, "the slice view should cut through the relevance box"
    coloured = hot(rgb)
    assert coloured[hi].mean() > 0.95  # overlay colour where relevance is high
    assert coloured[zero].mean() < 0.002  # and not where it is zero (anatomy stays grey)
    anatomy = zero & (rgb.max(axis=2) > 40)
    assert anatomy.sum() > 1000  # the background scan is drawn too


def test_3d_view_shows_top_relevance(rendered):
    rt, views, files, result, out = rendered
    rgb = np.asarray(Image.open(files["3d"]).convert("RGB"))
    assert hot(rgb).sum() > 100


def test_render_views_library_call(tmp_path):
    vol, result = synthetic_case()
    t0 = time.perf_counter()
    files = render_views(vol, result, tmp_path / "out")
    seconds = time.perf_counter() - t0
    assert set(files) == {"axial", "coronal", "sagittal", "3d"}
    for key, path in files.items():
        assert path.name == f"view_{key}.png" and path.parent == tmp_path / "out"
        with Image.open(path) as im:
            assert im.size == (512, 512)
    assert seconds < 20  # target 3 s on 2 cores (scripts/bench_scene.py); generous for loaded CI machines


LEGEND_STRIP = 0.88  # the colour legend stands in the right 12 % of a slice view (mrml.views.show_legend)


def test_readme_picture_of_the_example(tmp_path):
    """The README's picture (views_sheet, as scripts/assets/make_screenshot.py makes it): the example scan diagnosed
    by the bundled model; in each slice view the scan, the overlay inside the head and the colour legend (dark red
    at its threshold up to yellow) beside it; the volume rendering in the 3D view; the two lines under them."""
    from addiagnosis.engine import diagnose
    from addiagnosis.io.volume import read_nifti
    from addiagnosis.resources import default_scan

    volume = read_nifti(default_scan())
    result = diagnose(volume)
    folder = Path(os.environ.get("ADDIAGNOSIS_SCREENSHOTS") or tmp_path)
    rgb = np.asarray(Image.open(views_sheet(volume, result, folder / "slicer-views.png", default_scan().name))
                     .convert("RGB")).astype(np.int32)
    w = h = 400
    assert rgb.shape == (2 * h + SHEET_CAPTION_H, 2 * w, 3)
    tiles = {k: rgb[(n // 2) * h:(n // 2 + 1) * h, (n % 2) * w:(n % 2 + 1) * w]
             for n, k in enumerate(("axial", "coronal", "sagittal", "3d"))}
    for key in ("axial", "coronal", "sagittal"):
        view, legend = tiles[key][:, : int(LEGEND_STRIP * w)], tiles[key][:, int(LEGEND_STRIP * w):]
        head = ndimage.binary_fill_holes(ndimage.binary_closing(view.max(axis=2) > 40, iterations=3))
        colour = hot(view)
        assert colour.sum() > 300, key  # the relevance overlay ...
        assert (colour & head).sum() > 0.99 * colour.sum(), key  # ... on the head only
        grey = (view.max(axis=2) - view.min(axis=2) < 12) & (view[..., 0] > 60)
        assert grey.sum() > 20000, key  # the scan around it
        yellow = (legend[..., 0] > 200) & (legend[..., 1] > 200) & (legend[..., 2] < 120)
        red = (legend[..., 0] > 100) & (legend[..., 1] < 50) & (legend[..., 2] < 50)
        assert yellow.sum() > 20 and red.sum() > 20, key  # the legend's colour bar, from the threshold up
        assert np.nonzero(yellow)[0].mean() < np.nonzero(red)[0].mean(), key  # yellow (high) above dark red
        assert hot(legend).sum() < 0.2 * legend.shape[0] * legend.shape[1], key  # a narrow bar, not a wash
    assert hot(tiles["3d"]).sum() > 500  # the volume rendering
    caption = rgb[2 * h:]
    light = caption.min(axis=2) > 200  # "Predicted ...; relevance of ... (method); the scan"
    amber = (caption[..., 0] > 220) & (np.abs(caption[..., 1] - 190) < 40) & (caption[..., 2] < 140)  # research use
    assert light[:22].sum() > 200 and amber[22:].sum() > 200 and amber[:22].sum() == 0


EXIT_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from test_views import synthetic_case
from addiagnosis.mrml.runtime import SlicerRuntime
from addiagnosis.mrml.scene import push_results
from addiagnosis.mrml.views import SceneViews, render_views

vol, result = synthetic_case()
rt = SlicerRuntime()
node = rt.add_volume(vol)
views = SceneViews(rt, size=(64, 64))
push_results(rt.scene, node, result, vr_logic=rt.vr_logic)
views.render(sys.argv[2], node)
if sys.argv[4] == "closed":
    views.close()
render_views(vol, result, sys.argv[3], size=(64, 64))  # a private runtime comes and goes meanwhile
if sys.argv[4] == "open":
    views.render(sys.argv[2], node)
print("rendered")
"""


@pytest.mark.parametrize("state", ["open", "closed"])
def test_views_outlive_a_private_runtime_and_exit_cleanly(tmp_path, state):
    """Views of one runtime (kept open, or closed) and render_views() in between: the process exits with 0.

    Both crashed the interpreter at exit before (segmentation fault in a slice logic reacting to scene events).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    import addiagnosis

    env = {**os.environ, "PYTHONPATH": str(Path(addiagnosis.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(Path(__file__).parent), str(tmp_path / "a"),
                           str(tmp_path / "b"), state], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("rendered"), proc.stderr[-2000:]
