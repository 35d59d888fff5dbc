"""The diagnosis worker (addiagnosis.worker) without Slicer: a long-lived process behind a launcher stand-in that
has PythonSlicer's process structure (a parent that starts the real Python as its child and waits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from addiagnosis.engine import diagnose
from addiagnosis.io.checks import check_volume
from addiagnosis.io.volume import Volume
from addiagnosis.worker import protocol
from addiagnosis.worker.client import WorkerJob, WorkerProcess, seconds_text
from addiagnosis.worker.process import StartError

from conftest import make_scan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support" / "slicer_standins"))
from launcher import gone_within, group_processes, make_launcher, rss_mb, slicer_with_a_worker  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups read from /proc")


def wait(job, limit=180.0):
    t0 = time.monotonic()
    while not job.poll():
        time.sleep(0.02)
        assert time.monotonic() - t0 < limit
    return job


@pytest.fixture(scope="module")
def scan():
    arr, aff = make_scan("oblique-aniso")
    return Volume(arr.astype(np.int16), aff, "oblique")


@pytest.fixture(scope="module")
def python_slicer(tmp_path_factory):
    return str(make_launcher(tmp_path_factory.mktemp("slicer-bin")))


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder, private to the test: what a job leaves behind is visible there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_warm_worker_runs_many_jobs_with_the_in_process_result_exactly(scan, tiny_package, python_slicer,
                                                                         private_tmp):
    worker = WorkerProcess(python_slicer)
    try:
        first = wait(WorkerJob(scan, str(tiny_package), "lrp-epsilon", "AD", worker=worker))
        assert len(group_processes(worker.group)) == 2  # the launcher and, as its child, the real Python
        second = wait(WorkerJob(scan, str(tiny_package), "lrp-alpha1beta0", None, worker=worker))
        for job, method, target in ((first, "lrp-epsilon", "AD"), (second, "lrp-alpha1beta0", None)):
            assert job.error is None, (job.error, job.details)
            ref = diagnose(scan, str(tiny_package), method, target)
            res = job.result
            assert res.probabilities == ref.probabilities and res.predicted == ref.predicted
            assert res.method == method and res.target == (target or ref.predicted)
            np.testing.assert_array_equal(res.relevance.array, ref.relevance.array)
            np.testing.assert_array_equal(res.relevance.ijk_to_ras, scan.ijk_to_ras)  # geometry bit for bit
            assert job.progress == ("done", 1.0) and res.research_use.startswith("Research use only")
        assert first.result.worker["pid"] == second.result.worker["pid"] == worker.ready.pid  # the same process
        assert worker.ready.pid != worker.group  # ... the launcher's child
        assert second.result.worker["jobs"] == 2 and second.result.worker["import_s"] == 0.0
        assert worker.alive() and not list(private_tmp.iterdir())  # job folders removed
    finally:
        worker.stop()
    assert gone_within(worker.group) < 1.0


def test_two_callers_on_one_worker_each_get_their_own_result(scan, tiny_package, python_slicer):
    """The panel and a script (process()) may share the worker: jobs queue, each reads only its own messages."""
    worker = WorkerProcess(python_slicer)
    try:
        jobs = [WorkerJob(scan, str(tiny_package), method, "AD", worker=worker)
                for method in ("lrp-epsilon", "lrp-alpha1beta0")]
        t0 = time.monotonic()
        while not all([job.poll() for job in reversed(jobs)]):  # the second job polls first: it reads both
            assert time.monotonic() - t0 < 180
            time.sleep(0.02)
        assert [job.result.method for job in jobs] == ["lrp-epsilon", "lrp-alpha1beta0"]
        assert [job.progress for job in jobs] == [("done", 1.0)] * 2
    finally:
        worker.stop()


@pytest.mark.parametrize("kind", ["constant", "nan", "labels"])
def test_bad_scans_are_refused_in_one_line_and_the_worker_stays(kind, tiny_package, python_slicer):
    arr = {"constant": np.full((30, 30, 30), 5.0, np.float32),
           "nan": np.random.default_rng(0).normal(10, 1, (30, 30, 30)).astype(np.float32),
           "labels": (np.indices((30, 30, 30)).sum(0) // 12 % 4).astype(np.int16)}[kind]  # flat regions
    if kind == "nan":
        arr[1, 2, 3] = np.inf
    vol = Volume(arr, np.eye(4), kind)
    with pytest.raises(Exception) as main_thread:
        check_volume(vol)
    worker = WorkerProcess(python_slicer)
    try:
        job = wait(WorkerJob(vol, str(tiny_package), worker=worker))
        assert job.result is None and job.code == 2 and worker.alive()
        assert str(job.error) == str(main_thread.value) and "\n" not in str(job.error)
    finally:
        worker.stop()


def _cancel_when(scan, package, python, until, private_tmp):
    worker = WorkerProcess(python)
    job = WorkerJob(scan, package, worker=worker)
    t0 = time.monotonic()
    while not until(job):
        job.poll()
        assert not job.done and time.monotonic() - t0 < 120, (job.error, job.details)
        time.sleep(0.005)
    stage = job.progress[0]
    assert len(group_processes(worker.group)) == (2 if stage != "starting" else len(group_processes(worker.group)))
    t = time.perf_counter()
    job.cancel()
    seconds = time.perf_counter() - t + gone_within(worker.group)
    assert job.done and job.cancelled and job.result is None and job.error is None
    assert not list(private_tmp.iterdir())
    return stage, seconds


@pytest.mark.parametrize("when", ["start", "preprocessing", "explaining"])
def test_cancel_ends_the_whole_tree_within_a_second(when, scan, python_slicer, private_tmp):
    """Cancel with PythonSlicer's structure: the launcher AND its child are gone within 1 s."""
    until = {"start": lambda job: True,
             "preprocessing": lambda job: job.progress[0] == "preprocessing",
             "explaining": lambda job: job.progress[0].startswith("explaining")}[when]
    stage, seconds = _cancel_when(scan, None, python_slicer, until, private_tmp)  # the bundled model
    assert seconds < 1.0 and stage.startswith({"start": "starting"}.get(when, when))


