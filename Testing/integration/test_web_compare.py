"""Comparing two maps in the web app, in a real browser (issue 20 item 4): method vs method and class vs class on the
example scan, and baseline vs follow-up (another scan of the subject), against `addiagnosis compare-maps` on the
CLI's maps of the same scans. Uses test_web.py's server, browser and page helpers.

Checks: A and B drawn in two views whose pixels differ where the maps do, B - A in a third; moving the slice of
one view moves the others (the page's positions and the numbers shown under each view); the figures and the
downloaded difference map equal the CLI's; a bad follow-up file is one line; a new Diagnose clears the
comparison; at 1280x720 every compare control can be reached and the compare views fit; no failed answer and no
traceback in the server's output.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_web import (  # noqa: F401 - server and browser are fixtures
    LEGEND_STRIP,
    browser,
    changed_png,
    cropped_scan,
    hot_pixels,
    open_page,
    png_array,
    server,
    server_paths,
    set_state,
    state,
    view_png,
    wait_for_overlay,
)

from addiagnosis import RESEARCH_USE
from addiagnosis.cli.main import main as cli_main
from addiagnosis.resources import default_scan

METHOD_B = "lrp-epsilon"
FIGURES = ("correlation", "share_moved", "dice_shown")
COMPARE_VIEWS = ("compare_a", "compare_b", "compare_diff")
# ([views, limit ms]) -> ms from the Compare click until every view shows a new, loaded frame (-1: not in time);
# the compare views are drawn only for a comparison (held otherwise), so a new frame is the comparison's. Clicks
# once no view has had a new frame for a second (a view just hidden may still send one)
CLICK_TO_FRAMES = """([views, limit]) => new Promise(resolve => {
  const src = v => { const i = document.querySelector(`#view-${v} img`);
    return i && i.complete && i.naturalWidth ? i.src : ''; };
  let last = views.map(src).join(), quiet = performance.now();
  const settle = () => { const now = views.map(src).join();
    if (now !== last) { last = now; quiet = performance.now(); }
    if (performance.now() - quiet < 1000) { setTimeout(settle, 20); return; }
    const before = views.map(src), t0 = performance.now();
    document.querySelector('#compare-run').click();
    const tick = () => { const ms = performance.now() - t0;
      if (views.every((v, i) => src(v) && src(v) !== before[i])) resolve(ms);
      else if (ms > limit) resolve(-1); else setTimeout(tick, 5); };
    tick(); };
  settle();
})"""


@pytest.fixture(scope="module")
def cli_comparisons(tmp_path_factory):
    """`addiagnosis diagnose` on the example (A), for another class, with another method, and on a follow-up scan
    (A's class), and `addiagnosis compare-maps` of A with each (the follow-up on A's grid, as the page shows it)."""
    root = tmp_path_factory.mktemp("cli-compare")
    follow = cropped_scan(root)

    def diagnose(name, scan, *extra):
        assert cli_main(["diagnose", str(scan), "--out", str(root / name), "--no-figures", "-q", *extra]) == 0
        return json.loads((root / name / "report.json").read_text())

    a = diagnose("a", default_scan())
    other = next(c for c in a["probabilities"] if c != a["target_class"])
    diagnose("target", default_scan(), "--target", other)
    diagnose("method", default_scan(), "--method", METHOD_B)
    diagnose("followup", follow, "--target", a["target_class"])
    out = {"followup_scan": follow, "other_class": other, "a": a}
    for name, extra in (("target", []), ("method", []), ("followup", ["--on", "a"])):
        assert cli_main(["compare-maps", str(root / "a"), str(root / name), "--out", str(root / f"cmp-{name}"),
                         *extra]) == 0
        out[name] = (json.loads((root / f"cmp-{name}" / "comparison.json").read_text()),
                     nib.load(root / f"cmp-{name}" / "difference.nii.gz").get_fdata())
    return out


def coloured(png: bytes, blue: bool) -> int:
    """Pixels far from grey towards blue (or red), left of the legend strip."""
    rgb = png_array(png)[:, : int(LEGEND_STRIP * png_array(png).shape[1])]
    a, b = (rgb[..., 2], rgb[..., 0]) if blue else (rgb[..., 0], rgb[..., 2])
    return int((a - b > 60).sum())


def legend_colours(png: bytes) -> int:
    """Coloured (not grey) pixels in the legend strip of a view."""
    rgb = png_array(png)[:, int(LEGEND_STRIP * png_array(png).shape[1]):]
    return int((rgb.max(axis=-1) - rgb.min(axis=-1) > 80).sum())


def run_compare(page, title_b: str) -> float:
    """Click Compare; seconds (timed in the page) until all three compare views show a new frame; then checks that
    map B is named ``title_b``, that A, B (overlay colours) and B - A (cold or hot colours) are drawn, and waits for
    the comparison's files (written after the views, in a thread)."""
    stamp = state(page, "compare_downloads")
    ms = page.evaluate(CLICK_TO_FRAMES, [list(COMPARE_VIEWS), 120_000])
    assert ms >= 0, "the compare views got no new frames"
    page.wait_for_function("t => { const s = window.trame.state;"
                           " return (s.get('compare_shown') && s.get('compare_title_b').startsWith(t))"
                           " || s.get('message'); }", arg=title_b)
    assert not state(page, "message"), state(page, "message")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        a, b, d = (view_png(page, v) for v in COMPARE_VIEWS)
        if hot_pixels(a) > 50 and hot_pixels(b) > 50 and coloured(d, True) + coloured(d, False) > 20:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the compare views were not drawn")
    page.wait_for_function("t => { const d = window.trame.state.get('compare_downloads'); return d && d !== t; }",
                           arg=stamp)
    return ms / 1000.0


