"""The diagnosis worker process (addiagnosis.worker) and package-carried templates, without Slicer."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from addiagnosis.engine import diagnose
from addiagnosis.io.volume import Volume
from addiagnosis.worker import WorkerJob, check_volume

from conftest import make_scan


def wait(job, limit=120.0):
    t0 = time.monotonic()
    while not job.poll():
        time.sleep(0.05)
        assert time.monotonic() - t0 < limit
    return job


@pytest.fixture(scope="module")
def scan():
    arr, aff = make_scan("oblique-aniso")
    return Volume(arr.astype(np.int16), aff, "oblique")


def test_worker_gives_the_in_process_result_exactly(scan, tiny_package):
    job = wait(WorkerJob(scan, str(tiny_package), "lrp-epsilon", "AD"))
    assert job.error is None, (job.error, job.details)
    ref = diagnose(scan, str(tiny_package), "lrp-epsilon", "AD")
    res = job.result
    assert res.probabilities == ref.probabilities and res.predicted == ref.predicted and res.target == "AD"
    np.testing.assert_array_equal(res.relevance.array, ref.relevance.array)
    np.testing.assert_array_equal(res.relevance.ijk_to_ras, scan.ijk_to_ras)  # geometry bit for bit
    assert job.progress == ("done", 1.0)
    assert res.worker["peak_rss_mb"] > 0 and res.research_use.startswith("Research use only")


@pytest.mark.parametrize("kind", ["constant", "nan", "labels"])
def test_worker_refuses_bad_scans_in_one_line(kind, tiny_package):
    arr = {"constant": np.full((30, 30, 30), 5.0, np.float32),
           "nan": np.random.default_rng(0).normal(10, 1, (30, 30, 30)).astype(np.float32),
           "labels": np.random.default_rng(0).integers(0, 3, (30, 30, 30)).astype(np.int16)}[kind]
    if kind == "nan":
        arr[1, 2, 3] = np.inf
    vol = Volume(arr, np.eye(4), kind)
    with pytest.raises(Exception) as main_thread:
        check_volume(vol)
    job = wait(WorkerJob(vol, str(tiny_package)))
    assert job.result is None and job.proc.returncode == 2
    assert str(job.error) == str(main_thread.value) and "\n" not in str(job.error)


def test_cancel_and_time_limit_kill_the_worker(scan, tiny_package):
    job = WorkerJob(scan, str(tiny_package))
    time.sleep(0.5)
    t = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - t < 1.0 and job.done and job.cancelled and job.proc.poll() is not None
    assert job.result is None and job.error is None
    job = WorkerJob(scan, str(tiny_package), time_limit=0.3)
    wait(job, limit=10)
    assert job.proc.poll() is not None and job.result is None and "longer than" in str(job.error)


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
