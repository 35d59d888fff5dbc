"""Web app figures: server memory with 1 and 2 idle sessions, 4 sessions diagnosing one after another and then
at the same time (none may fail or see another's data), peak memory, click-to-result seconds.

Runs `addiagnosis web` on a free loopback port and drives Debian's Chromium with Playwright; memory is the
proportional set size (PSS, shared pages split between processes) of the gateway plus its workers, spare
included, sampled every 0.2 s. Usage: python scripts/bench/bench_web.py [--sessions 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

LOGIC = Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Logic"


def pss_mb(root_pid: int) -> float:
    pids = [root_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == root_pid:
                    pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, pss_mb(self.pid))
            time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=4)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LOGIC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "addiagnosis.cli.main", "web", "--port", str(port),
                             "--session-grace-s", "5"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    figures = {}
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(30)  # the spare worker imports and loads the model
        figures["server_idle_no_session_mb"] = round(pss_mb(proc.pid), 1)
        sampler = Sampler(proc.pid)
        sampler.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            contexts, pages = [], []

            def open_session():
                ctx = browser.new_context(viewport={"width": 1280, "height": 800})
                page = ctx.new_page()
                page.set_default_timeout(240_000)
                page.goto(url)
                page.wait_for_selector("#use-example")
                contexts.append(ctx)
                pages.append(page)
                return page

            open_session()
            time.sleep(20)
            figures["one_session_idle_mb"] = round(pss_mb(proc.pid), 1)
            open_session()
            time.sleep(20)
            figures["two_sessions_idle_mb"] = round(pss_mb(proc.pid), 1)
            while len(pages) < args.sessions:
                open_session()
            for page in pages:
                page.click("#use-example")
                page.wait_for_selector("#scan-name")
            sequential = []
            for page in pages:  # one after another
                t0 = time.perf_counter()
                page.click("#diagnose")
                page.wait_for_selector("#downloads")
                sequential.append(round(time.perf_counter() - t0, 2))
            figures["sequential_click_to_downloads_s"] = sequential
            for page in pages:  # a fresh load each, then all at the same time
                page.click("#use-example")
                page.wait_for_selector("#result", state="detached")
            t0 = time.perf_counter()
            for page in pages:
                page.click("#diagnose")
            for page in pages:
                page.wait_for_selector("#downloads")
            figures["concurrent_all_done_s"] = round(time.perf_counter() - t0, 2)
            shapes = set()
            for page in pages:
                rep = page.request.get(url + "download/report.json").json()
                assert rep["predicted_class"] == page.inner_text("#predicted")
                shapes.add(tuple(rep["input"]["shape"]))
                assert page.locator("#message").count() == 0
            figures["sessions_ok"] = len(pages)
            figures["peak_mb"] = round(sampler.peak, 1)
            for ctx in contexts:
                ctx.close()
            browser.close()
        sampler.stop = True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