def check_figures(page, url: str, reference, tmp_path: Path, name: str) -> None:
    """The page's figures and its downloaded difference map equal `addiagnosis compare-maps`'s."""
    doc, difference = reference
    figures = state(page, "compare_figures")
    assert figures["space"] == doc["space"]
    for key in FIGURES:
        assert figures[key] == pytest.approx(doc[key], abs=1e-5), key
        assert f"{key.replace('_', ' ').replace('dice shown', 'Dice of the shown voxels')}: {doc[key]:.3f}" in \
            page.inner_text("#compare-figures")
    with page.expect_download() as info:
        page.click("#download-difference")
    path = tmp_path / f"difference-{name}.nii.gz"
    info.value.save_as(path)
    web = nib.load(path).get_fdata()
    assert web.shape == difference.shape
    np.testing.assert_allclose(web, difference, rtol=1e-4, atol=1e-5 * np.abs(difference).max())
    shown = page.request.get(url + "download/comparison.json").json()
    assert shown["research_use"] == RESEARCH_USE and server_paths(shown) == []
    assert page.locator("#compare-research-use").inner_text().strip() == RESEARCH_USE


def check_linked(page) -> None:
    """A slider moved in one compare view moves the other two (positions and the numbers shown), both ways."""
    for mover, followers in (("compare_a", ("compare_b", "compare_diff")), ("compare_b", ("compare_a",))):
        before = view_png(page, followers[0])
        low, high = state(page, f"slice_{mover}_min"), state(page, f"slice_{mover}_max")
        value = state(page, f"slice_{mover}")
        goal = value + 12.0 if value + 12.0 < high else value - 12.0
        assert low <= goal <= high
        set_state(page, f"slice_{mover}", goal)
        for key in followers:
            page.wait_for_function("([k, g]) => Math.abs(window.trame.state.get(k) - g) < 1e-3",
                                   arg=[f"slice_{key}", goal])
            page.wait_for_function("([s, t]) => document.querySelector(s).innerText.trim() === t",
                                   arg=[f"#slice-{key}-value", f"{goal:.1f} mm"])
        changed_png(page, followers[0], before)  # the follower shows another slice
    # the mouse wheel over a view (Slicer's own interaction, through trame-slicer) moves the other two as well
    before = state(page, "slice_compare_b")
    box = page.locator("#view-compare_a .addiagnosis-view").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -120)
    page.wait_for_function("([k, v]) => Math.abs(window.trame.state.get(k) - v) > 1e-3",
                           arg=["slice_compare_b", before])
    page.wait_for_function("() => { const s = window.trame.state, a = s.get('slice_compare_a');"
                           " return Math.abs(s.get('slice_compare_b') - a) < 1e-3"
                           " && Math.abs(s.get('slice_compare_diff') - a) < 1e-3; }")


