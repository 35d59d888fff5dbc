"""A batch's progress line on stderr."""

from __future__ import annotations

import math
import sys
import time


class Ticker:
    """Progress on stderr: done/total, scans/min, ETA; redrawn in place on a terminal, a line every 10 s else."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled = total, enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.shown = -1
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def rate(self, done: int) -> float:
        el = time.perf_counter() - self.t0
        return done / el * 60.0 if el > 0 else 0.0

    def __call__(self, done: int, failed: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        if final and not self.tty and self.shown == done:
            return
        self.shown = done
        self.last = now
        rate = self.rate(done)
        left = self.total - done
        eta = left / rate * 60.0 if rate > 0 else float("nan")
        eta_s = "--:--" if not math.isfinite(eta) else f"{int(eta // 60)}:{int(eta % 60):02d}"
        width = len(str(self.total))
        line = (f"[{done:>{width}}/{self.total}] {rate:6.1f} scans/min  ETA {eta_s}"
                + (f"  {failed} failed" if failed else ""))
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
