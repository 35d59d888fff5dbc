"""The web app in a real browser: Debian's Chromium driven by Playwright against `addiagnosis web`.

One server (started on a free loopback port, stopped by its PID), two browser contexts (two sessions):
A uses the example scan and is compared with `addiagnosis diagnose` on the same file; B sends bad uploads,
then a good (cropped, so differently shaped) scan; both diagnose at the same time and each sees only its own.
A runs at 1440x900 and B at 1280x720: at both sizes every control can be reached and nothing is cut.
``ADDIAGNOSIS_SCREENSHOTS=docs/images`` (or ``ADDIAGNOSIS_WEB_SCREENSHOTS``) saves the page at both sizes (web.png,
web-1280x720.png).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install '.[web]')")
pytest.importorskip("slicer", reason="the slicer-core runtime is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from PIL import Image  # noqa: E402

from addiagnosis import RESEARCH_USE  # noqa: E402
from addiagnosis.cli.main import main as cli_main  # noqa: E402
from addiagnosis.resources import default_scan  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from addiagnosis.mrml.views import egl_available  # noqa: E402

from contrasts import t2_like  # noqa: E402

OK, WHY = egl_available()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not OK, reason=f"no off-screen OpenGL (Mesa EGL): {WHY}")]
LOGIC = Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Logic"
UPLOAD_LIMIT_MB = 4
TIMEOUT_MS = 120_000
LEGEND_STRIP = 0.88  # the colour legend stands in the right 12 % of a view, beside the head


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    port = free_port()
    log = folder / "access.log"
    output = folder / "server-output.log"  # the gateway's and (ADDIAGNOSIS_WEB_DEBUG) every session's stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LOGIC), os.environ.get("PYTHONPATH", "")]),
               ADDIAGNOSIS_WEB_DEBUG="1")
    out_fh = open(output, "wb")  # noqa: SIM115 - open for the server's whole life
    proc = subprocess.Popen([sys.executable, "-m", "addiagnosis.cli.main", "web", "--port", str(port),
                             "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--session-grace-s", "3",
                             "--access-log", str(log)],
                            env=env, stdout=out_fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as resp:
                if json.load(resp)["ok"]:
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the web server exited: {output.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the web server did not answer within 60 s")
    yield {"url": url, "proc": proc, "log": log, "folder": folder, "output": output}
    proc.send_signal(signal.SIGTERM)  # stopped by its PID
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out_fh.close()


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """`addiagnosis diagnose` on the example scan: what the page must show."""
    out = tmp_path_factory.mktemp("cli")
    assert cli_main(["diagnose", str(default_scan()), "--out", str(out), "--no-figures", "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    return report, nib.load(out / "relevance.nii.gz")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"],
                               ignore_default_args=["--hide-scrollbars"])  # scrollbars drawn, as users see them
        yield b
        b.close()


def hot_pixels(png: bytes) -> int:
    """Pixels with the overlay's colours (red/orange/yellow, far from grey), left of the colour legend."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    rgb = rgb[:, : int(LEGEND_STRIP * rgb.shape[1])]
    return int(((rgb[..., 0] - rgb[..., 2] > 80) & (rgb[..., 0] > 120)).sum())


