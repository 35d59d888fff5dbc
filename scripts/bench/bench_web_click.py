"""Web app: a click on a cluster row until all three slice views show the new slices, measured in the browser.

For each code version (this tree, and with ``--baseline REV`` the engine of that git revision, exported to a
temporary folder), runs `addiagnosis web` on a free loopback port, drives Debian's Chromium with Playwright,
diagnoses the example scan and clicks two cluster rows in turn (peaks apart in all three axes), ``--clicks``
times. Timed in the page (``performance.now``) from the click to: the page state holding the new slice
positions, and every slice view's picture changed (its ``img`` replaced by one whose pixels differ from
before the click). With ``--baseline`` the versions alternate, ``--rounds`` times, so both see the same load.

The timing is the browser test's (Testing/support/web_timing.py).
Usage: python scripts/bench/bench_web_click.py [--clicks 20] [--baseline HEAD~1] [--rounds 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOGIC = ROOT / "ADDiagnosis" / "Logic"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sys.path.insert(0, str(ROOT / "Testing" / "support"))

from web_timing import SETTLE_S, apart_pair, click_to_new_slices  # noqa: E402 - the browser test's own timing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(logic: Path, folder: Path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(logic), os.environ.get("PYTHONPATH", "")]))
    log = open(folder / f"server-{port}.log", "wb")  # noqa: SIM115 - for the server's life
    proc = subprocess.Popen([sys.executable, "-m", "addiagnosis.cli.main", "web", "--port", str(port),
                             "--session-grace-s", "3"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                return proc, url, log
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the web server did not answer")


def stop_server(proc, log) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def measure(browser, url: str, clicks: int) -> dict:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(180_000)
    page.goto(url)
    page.click("#use-example")
    page.wait_for_selector("#scan-name")
    page.click("#diagnose")
    page.wait_for_selector("#clusters .addiagnosis-cluster")
    page.wait_for_function("() => !window.trame.state.get('busy')")
    time.sleep(2.0)
    pair = apart_pair(page.evaluate("() => window.trame.state.get('clusters')"))[:2]
    state_ms, pixel_ms = [], []
    for n in range(clicks + 1):
        t_state, t_pixels = click_to_new_slices(page, pair[n % 2]["index"])
        if n:  # the first click moves from the result's centre to a peak: not one of the pair's moves
            state_ms.append(1000 * t_state)
            pixel_ms.append(1000 * t_pixels)
        time.sleep(SETTLE_S)
    context.close()
    return {"state_ms": state_ms, "pixels_ms": pixel_ms}


def summary(values) -> str:
    ok = [v for v in values if v >= 0]
    missed = len(values) - len(ok)
    return (f"median {statistics.median(ok):.0f} ms, max {max(ok):.0f} ms" if ok else "none") + \
        (f", {missed} not within 10 s" if missed else "")


def main() -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--baseline", help="a git revision whose engine is measured too, alternating with this tree's")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--logic", default=str(LOGIC), help="the engine folder measured as 'this tree'")
    ap.add_argument("--json")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-web-click-"))
    versions = {"this tree": Path(args.logic)}
    if args.baseline:
        export = folder / "baseline"
        export.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "ADDiagnosis/Logic",
                                  "ADDiagnosis/Resources"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True)
        versions = {f"baseline {args.baseline}": export / "ADDiagnosis" / "Logic", **versions}
    results = {name: {"state_ms": [], "pixels_ms": []} for name in versions}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        for _ in range(args.rounds):
            for name, logic in versions.items():
                proc, url, log = start_server(logic, folder)
                try:
                    got = measure(browser, url, args.clicks)
                finally:
                    stop_server(proc, log)
                for key, values in got.items():
                    results[name][key] += values
                print(f"{name}: click -> slice positions in the page: {summary(got['state_ms'])}; "
                      f"-> all three views show the new slices: {summary(got['pixels_ms'])}", flush=True)
        browser.close()
    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f} on {os.cpu_count()} cores")
    for name, got in results.items():
        print(f"{name}: positions {summary(got['state_ms'])}; pictures {summary(got['pixels_ms'])}")
    if args.baseline:
        base, new = (statistics.median([v for v in r["pixels_ms"] if v >= 0]) for r in results.values())
        print(f"click -> pictures, median: this tree / baseline = {new / base:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "results": results}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
