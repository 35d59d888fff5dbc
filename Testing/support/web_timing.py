"""Timing the web app's cluster rows in the page (issue 20): a click until every slice view shows its new slice.

Used by Testing/integration/test_web_reading.py and scripts/bench/bench_web_click.py. Timed in the page
(``performance.now``) from the click to (1) the page state holding the new slice positions and (2) every slice
view's picture replaced by one whose pixels differ from before the click (drawn on a small canvas; a mean
difference over 4 grey levels per channel, far above JPEG's noise between two frames of one slice).
"""

from __future__ import annotations

VIEWS = ("axial", "coronal", "sagittal")
SETTLE_S = 1.0  # between two clicks: the views' frames after a click (the 3D view's last) have come

# ([selector, views]) -> [ms to the new positions in the page state, ms to every view's new picture]; -1: not in 10 s
CLICK_TO_PIXELS = """([selector, views]) => new Promise(resolve => {
  const canvas = document.createElement('canvas'); canvas.width = 48; canvas.height = 48;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const shown = v => document.querySelector(`#view-${v} img`);
  const pixels = img => { ctx.drawImage(img, 0, 0, 48, 48); return ctx.getImageData(0, 0, 48, 48).data; };
  const differs = (a, b) => { let s = 0; for (let i = 0; i < a.length; i++) s += Math.abs(a[i] - b[i]);
    return s / a.length > 4; };
  const keys = views.map(v => 'slice_' + v), read = () => JSON.stringify(keys.map(k => window.trame.state.get(k)));
  const state0 = read(), before = views.map(v => pixels(shown(v))), src0 = views.map(v => shown(v).src);
  const done = views.map(() => -1);
  let tState = -1;
  const t0 = performance.now();
  document.querySelector(selector).click();
  const tick = () => {
    const now = performance.now() - t0;
    if (tState < 0 && read() !== state0) tState = now;
    views.forEach((v, i) => {
      const img = shown(v);
      if (done[i] < 0 && img.src !== src0[i] && img.complete && img.naturalWidth && differs(pixels(img), before[i]))
        done[i] = now;
    });
    if ((tState >= 0 && done.every(d => d >= 0)) || now > 10000)
      resolve([tState, done.some(d => d < 0) ? -1 : Math.max(...done)]);
    else setTimeout(tick, 1);
  };
  tick();
})"""


def row_selector(index: int) -> str:
    return f"#clusters .addiagnosis-cluster[data-index='{index}']"


def click_to_new_slices(page, index: int) -> tuple[float, float]:
    """Click cluster row ``index``; seconds until the page state holds the new slice positions and until all
    three slice views show new pictures (-0.001 for either if not within 10 s)."""
    state_ms, pixels_ms = page.evaluate(CLICK_TO_PIXELS, [row_selector(index), list(VIEWS)])
    return state_ms / 1000.0, pixels_ms / 1000.0


def apart_pair(rows) -> tuple[dict, dict, float]:
    """Two cluster rows whose peaks lie furthest apart in the axis where they are nearest (so that going from one
    to the other moves every slice view), and that smallest distance (mm)."""
    a, b = max(((a, b) for a in rows for b in rows if a is not b),
               key=lambda p: min(abs(p[0]["ras"][i] - p[1]["ras"][i]) for i in range(3)))
    return a, b, min(abs(a["ras"][i] - b["ras"][i]) for i in range(3))