def grey_pixels(png: bytes) -> int:
    """Pixels of the scan itself (grey, neither black nor overlay)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return int(((spread < 12) & (rgb[..., 0] > 60)).sum())


def cropped_scan(folder: Path) -> Path:
    """The example scan cropped to another grid (another shape and origin): a second, different subject."""
    img = nib.load(default_scan())
    data = np.asarray(img.dataobj)[4:-3, 2:-5, 3:-2]
    aff = img.affine.copy()
    aff[:3, 3] = (img.affine @ np.array([4, 2, 3, 1.0]))[:3]
    path = folder / "other-subject.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), path)
    return path


def t2_scan(folder: Path) -> Path:
    """The example scan remapped to a T2-like contrast: the quality control fails it."""
    from addiagnosis.io.volume import read_nifti, write_nifti

    path = folder / "t2-like.nii.gz"
    write_nifti(t2_like(read_nifti(default_scan())), path)
    return path


def open_page(context, url):
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#use-example")
    return page


def wait_for_overlay(page, view: str, t0: float) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if hot_pixels(page.locator(f"#view-{view} img").first.screenshot()) > 50:
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise AssertionError(f"no overlay colours in the {view} view")


def shown_probabilities(page) -> dict[str, float]:
    return {el.get_attribute("data-class"): float(el.get_attribute("data-p"))
            for el in page.locator(".addiagnosis-prob").all()}


def png_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int32)


def view_png(page, view: str) -> bytes:
    return page.locator(f"#view-{view} img").first.screenshot()


def state(page, key: str):
    return page.evaluate("k => window.trame.state.get(k)", key)


def set_state(page, key: str, value) -> None:
    page.evaluate("([k, v]) => window.trame.state.set(k, v)", [key, value])



def legend_pixels(png: bytes) -> int:
    """Legend-coloured pixels (yellow to red, far from grey) in the right strip of a view."""
    rgb = png_array(png)[:, int(LEGEND_STRIP * png_array(png).shape[1]):]
    return int(((rgb[..., 0] - rgb[..., 2] > 80) & (rgb[..., 0] > 120)).sum())


def overlay_pixels(png: bytes, reference: bytes) -> int:
    """Pixels the overlay changes: those that differ from the same slice shown at opacity 0 (legend strip left out)."""
    a, b = png_array(png), png_array(reference)
    width = int(LEGEND_STRIP * a.shape[1])
    return int((np.abs(a[:, :width] - b[:, :width]).max(axis=-1) > 40).sum())


def changed_png(page, view: str, before: bytes, timeout: float = 30) -> bytes:
    """The view's picture once it differs from ``before`` (and has had half a second to settle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if view_png(page, view) != before:
            time.sleep(0.5)
            return view_png(page, view)
    raise AssertionError(f"the {view} view did not change")


def server_paths(report) -> list[str]:
    """Strings of a report that look like absolute paths (POSIX or Windows)."""
    if isinstance(report, dict):
        return [p for v in report.values() for p in server_paths(v)]
    if isinstance(report, list):
        return [p for v in report for p in server_paths(v)]
    return [report] if isinstance(report, str) and re.match(r"^(/|[A-Za-z]:[\\/]|\\\\)", report) else []


def check_top_percent(page) -> list[int]:
    """Top % over its whole range: every step shows more of the map, and the page says how much."""
    shown = view_png(page, "axial")  # before the change: a view sends one frame per change
    set_state(page, "opacity", 0)
    reference = changed_png(page, "axial", shown)
    set_state(page, "opacity", 0.6)
    png = changed_png(page, "axial", reference)
    counts, relevance, voxels = [], [], []
    for top in (0.5, 5, 15, 30, 50):
        text = page.inner_text("#threshold-text")
        set_state(page, "top_percent", top)
        page.wait_for_function("t => document.querySelector('#threshold-text').innerText !== t", arg=text)
        png = changed_png(page, "axial", png)
        counts.append(overlay_pixels(png, reference))
        shares = re.search(r"shown: (\d+) % of the positive relevance, in ([0-9.]+) % of the voxels",
                           page.inner_text("#threshold-text"))
        relevance.append(int(shares.group(1)))
        voxels.append(float(shares.group(2)))
        assert page.inner_text("#threshold-value").strip() == f"{top:.1f} %"
    assert all(b > 1.15 * a for a, b in zip(counts, counts[1:])), counts  # no floor: each step shows more
    assert relevance == sorted(relevance) and relevance[-1] > relevance[0], relevance
    assert all(b > a for a, b in zip(voxels, voxels[1:])), voxels
    set_state(page, "top_percent", 5.0)
    return counts


def check_layout(page, size: str) -> None:
    """Every control of the side panel can be scrolled to and is then whole on screen; the views fit the page."""
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    for selector in ("#use-example", "#diagnose", "#research-use", "#opacity", "#threshold", "#threshold-text",
                     "#reset-view", "#download-relevance", "#download-report", "#download-overview"):
        element = page.locator(selector).first
        element.scroll_into_view_if_needed()
        box = element.bounding_box()
        assert box and box["x"] >= 0 and box["y"] >= 0, (size, selector, box)
        # whole on screen, to the pixel (scrolling into view can leave a fraction of a pixel past the edge)
        assert box["x"] + box["width"] <= 360 and box["y"] + box["height"] <= height + 1, (size, selector, box)
    overflow = page.evaluate("() => { const p = document.querySelector('.v-navigation-drawer__content');"
                             " return [p.scrollWidth - p.clientWidth, getComputedStyle(p).overflowY]; }")
    assert overflow == [0, "scroll"], (size, overflow)  # nothing cut sideways; the panel scrolls (cue: its bar)
    for view in ("axial", "coronal", "sagittal", "threed"):
        box = page.locator(f"#view-{view}").bounding_box()
        assert box["x"] >= 360 and box["x"] + box["width"] <= width + 1, (size, view, box)
        assert box["y"] >= 40 and box["y"] + box["height"] <= height + 1, (size, view, box)
    duplicates = page.evaluate("() => { const ids = [...document.querySelectorAll('[id]')].map(e => e.id);"
                               " return ids.filter((x, i) => ids.indexOf(x) !== i); }")
    assert duplicates == [], duplicates
    page.locator("#use-example").scroll_into_view_if_needed()
    folder = os.environ.get("ADDIAGNOSIS_SCREENSHOTS") or os.environ.get("ADDIAGNOSIS_WEB_SCREENSHOTS")
    if folder:  # ADDIAGNOSIS_SCREENSHOTS remakes every README picture (test_views.py writes slicer-views.png)
        name = "web.png" if size == "1440x900" else f"web-{size}.png"
        page.screenshot(path=str(Path(folder) / name))