def check_restyle(page) -> None:
    """Top % and Opacity reach map B's compare view as they reach A's: more of B shown at Top % 30, none at
    opacity 0; then back to the page's defaults."""
    before = view_png(page, "compare_b")
    set_state(page, "top_percent", 30.0)
    wider = changed_png(page, "compare_b", before)
    assert hot_pixels(wider) > 1.5 * hot_pixels(before), (hot_pixels(before), hot_pixels(wider))
    set_state(page, "opacity", 0.0)
    hidden = changed_png(page, "compare_b", wider)
    assert hot_pixels(hidden) < 0.1 * hot_pixels(wider), (hot_pixels(wider), hot_pixels(hidden))
    set_state(page, "opacity", 0.6)
    shown = changed_png(page, "compare_b", hidden)
    set_state(page, "top_percent", 5.0)
    changed_png(page, "compare_b", shown)


def check_layout(page) -> None:
    """At 1280x720: the compare controls can be scrolled to and are whole; the compare views fit the window."""
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    for selector in ("#compare-kind", "#compare-run", "#compare-figures", "#compare-toggle", "#download-difference",
                     "#compare-research-use"):
        element = page.locator(selector).first
        element.scroll_into_view_if_needed()
        box = element.bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0, (selector, box)
        assert box["x"] + box["width"] <= 360 and box["y"] + box["height"] <= height + 1, (selector, box)
    for view in (*COMPARE_VIEWS, "compare-info"):
        box = page.locator(f"#view-{view}").bounding_box()
        assert box["x"] >= 360 and box["x"] + box["width"] <= width + 1, (view, box)
        assert box["y"] >= 40 and box["y"] + box["height"] <= height + 1, (view, box)
    duplicates = page.evaluate("() => { const ids = [...document.querySelectorAll('[id]')].map(e => e.id);"
                               " return ids.filter((x, i) => ids.indexOf(x) !== i); }")
    assert duplicates == [], duplicates
    if os.environ.get("ADDIAGNOSIS_WEB_SCREENSHOTS"):
        page.locator("#compare").scroll_into_view_if_needed()
        page.screenshot(path=str(Path(os.environ["ADDIAGNOSIS_WEB_SCREENSHOTS"]) / "web-compare.png"))


