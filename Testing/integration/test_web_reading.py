"""Reading the map in the web app, in a real browser (issue 20): the cluster table (a click moves every slice to
the cluster's peak) and the cursor readout (position, intensity, relevance, atlas region under the pointer),
against `addiagnosis diagnose`'s report of the same example scan. Uses test_web.py's server and browser."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from test_web import browser, open_page, server, set_state, state, wait_for_overlay  # noqa: F401 - fixtures

from addiagnosis.cli.main import main as cli_main
from addiagnosis.resources import default_scan

HIPPOCAMPUS_MNI = (-26.0, -20.0, -14.0)
# timed in the page (performance.now), from the click to the page state holding the new slice positions
CLICK_AND_WAIT = """([selector, keys]) => new Promise(resolve => {
  const read = () => JSON.stringify(keys.map(k => window.trame.state.get(k)));
  const before = read(), t0 = performance.now();
  document.querySelector(selector).click();
  const tick = () => read() !== before ? resolve(performance.now() - t0)
    : performance.now() - t0 > 10000 ? resolve(-1) : setTimeout(tick, 1);
  tick();
})"""
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
    keys = ("slice_axial", "slice_coronal", "slice_sagittal")
    before = [state(page, k) for k in keys]
    target = max(reference["clusters"][: len(rows)],  # the peak farthest from where the slices are
                 key=lambda c: abs(c["peak_ras"][2] - before[0]) + abs(c["peak_ras"][1] - before[1]))
    click_s = page.evaluate(CLICK_AND_WAIT, [f"#clusters .addiagnosis-cluster[data-index='{target['index']}']",
                                             list(keys)]) / 1000.0
    assert click_s >= 0, "the slices did not move"
    r, a, s = target["peak_ras"]
    assert state(page, "slice_axial") == pytest.approx(s, abs=1.0)  # snapped to the nearest voxel plane
    assert state(page, "slice_coronal") == pytest.approx(a, abs=1.0)
    assert abs(state(page, "slice_sagittal")) == pytest.approx(abs(r), abs=1.0)
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
    print(f"\ncluster click -> slices moved: {click_s:.3f} s; pointer -> readout: {readout_s:.3f} s; {text}")
    assert readout_s < 1.0 and click_s < 2.0
    context.close()