def check_rediagnose(page, centred: float) -> None:
    """Reset views re-centres on the relevance; another method marks the result stale; diagnosing again keeps
    the user's slice."""
    moved = state(page, "slice_axial")
    assert moved != pytest.approx(centred)
    page.click("#reset-view")
    page.wait_for_function("c => Math.abs(window.trame.state.get('slice_axial') - c) < 1e-3", arg=centred)
    set_state(page, "slice_axial", moved)
    page.wait_for_function("m => Math.abs(window.trame.state.get('slice_axial') - m) < 1e-3", arg=moved)
    assert not page.locator("#stale").count()
    set_state(page, "method", "lrp-epsilon")
    page.wait_for_selector("#stale")
    assert page.locator("#result.addiagnosis-stale").count() == 1  # the old result is dimmed
    page.click("#diagnose")
    page.wait_for_selector("#stale", state="detached")
    page.wait_for_function("() => !window.trame.state.get('busy')")
    assert "(lrp-epsilon)" in page.inner_text("#result")
    assert state(page, "slice_axial") == pytest.approx(moved)  # the user's position survives a re-diagnosis

def test_web_app_in_browser(server, cli_reference, browser, tmp_path):
    report, cli_rel = cli_reference
    url = server["url"]
    example = nib.load(default_scan())
    ctx_a = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    ctx_b = browser.new_context(viewport={"width": 1280, "height": 720}, accept_downloads=True)
    failed = []  # HTTP answers >= 400 the pages got (an over-limit upload's 413 is the only one expected)
    for ctx in (ctx_a, ctx_b):
        ctx.on("response", lambda r: r.status >= 400 and failed.append((r.status, r.request.method, r.url)))
    try:
        # ---- session A: example scan, Diagnose, compare with the CLI ----------------------------------------
        a = open_page(ctx_a, url)
        assert a.title() == "ADDiagnosis"
        a.click("#use-example")
        a.wait_for_selector("#scan-name")
        assert a.inner_text("#scan-name") == "synthetic-AD-subject"
        assert a.inner_text("#scan-info").endswith("voxels, 1.96 x 1.64 x 1.57 mm")
        assert legend_pixels(view_png(a, "axial")) == 0  # no legend before a result
        t0 = time.perf_counter()
        a.click("#diagnose")
        a.wait_for_selector("#predicted")
        seconds = wait_for_overlay(a, "axial", t0)
        print(f"\nweb: click Diagnose -> overlay visible in the axial view: {seconds:.2f} s")
        for view in ("axial", "coronal", "sagittal"):  # the legend from the first Diagnose on
            assert legend_pixels(view_png(a, view)) > 100, view
        centred = state(a, "slice_axial")
        assert a.inner_text("#opacity-value").strip() == "0.60"
        assert a.inner_text("#threshold-value").strip() == "5.0 %"
        for view in ("axial", "coronal", "sagittal"):
            assert re.fullmatch(r"-?\d+\.\d mm", a.inner_text(f"#slice-{view}-value").strip())
        assert a.inner_text("#predicted") == report["predicted_class"]
        shown = shown_probabilities(a)
        assert set(shown) == set(report["probabilities"])
        for name, p in report["probabilities"].items():
            assert shown[name] == pytest.approx(p, abs=1e-6)
        assert a.locator("#research-use").inner_text().strip() == RESEARCH_USE
        assert a.locator("#research-use").is_visible()
        assert "synthetic data" in a.inner_text("#notice")
        assert not a.locator("#verdict").count()  # the example passes the quality control: no line
        if report.get("prediction_set"):  # the card's conformal sets: "90 % set: ..."
            want = f"{100 * report['prediction_set']['coverage']:.0f} % set: " + ", ".join(
                report["prediction_set"]["classes"])
            assert a.inner_text("#prediction-set").strip() == want
        for view in ("axial", "coronal", "sagittal"):
            png = a.locator(f"#view-{view} img").first.screenshot()
            assert grey_pixels(png) > 2000, view  # the scan is drawn
            assert hot_pixels(png) > 50, view  # and the relevance overlay on it
        a.wait_for_function("() => { const i = document.querySelector('#view-threed img');"
                            " return i && i.complete && i.naturalWidth > 0; }")
        deadline = time.monotonic() + 30
        while hot_pixels(a.locator("#view-threed img").first.screenshot()) <= 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hot_pixels(a.locator("#view-threed img").first.screenshot()) > 20  # volume rendering

        a.wait_for_selector("#downloads")
        check_layout(a, "1440x900")

        # opacity slider: the overlay fades out at 0 and comes back
        before = hot_pixels(a.locator("#view-axial img").first.screenshot())
        a.evaluate("() => window.trame.state.set('opacity', 0)")
        deadline = time.monotonic() + 20
        while hot_pixels(a.locator("#view-axial img").first.screenshot()) > before // 10 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hot_pixels(a.locator("#view-axial img").first.screenshot()) <= before // 10
        a.evaluate("() => window.trame.state.set('opacity', 0.6)")
        deadline = time.monotonic() + 20  # back before the next step (a view sends one frame per change)
        while hot_pixels(a.locator("#view-axial img").first.screenshot()) < before // 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"web: pixels the overlay covers at Top % 0.5, 5, 15, 30, 50: {check_top_percent(a)}")

        # slice scrolling: the axial slider moves the axial view to another slice (another picture)
        shown_before = np.asarray(Image.open(io.BytesIO(a.locator("#view-axial img").first.screenshot())))
        a.evaluate("() => { const s = window.trame.state;"
                   " s.set('slice_axial', s.get('slice_axial_min') + 0.3 * (s.get('slice_axial_max') -"
                   " s.get('slice_axial_min'))); }")
        deadline = time.monotonic() + 20
        changed = 0.0
        while changed < 0.05 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = np.asarray(Image.open(io.BytesIO(a.locator("#view-axial img").first.screenshot())))
            changed = float((np.abs(now.astype(int) - shown_before.astype(int)).max(axis=-1) > 40).mean())
        assert changed >= 0.05  # a different slice fills the view

        # download: the relevance map equals the CLI's, on the scan's grid
        with a.expect_download() as info:
            a.click("#download-relevance")
        path = tmp_path / "relevance-a.nii.gz"
        info.value.save_as(path)
        rel = nib.load(path)
        assert rel.shape == example.shape
        np.testing.assert_allclose(rel.affine, example.affine, atol=1e-5)
        # the same numbers: registration runs on one ITK thread (align._one_itk_thread), so the server's and the
        # CLI's maps agree whatever their thread counts (measured: bit-identical); the bound leaves float32 room only
        web_map, cli_map = rel.get_fdata(), cli_rel.get_fdata()
        assert np.linalg.norm(web_map - cli_map) <= 1e-6 * np.linalg.norm(cli_map)
        np.testing.assert_allclose(web_map, cli_map, rtol=1e-5, atol=1e-6 * np.abs(cli_map).max())
        rep = a.request.get(url + "download/report.json").json()
        assert rep["predicted_class"] == report["predicted_class"]
        assert rep["research_use"] == RESEARCH_USE
        assert server_paths(report)  # the CLI's report names its files by path ...
        assert server_paths(rep) == []  # ... the web's names none of the server's
        assert rep["input"]["source"] == "synthetic-AD-subject"
        png = a.request.get(url + "download/overview.png").body()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        check_rediagnose(a, centred)

        # ---- session B: bad uploads show one line, the server keeps serving ----------------------------------
        b = open_page(ctx_b, url)
        assert not b.locator("#scan-name").count()  # B sees nothing of A's
        diagnose_colour = "() => getComputedStyle(document.querySelector('#diagnose')).backgroundColor"
        disabled_colour = b.evaluate(diagnose_colour)
        not_nifti = tmp_path / "notes.nii"
        not_nifti.write_bytes(b"this is not an image\n" * 50)
        flat = tmp_path / "flat.nii.gz"
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((64, 64)).astype(np.float32), np.eye(4)), flat)
        huge = tmp_path / "huge.nii"
        huge.write_bytes(os.urandom(int((UPLOAD_LIMIT_MB + 1) * 1024 * 1024)))
        truncated = tmp_path / "truncated.nii.gz"
        truncated.write_bytes(default_scan().read_bytes()[:200_000])
        for bad, words in ((not_nifti, "NIfTI"), (flat, "3D"), (huge, "upload limit"), (truncated, "")):
            b.set_input_files("#file-input", str(bad))
            stem = bad.name.split(".")[0]
            b.wait_for_function("s => { const m = document.querySelector('#message');"
                                " return m && m.innerText.trim().startsWith(s + ':'); }", arg=stem)
            message = b.inner_text("#message").strip()
            assert "\n" not in message and message, bad.name
            assert words.lower() in message.lower(), (bad.name, message)
            assert "Traceback" not in message and "/tmp" not in message and "uploads" not in message
            assert not b.locator("#scan-name").count()
        with urllib.request.urlopen(url + "healthz", timeout=5) as resp:
            assert json.load(resp)["ok"]
        other = cropped_scan(tmp_path)
        b.set_input_files("#file-input", str(other))
        b.wait_for_selector("#scan-name")
        assert b.inner_text("#scan-name") == "other-subject"
        assert not b.locator("#message").count()
        enabled = png_array(b.locator("#diagnose").screenshot()).reshape(-1, 3).mean(axis=0)
        assert enabled[0] > enabled[2] + 80  # orange when it can be pressed ...
        assert b.evaluate(diagnose_colour) != disabled_colour  # ... and not before

        # ---- both diagnose at the same time; each sees only its own scan and result -----------------------------
        a.click("#use-example")  # a fresh load in A (its previous result goes), so both run now
        a.wait_for_selector("#result", state="detached")
        a.click("#diagnose")
        b.click("#diagnose")
        a.wait_for_selector("#downloads")
        b.wait_for_selector("#downloads")
        wait_for_overlay(b, "axial", time.perf_counter())
        assert a.inner_text("#scan-name") == "synthetic-AD-subject"
        assert b.inner_text("#scan-name") == "other-subject"
        for name, p in report["probabilities"].items():
            assert shown_probabilities(a)[name] == pytest.approx(p, abs=1e-6)
        rel_b = _save(b.request.get(url + "download/relevance.nii.gz").body(), tmp_path / "rel-b.nii.gz")
        assert rel_b.shape == nib.load(other).shape != example.shape
        np.testing.assert_allclose(rel_b.affine, nib.load(other).affine, atol=1e-5)
        rep_b = b.request.get(url + "download/report.json").json()
        assert rep_b["input"]["shape"] == list(nib.load(other).shape)
        assert server_paths(rep_b) == [] and rep_b["input"]["source"] == "other-subject"
        check_layout(b, "1280x720")
        rep_a = a.request.get(url + "download/report.json").json()
        assert rep_a["input"]["shape"] == list(example.shape)

        # ---- a scan in another contrast: shown as not interpretable, never like a good result -----------------
        b.set_input_files("#file-input", str(t2_scan(tmp_path)))
        b.wait_for_selector("#result", state="detached")
        b.click("#diagnose")
        b.wait_for_selector("#verdict")
        b.wait_for_selector("#downloads")  # the report is written after the result is shown
        assert b.inner_text("#verdict").startswith("not interpretable:") and "contrast" in b.inner_text("#verdict")
        assert "fail" in b.get_attribute("#verdict", "class")
        assert "addiagnosis-failed" in b.get_attribute("#result", "class")
        assert b.request.get(url + "download/report.json").json()["qc"]["verdict"] == "fail"
    except Exception:
        print(server["log"].read_text())
        print(server["output"].read_text(errors="replace")[-4000:])
        raise
    finally:
        ctx_a.close()
        ctx_b.close()

    # sessions end when their pages are gone: folders deleted; the log has outcomes, no addresses or names
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server["log"].read_text().count("event=session outcome=ended") < 2:
        time.sleep(0.5)
    log = server["log"].read_text()
    assert log.count("event=session outcome=ended") >= 2
    assert "event=upload outcome=refused" in log and "event=diagnose outcome=ok" in log
    assert "127.0.0.1" not in log and "other-subject" not in log and "synthetic-AD" not in log
    # no 405 (trame's launcher request is answered) and no other failure but the over-limit upload's 413
    assert [f for f in failed if f[0] != 413] == [], failed
    output = server["output"].read_text(errors="replace")
    for sign in ("Traceback", "Task exception was never retrieved", "ClientConnectionResetError", "Error"):
        assert sign not in output, output[-3000:]


def _save(data: bytes, path: Path):
    path.write_bytes(data)
    return nib.load(path)
