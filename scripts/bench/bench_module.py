"""Benchmark: the Slicer module's click-to-overlay, cold and warm, Cancel-to-no-process and the worker's memory.

Runs ADDiagnosis.py against Slicer's own Python layer of one release (../shared/slicer-python/<tag>/) on real
slicer-core MRML, as Testing/slicer/test_module_slicer.py does, with ``PythonSlicer`` a launcher stand-in that has
the real one's process structure (it starts the real Python as its child and waits). Between timer ticks the main
thread blocks in C holding the GIL, as Qt's event loop does inside PythonQt.

Measured on the bundled example scan with the bundled model and its default method:

- baseline, "cold": every click starts a new worker (what the module did before the worker was kept): start,
  imports, model load, diagnosis, push into the scene;
- the first click some seconds after entering the module (the worker was started and loaded the model then);
- "warm": the second and later clicks on the same worker;
- Cancel during the explanation to no process of the job alive (the launcher and its child);
- the worker's resident memory (launcher + Python) while idle, and after its idle time (it leaves: 0).

    .venv/bin/python scripts/bench/bench_module.py [--tag v5.10.0] [--warm 5] [--cold 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "Testing" / "support" / "slicer_standins"


def setup(tag: str, folder: Path):
    """Slicer's Python of ``tag`` over slicer-core, the module loaded, the example scan selected."""
    tmp = folder / "tmp"
    tmp.mkdir()
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None
    os.environ["ADDIAGNOSIS_SLICER_TAG"] = tag
    for path in (str(STANDINS), str(ROOT / "ADDiagnosis" / "Logic")):
        if path not in sys.path:
            sys.path.insert(0, path)
    from launcher import make_launcher

    os.environ["PATH"] = os.pathsep.join([str(make_launcher(folder / "bin").parent), os.environ.get("PATH", "")])
    import slicer_app

    slicer = slicer_app.boot(tag)
    module, parent = slicer_app.load_module(slicer)
    slicer.app.startupCompleted.emit()
    widget = parent.widgetRepresentation()
    widget.initializeParameterNode()  # not enter(): that would start the worker ahead of the first click
    widget.ui.loadExampleButton.click()
    return slicer, module, widget


def click(widget, until=None) -> tuple[float, object]:
    """Diagnose, then tick the module's timer (GIL held between ticks) until the overlay is shown."""
    from module_scenarios import event_loop

    t = time.perf_counter()
    assert widget.ui.diagnoseButton.click()
    job = widget._job
    event_loop(widget, gil_held=True, until=until)
    seconds = time.perf_counter() - t
    if until is None:
        assert job.error is None, (job.error, job.details)
    return seconds, job


def cancel_to_no_process(module, widget) -> float:
    from launcher import group_processes

    _, job = click(widget, until=lambda: widget._job.progress[0].startswith("explaining"))
    group = module.ADDiagnosisLogic._process.group
    assert len(group_processes(group)) == 2, group_processes(group)  # the launcher and its child
    t = time.perf_counter()
    widget.ui.diagnoseButton.click()
    while group_processes(group):
        time.sleep(0.002)
    return time.perf_counter() - t


def idle_memory(module, widget, slicer, idle_s: float) -> dict:
    from launcher import group_processes, rss_mb

    module.ADDiagnosisLogic.stopWorker()
    slicer.app.userSettings().setValue(module.IDLE_SETTING, idle_s)
    click(widget)
    group = module.ADDiagnosisLogic._process.group
    idle_rss = sum(rss_mb(pid) for pid, _ in group_processes(group))
    python_rss = rss_mb(module.ADDiagnosisLogic._process.ready.pid)
    t = time.perf_counter()
    while group_processes(group):
        time.sleep(0.05)
    return {"idle_rss_mb": round(idle_rss, 1), "python_rss_mb": round(python_rss, 1),
            "left_after_s": round(time.perf_counter() - t, 2), "rss_after_idle_mb": 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", default=None, help="Slicer release of ../shared/slicer-python (default: newest)")
    ap.add_argument("--warm", type=int, default=5, help="warm clicks measured")
    ap.add_argument("--cold", type=int, default=2, help="cold clicks measured (a new worker each)")
    ap.add_argument("--cancels", type=int, default=3)
    ap.add_argument("--idle", type=float, default=3.0, help="idle time of the worker in the memory measurement")
    ap.add_argument("--enter-wait", type=float, default=10.0,
                    help="seconds between entering the module and the first click")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(STANDINS))
    from slicer_app import available_tags

    tags = available_tags()
    tag = args.tag or max(tags, key=lambda t: tuple(int(x) for x in t.lstrip("v").split(".")))
    with tempfile.TemporaryDirectory(prefix="bench-module-") as folder:
        slicer, module, widget = setup(tag, Path(folder))
        cold, cold_cpu = [], []
        for _ in range(args.cold):
            module.ADDiagnosisLogic.stopWorker()
            seconds, job = click(widget)
            cold.append(seconds)
            cold_cpu.append(job.result.worker["cpu_s"])
        module.ADDiagnosisLogic.stopWorker()  # the user enters the module, picks a scan, clicks
        widget.enter()  # starts the worker and loads the model in the background
        time.sleep(args.enter_wait)
        first_after_enter, job = click(widget)
        first_cpu = job.result.worker["cpu_s"]
        warm, engine, cpu = [], [], []
        for _ in range(args.warm):
            seconds, last = click(widget)
            warm.append(seconds)
            engine.append(last.result.worker["seconds"])
            cpu.append(last.result.worker["cpu_s"])
        cancels = [cancel_to_no_process(module, widget) for _ in range(args.cancels)]
        memory = idle_memory(module, widget, slicer, args.idle)
        widget.cleanup()
    out = {"tag": tag, "cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
           "cold_click_s": [round(v, 2) for v in cold], "warm_click_s": [round(v, 2) for v in warm],
           f"first_click_{args.enter_wait:g}s_after_enter_s": round(first_after_enter, 2),
           "cold_worker_cpu_s": [round(v, 2) for v in cold_cpu], "first_after_enter_worker_cpu_s": round(first_cpu, 2),
           "warm_worker_job_s": [round(v, 2) for v in engine],
           # CPU seconds of a warm job (all threads): load-independent; on an idle 2-core machine the job's wall
           # time lies between cpu/2 (both cores busy throughout) and cpu (one core)
           "warm_worker_cpu_s": [round(v, 2) for v in cpu],
           "warm_over_cold": round(statistics.median(warm) / statistics.median(cold), 3),
           # what the click costs beyond the worker's own job: polling, reading the result, the push into MRML
           "warm_overhead_s": round(statistics.median(w - e for w, e in zip(warm, engine)), 3),
           "warm_engine_timings_s": {k: round(v, 2) for k, v in last.result.timings.items()},
           "cancel_to_no_process_s": [round(v, 3) for v in cancels], **memory}
    print(json.dumps(out, indent=1))
    print(f"\nSlicer {tag}, GIL held between ticks: cold click {statistics.median(cold):.2f} s (median of {len(cold)}),"
          f" warm click {statistics.median(warm):.2f} s (median of {len(warm)}, min {min(warm):.2f}), ratio "
          f"{out['warm_over_cold']}; Cancel to no process {max(cancels):.3f} s at most; idle worker "
          f"{memory['idle_rss_mb']:.0f} MB, gone {memory['left_after_s']} s after its {args.idle:g} s idle time")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
