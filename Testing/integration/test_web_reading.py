"""Reading the map in the web app, in a real browser (issue 20): the cluster table (a click moves every slice to
the cluster's peak) and the cursor readout (position, intensity, relevance, atlas region under the pointer),
against `addiagnosis diagnose`'s report of the same example scan. Uses test_web.py's server and browser."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
from test_web import browser, open_page, server, set_state, state, wait_for_overlay  # noqa: F401 - fixtures
from web_timing import SETTLE_S, apart_pair, click_to_new_slices, row_selector

from addiagnosis.cli.main import main as cli_main
from addiagnosis.resources import default_scan

HIPPOCAMPUS_MNI = (-26.0, -20.0, -14.0)
CLICKS = 7  # cluster rows clicked in turn (two rows whose peaks are apart in every axis)
# the same for the pointer: a mousemove at a place of a view, to the readout's text changing
MOVE_AND_WAIT = """([selector, x, y]) => new Promise(resolve => {
  const el = document.querySelector(selector), out = document.querySelector('#cursor-readout');
  const before = out.innerText, t0 = performance.now();
  el.dispatchEvent(new MouseEvent('mousemove', {clientX: x, clientY: y, bubbles: true}));
  const tick = () => out.innerText !== before ? resolve([performance.now() - t0, out.innerText])
    : performance.now() - t0 > 10000 ? resolve([-1, before]) : setTimeout(tick, 1);
  tick();
})"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-reading")
    assert cli_main(["diagnose", str(default_scan()), "--out", str(out), "--no-figures", "-q"]) == 0
    return json.loads((out / "report.json").read_text())


def readout_at(page, view: str, fx: float, fy: float, before: str) -> tuple[str, float]:
    """Move the pointer to a place of a view (fractions from its top-left); the readout's new text and the
    seconds it took (measured in the page)."""
    selector = f"#view-{view} .addiagnosis-view"
    box = page.locator(selector).bounding_box()
    ms, text = page.evaluate(MOVE_AND_WAIT, [selector, box["x"] + fx * box["width"], box["y"] + fy * box["height"]])
    assert ms >= 0, f"the readout did not change from {before!r}"
    return text, ms / 1000.0


def ras_of(text: str) -> np.ndarray:
    """The position in a readout: "Left Hippocampus · (-14.5, -28.0, 2.0) mm RAS · intensity ..."."""
    return np.array([float(v) for v in text.split("(")[1].split(")")[0].split(",")])


def at_peak(page, cluster) -> None:
    """The slices went through ``cluster``'s peak (snapped to the nearest voxel plane), its row is the one marked,
    and the readout reads the peak: its region and position."""
    r, a, s = cluster["peak_ras"]
    assert state(page, "slice_axial") == pytest.approx(s, abs=1.0)
    assert state(page, "slice_coronal") == pytest.approx(a, abs=1.0)
    assert abs(state(page, "slice_sagittal")) == pytest.approx(abs(r), abs=1.0)
    assert page.locator("#clusters .addiagnosis-cluster.selected").count() == 1
    assert "selected" in page.get_attribute(row_selector(cluster["index"]), "class")
    page.wait_for_function("r => document.querySelector('#cursor-readout').innerText.startsWith(r)",
                           arg=cluster["peak_region"] or "(")
    np.testing.assert_allclose(ras_of(page.inner_text("#cursor-readout")), cluster["peak_ras"], atol=0.051)


def test_cluster_rows_and_cursor_readout(server, browser, reference):  # noqa: F811 - fixtures from test_web
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = open_page(context, server["url"])
    page.click("#use-example")
    page.wait_for_selector("#scan-name")
    t0 = time.perf_counter()
    page.click("#diagnose")
    wait_for_overlay(page, "axial", t0)
    # the cluster table: the report's clusters, largest share first; a click moves every slice to the peak
    page.wait_for_selector("#clusters .addiagnosis-cluster")
    rows = state(page, "clusters")
    assert [r["index"] for r in rows] == [c["index"] for c in reference["clusters"][:12]]
    assert rows[0]["region"] == (reference["clusters"][0]["peak_region"] or "outside the atlas regions")
    peaks = {c["index"]: c for c in reference["clusters"]}
    a, b, apart = apart_pair(rows)
    assert apart > 3.0, (a, b)  # going from one peak to the other moves every slice view
    times = []  # (s to the new positions in the page, s to new pictures in all three slice views)
    for n in range(CLICKS):
        row = (a, b)[n % 2]
        state_s, pixels_s = click_to_new_slices(page, row["index"])
        # (the first click comes from the result's centre, which may share a slice with the peak: only it may
        # leave a view's picture as it was)
        assert state_s >= 0 and (pixels_s >= 0 or n == 0), f"cluster {row['index']}: the slices or pictures stayed"
        at_peak(page, peaks[row["index"]])
        times.append((state_s, pixels_s))
        time.sleep(SETTLE_S)
    # the axial slice through the left hippocampus (where the registration puts MNI -26, -20, -14)
    m = np.asarray(reference["preprocessing"]["mni_to_input_ras"])
    goal = (m @ np.append(HIPPOCAMPUS_MNI, 1.0))[:3]
    set_state(page, "slice_axial", float(goal[2]))
    time.sleep(0.5)
    # calibrate pointer -> RAS on three places, then point at the hippocampus
    text, _ = readout_at(page, "axial", 0.3, 0.3, page.locator("#cursor-readout").inner_text())
    places = {(0.3, 0.3): ras_of(text)}
    for fx, fy in ((0.7, 0.3), (0.3, 0.7)):
        text, _ = readout_at(page, "axial", fx, fy, text)
        places[(fx, fy)] = ras_of(text)
    f = np.array([[fx, fy, 1.0] for fx, fy in places])
    to_ras = np.linalg.lstsq(f, np.array(list(places.values())), rcond=None)[0]  # (3, 3): [fx, fy, 1] -> RAS
    fx, fy = np.linalg.lstsq(to_ras[:2, :2].T, goal[:2] - to_ras[2, :2], rcond=None)[0]
    text, readout_s = readout_at(page, "axial", float(fx), float(fy), text)
    here = ras_of(text)
    assert np.abs(here[:2] - goal[:2]).max() < 1.5 and abs(here[2] - goal[2]) < 1.0, (text, goal)
    assert text.startswith("Left Hippocampus · (") and "intensity" in text and "relevance" in text
    state_s, pixels_s = ([t[i] for t in times[1:]] for i in (0, 1))  # the first click came from the result's centre
    print(f"\ncluster click -> new slice positions in the page: median {statistics.median(state_s):.3f} s, max "
          f"{max(state_s):.3f} s; -> all three slice views show the new slices: median "
          f"{statistics.median(pixels_s):.3f} s, max {max(pixels_s):.3f} s ({len(pixels_s)} clicks); "
          f"pointer -> readout: {readout_s:.3f} s; {text}")
    assert readout_s < 1.0 and max(pixels_s) < 3.0  # generous for a loaded 2-core machine: the figure is printed
    context.close()