def test_compare_maps_in_browser(server, browser, cli_comparisons, tmp_path):  # noqa: F811 - fixtures
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    failed = []
    context.on("response", lambda r: r.status >= 400 and failed.append((r.status, r.request.method, r.url)))
    try:
        page = open_page(context, server["url"])
        page.click("#use-example")
        page.wait_for_selector("#scan-name")
        page.click("#diagnose")
        wait_for_overlay(page, "axial", time.perf_counter())
        page.wait_for_selector("#compare-run")
        # ---- method vs method on the example scan -------------------------------------------------------------
        set_state(page, "compare_kind", "method")
        page.wait_for_function("m => window.trame.state.get('compare_choices').includes(m)", arg=METHOD_B)
        set_state(page, "compare_choice", METHOD_B)
        a_target, a_method = cli_comparisons["a"]["target_class"], cli_comparisons["a"]["method"]
        seconds = run_compare(page, f"B: {a_target}, {METHOD_B}")
        a, b, d = (view_png(page, v) for v in COMPARE_VIEWS)
        width = int(LEGEND_STRIP * png_array(a).shape[1])
        differ = int((np.abs(png_array(a)[:, :width] - png_array(b)[:, :width]).max(axis=-1) > 40).sum())
        assert differ > 200, differ  # the two maps differ, and so do their pictures
        assert legend_colours(d) > 50  # B - A's colour legend
        assert not page.locator("#view-axial").is_visible()  # the compare views took the four views' place
        assert METHOD_B in page.inner_text("#compare-figures")
        check_figures(page, server["url"], cli_comparisons["method"], tmp_path, "method")
        check_linked(page)
        check_restyle(page)
        # Coronal: all three compare views turn (other slice ranges), and stay linked
        axial_range = (state(page, "slice_compare_a_min"), state(page, "slice_compare_a_max"))
        before = view_png(page, "compare_b")
        page.locator("#compare-orientation button", has_text="Coronal").click()
        page.wait_for_function("r => window.trame.state.get('slice_compare_a_min') !== r[0]"
                               " || window.trame.state.get('slice_compare_a_max') !== r[1]", arg=list(axial_range))
        changed_png(page, "compare_b", before)
        check_linked(page)
        page.locator("#compare-orientation button", has_text="Axial").click()
        page.wait_for_function("r => window.trame.state.get('slice_compare_a_max') === r[1]", arg=list(axial_range))
        page.set_viewport_size({"width": 1280, "height": 720})
        check_layout(page)
        page.set_viewport_size({"width": 1440, "height": 900})
        # ---- another class of the same scan ----------------------------------------------------------------------
        set_state(page, "compare_kind", "target")
        page.wait_for_function("c => window.trame.state.get('compare_choices').includes(c)",
                               arg=cli_comparisons["other_class"])
        set_state(page, "compare_choice", cli_comparisons["other_class"])
        run_compare(page, f"B: {cli_comparisons['other_class']}, ")
        check_figures(page, server["url"], cli_comparisons["target"], tmp_path, "target")
        # ---- baseline vs follow-up: a bad file is one line; the follow-up compared on the baseline's grid -------
        set_state(page, "compare_kind", "followup")
        notes = tmp_path / "notes.nii"
        notes.write_bytes(b"this is not an image\n" * 50)
        page.set_input_files("#followup-input", str(notes))
        page.wait_for_selector("#message")
        message = page.inner_text("#message").strip()
        assert message.startswith("notes:") and "\n" not in message and "Traceback" not in message
        assert "/tmp" not in message and "uploads" not in message
        page.set_input_files("#followup-input", str(cli_comparisons["followup_scan"]))
        page.wait_for_function("() => window.trame.state.get('followup_name') === 'other-subject'")
        followup_s = run_compare(page, f"B: {a_target}, {a_method} (other-subject)")
        assert "other-subject" in page.inner_text("#compare-figures")
        check_figures(page, server["url"], cli_comparisons["followup"], tmp_path, "followup")
        logged = [line.split("seconds=")[1] for line in server["log"].read_text().splitlines()
                  if "event=compare outcome=ok" in line]
        print(f"\ncompare: click -> A, B and B - A drawn: {seconds:.2f} s (another method), {followup_s:.2f} s "
              f"(a follow-up scan); server (seconds, engine_s): {logged}; figures {state(page, 'compare_figures')}")
        # ---- a new Diagnose clears the comparison; the four views come back ----------------------------------
        page.click("#diagnose")
        page.wait_for_selector("#compare-figures", state="detached")
        page.wait_for_function("() => !window.trame.state.get('busy')")
        assert not state(page, "compare_shown") and page.locator("#view-axial").is_visible()
        assert page.request.get(server["url"] + "download/difference.nii.gz").status == 404
    except Exception:
        print(server["output"].read_text(errors="replace")[-4000:])
        raise
    finally:
        context.close()
    assert [f for f in failed if not f[2].endswith("difference.nii.gz")] == [], failed
    output = server["output"].read_text(errors="replace")
    for sign in ("Traceback", "Task exception was never retrieved", "Error"):
        assert sign not in output, output[-3000:]