def test_the_time_limit_ends_the_whole_tree(scan, python_slicer, private_tmp):
    worker = WorkerProcess(python_slicer)
    job = WorkerJob(scan, None, worker=worker, time_limit=1.5)
    wait(job, limit=10)
    assert gone_within(worker.group) < 1.0
    assert job.result is None and str(job.error) == "the diagnosis took longer than 1.5 s and was stopped"
    assert not list(private_tmp.iterdir())
    assert seconds_text(600.0) == "600" and seconds_text(0.25) == "0.25"


def test_the_worker_leaves_when_its_parent_is_killed(python_slicer):
    with slicer_with_a_worker(python_slicer) as (gui, group):
        assert len(group_processes(group)) == 2
        gui.kill()  # Slicer crashed: nobody calls stop()
        assert gone_within(group, limit=2.0) < 2.0


def test_the_watchdog_also_polls_the_parent_process(tmp_path):
    """Where the parent dies but its end of the stdin pipe lives on (held by another process), the worker still
    leaves: it polls the parent's process id."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(protocol.__file__).parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    worker = subprocess.Popen([sys.executable, "-m", "addiagnosis.worker", "--parent", str(parent.pid)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
    try:
        assert isinstance(protocol.decode(worker.stdout.readline()), protocol.Ready)
        parent.kill()
        parent.wait()
        assert worker.wait(timeout=2.0) == 0  # stdin still open here: only the watchdog can have ended it
        assert protocol.decode(worker.stdout.readline()) == protocol.Bye("parent gone")
    finally:
        parent.kill()
        worker.kill()
        worker.wait()


def test_idle_worker_gives_its_memory_back(scan, tiny_package, python_slicer):
    worker = WorkerProcess(python_slicer, idle_s=2.0)
    try:
        job = wait(WorkerJob(scan, str(tiny_package), worker=worker))
        assert job.error is None and rss_mb(worker.ready.pid) > 100  # torch and the model are held
        gone_within(worker.group, limit=5.0)
        worker.read()
        assert worker.bye == protocol.Bye("idle") and not worker.usable()
    finally:
        worker.stop()


def test_a_failed_start_is_one_line_and_leaves_nothing(scan, tmp_path, private_tmp):
    missing = str(tmp_path / "no-such" / "PythonSlicer")
    not_executable = tmp_path / "PythonSlicer"
    not_executable.write_text("")
    for python, reason in ((missing, "does not exist"), (str(not_executable), "is not executable")):
        with pytest.raises(StartError) as err:
            WorkerJob(scan, None, python=python)
        assert str(err.value) == f"Slicer's Python could not be started: {python} {reason}"
    failing = tmp_path / "bin" / "PythonSlicer"  # starts, but its Python cannot run the worker
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\necho 'python-real: error while loading shared libraries' >&2\nexit 127\n")
    failing.chmod(0o755)
    job = wait(WorkerJob(scan, None, python=str(failing)), limit=10)
    assert str(job.error) == ("Slicer's Python started but the diagnosis worker did not (exit status 127): "
                              "python-real: error while loading shared libraries")
    assert not list(private_tmp.iterdir())


def test_no_python_at_all_is_one_clear_line(monkeypatch):
    """Inside Slicer sys.executable can be empty: that once reached the user as [Errno 13] Permission denied: ''."""
    from addiagnosis.worker import process

    monkeypatch.setattr(process.shutil, "which", lambda name: None)
    monkeypatch.setattr(process.sys, "executable", "")
    with pytest.raises(StartError, match=r"^Slicer's Python \(PythonSlicer\) was not found: reinstall Slicer"):
        process.find_python(None)


def test_messages_are_json_lines_of_dataclasses():
    task = protocol.Diagnose(3, "/x", "scan", None, "auto", "AD", "cpu")
    line = protocol.encode(task)
    assert line.endswith(b"\n") and json.loads(line)["kind"] == "diagnose"
    assert protocol.decode(line) == task
    assert protocol.decode(b"some library printed this") is None


def test_bundled_template_asset_is_the_template_and_is_checked(tmp_path):
    from addiagnosis.models.package import find_package
    from addiagnosis.prep import template

    pkg = find_package(None)
    entry = pkg.card["preprocessing"][template.ASSETS_KEY]
    carried = template.load_assets(pkg.path, entry)
    assert carried.head.shape == carried.brain.shape and carried.head.dtype == np.float32
    try:
        ref = template.atlas()
    except Exception:  # nilearn absent: the package is what makes it work
        ref = None
    if ref is not None:
        np.testing.assert_array_equal(carried.head, ref.head)
        np.testing.assert_array_equal(carried.brain, ref.brain)
        np.testing.assert_array_equal(carried.affine, ref.affine)
    data = bytearray((pkg.path / entry["file"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(template.AddiagnosisError, match="SHA-256"):
        template.load_assets(tmp_path, entry)
    assert json.loads((pkg.path / "card.json").read_text())["preprocessing"]["template_assets"] == entry
    assert os.path.isfile(pkg.path / entry["file"])
