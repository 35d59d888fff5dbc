"""Hostile inputs of issue 21 (items 1, 2 and 7; DICOM series): each ends in one line (or is accepted when it is a
real scan), through the real command line and the web app's real session workers."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from addiagnosis.errors import InputError
from addiagnosis.io.volume import read_nifti

from conftest import make_scan
from dicom_series import PATIENT_ID, PATIENT_NAME, write_series

LOGIC = str(Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Logic")


def cli(*argv, env_extra=None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = LOGIC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "addiagnosis.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def one_line_error(proc, needle: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("addiagnosis: error: ") and needle in lines[0], proc.stderr
    return lines[0]


def head_t1() -> tuple[np.ndarray, np.ndarray]:
    arr, aff = make_scan("ras-1mm", noise_seed=4)
    aff = aff.copy()
    aff[:3, :3] *= 2
    return arr[::2, ::2, ::2].astype(np.float64), aff


# --------------------------------------------------- item 2: a card whose grid cannot feed the network
@pytest.fixture()
def small_grid_models(tmp_path, tiny_package) -> Path:
    root = tmp_path / "models"
    shutil.copytree(tiny_package, root / "tiny")
    shutil.copytree(tiny_package, root / "small")
    card = json.loads((root / "small" / "card.json").read_text())
    card["name"], card["input_grid"]["shape"] = "small", [4, 4, 4]
    (root / "small" / "card.json").write_text(json.dumps(card))
    return root


def test_small_grid_card_is_one_line_and_skipped_at_discovery(small_grid_models, tmp_path):
    proc = cli("diagnose", "--model", small_grid_models / "small", "--out", tmp_path / "out")
    one_line_error(proc, "input grid 4x4x4 is too small for the network (it needs at least 78 voxels")
    assert not (tmp_path / "out").exists()
    listing = cli("models", env_extra={"ADDIAGNOSIS_MODEL_PATH": str(small_grid_models)})
    assert listing.returncode == 0
    warnings = listing.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("addiagnosis: warning: skipping model package: ")
    assert "small" in warnings[0] and "too small for the network" in warnings[0]
    assert "tiny test-1" in listing.stdout and "small test-1" not in listing.stdout
    by_name = cli("diagnose", "--model", "small", "--out", tmp_path / "out",
                  env_extra={"ADDIAGNOSIS_MODEL_PATH": str(small_grid_models)})
    assert by_name.returncode == 2 and "Traceback" not in by_name.stderr
    assert by_name.stderr.splitlines()[-1].startswith("addiagnosis: error: unknown model 'small'")


# ------------------------------------------- item 7: the label-map test looks at structure, not value counts
def test_8bit_t1_times_scale_factor_is_a_scan(tmp_path, tiny_package):
    arr, aff = head_t1()
    img = nib.Nifti1Image(np.round(arr / arr.max() * 255).astype(np.uint8), aff)
    img.header.set_slope_inter(37.0, 0.0)
    path = tmp_path / "t1-uint8-scaled.nii.gz"
    nib.save(img, str(path))
    vol = read_nifti(path)
    values = np.unique(vol.array)
    assert len(values) > 150 and set(np.diff(values) % 37) == {0}  # a few hundred levels, 37 apart
    proc = cli("diagnose", path, "--model", tiny_package, "--out", tmp_path / "out", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["input"]["shape"] == list(arr.shape)


def blocky_labels(n: int, block: int, shape=(80, 96, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(1, n + 1, [s // block for s in shape])
    out = np.zeros(shape, np.int16)
    out[: small.shape[0] * block, : small.shape[1] * block, : small.shape[2] * block] = \
        small.repeat(block, 0).repeat(block, 1).repeat(block, 2)
    return out


@pytest.mark.parametrize("what", ["dense ids 1..150", "sparse ids", "mask", "scaled labels"])
def test_real_label_maps_still_refused(tmp_path, what):
    _, aff = head_t1()
    labels = blocky_labels(150, 4)
    if what == "sparse ids":
        labels = np.where(labels > 0, labels * 13 + 1000, 0).astype(np.int16)
    elif what == "mask":
        labels = (labels > 75).astype(np.uint8)
    img = nib.Nifti1Image(labels, aff)
    if what == "scaled labels":
        img.header.set_slope_inter(37.0, 0.0)
    path = tmp_path / "labels.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(InputError) as info:
        read_nifti(path)
    assert "looks like a label map or mask" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ DICOM series through the command line
def test_diagnose_a_dicom_series_folder(tmp_path, tiny_package):
    arr, aff = head_t1()
    arr = arr.astype(np.int16)
    folder = tmp_path / "Doe_Jane_study"  # the user's own folder name: theirs to choose
    one = write_series(folder, arr, aff, description="T1 MPRAGE", prefix="A")
    proc = cli("diagnose", folder, "--model", tiny_package, "--out", tmp_path / "out", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"]["series_uid"] == one and len(report["input"]["sha256"]) == 64
    rel = nib.load(str(tmp_path / "out" / "relevance.nii.gz"))
    assert rel.shape == arr.shape
    np.testing.assert_allclose(rel.affine, aff, atol=1e-5)
    for text in (proc.stdout, proc.stderr, json.dumps(report)):
        assert PATIENT_NAME not in text and PATIENT_ID not in text and "Example Hospital" not in text
    two = write_series(folder, arr[::-1].copy(), aff, description="T1 repeat", number=2, prefix="B")
    line = one_line_error(cli("diagnose", folder, "--model", tiny_package, "--out", tmp_path / "o2"),
                          "holds 2 image series; choose one with --series UID")
    assert one in line and two in line and not (tmp_path / "o2").exists()
    proc = cli("diagnose", folder, "--series", two, "--model", tiny_package, "--out", tmp_path / "o3", "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "o3" / "report.json").read_text())["input"]["series_uid"] == two
    gap = tmp_path / "gap"
    write_series(gap, arr, aff, skip=(20,))
    one_line_error(cli("diagnose", gap, "--model", tiny_package, "--out", tmp_path / "o4"), "1 missing slice(s)")
    assert not (tmp_path / "o4").exists()


def test_batch_takes_folders_of_series(tmp_path, tiny_package):
    arr, aff = head_t1()
    arr = arr.astype(np.int16)
    data = tmp_path / "data"
    write_series(data / "sub-01" / "t1", arr, aff)
    write_series(data / "sub-02" / "t1", arr[::-1].copy(), aff)
    write_series(data / "sub-03" / "t1", arr, aff, skip=(30,))
    nib.save(nib.Nifti1Image(arr, aff), str(data / "sub-04.nii.gz"))
    out = tmp_path / "out"
    proc = cli("batch", data, "--model", tiny_package, "--out", out, "--workers", "0", "-q",
               "--save", "relevance,report")
    assert proc.returncode in (0, 1), proc.stderr  # one scan is an error row
    rows = {r["scan_id"]: r for r in csv.DictReader(open(out / "results.tsv", encoding="utf-8"), delimiter="\t")}
    assert sorted(rows) == ["sub-01/t1", "sub-02/t1", "sub-03/t1", "sub-04"]
    assert rows["sub-01/t1"]["status"] == rows["sub-02/t1"]["status"] == rows["sub-04"]["status"] == "ok"
    assert rows["sub-03/t1"]["status"] == "error" and "1 missing slice(s)" in rows["sub-03/t1"]["error"]
    assert rows["sub-01/t1"]["subject"] == "sub-01" and len(rows["sub-01/t1"]["sha256"]) == 64
    assert rows["sub-01/t1"]["predicted"] == rows["sub-04"]["predicted"]  # the same voxels as series and NIfTI
    rel = nib.load(str(out / rows["sub-02/t1"]["output"] / "relevance.nii.gz"))
    assert rel.shape == arr.shape
    np.testing.assert_allclose(rel.affine, aff, atol=1e-5)
    text = (out / "results.tsv").read_text() + "".join(p.read_text() for p in out.rglob("report.json"))
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    # a re-run skips the finished series; a file of one rewritten in place (same folder listing) is run again
    args = ("batch", data, "--model", tiny_package, "--out", out, "--workers", "0", "--save", "relevance,report")
    done = [int(re.search(r"\((\d+) already done\)", cli(*args).stdout).group(1))]
    first = sorted((data / "sub-02" / "t1").iterdir())[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    done.append(int(re.search(r"\((\d+) already done\)", cli(*args).stdout).group(1)))
    assert done[0] >= 3 and done[1] == done[0] - 1, done


# ------------------------------------------- item 1: session workers are reachable only through the gateway
def worker_ports() -> dict[int, str]:
    """Every session worker's port, as any local user sees them (process command lines), with the command line."""
    out = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"addiagnosis.web.session" in argv and b"--port" in argv:
            out[int(argv[argv.index(b"--port") + 1])] = b" ".join(argv).decode(errors="replace")
    return out


async def ws_rpc(url: str, secret: str, calls=(("trame.state.get", []),), headers=None) -> list[dict]:
    """wslink's hello with ``secret``, then each (method, args) call: the replies, in order."""
    import aiohttp
    import msgpack
    from wslink.chunking import UnChunker, generate_chunks

    rpcs = [{"wslink": "1.0", "id": "system:c0:0", "method": "wslink.hello", "args": [{"secret": secret}],
             "kwargs": {}}]
    rpcs += [{"wslink": "1.0", "id": f"rpc:c0:{k + 1}", "method": m, "args": a, "kwargs": {}}
             for k, (m, a) in enumerate(calls)]
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers or {}) as ws:
        unchunker, replies = UnChunker(), []
        unchunker.set_max_message_size(1 << 30)
        for rpc in rpcs:
            for chunk in generate_chunks(msgpack.packb(rpc), 1 << 20):
                await ws.send_bytes(chunk)
            while True:
                msg = await ws.receive(timeout=120)
                full = unchunker.process_chunk(msg.data)
                if full is not None and full.get("id") == rpc["id"]:
                    replies.append(full)
                    break
        return replies


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    pytest.importorskip("slicer", reason="the slicer-core runtime is not installed")
    from addiagnosis.mrml.views import egl_available

    ok, why = egl_available()
    if not ok:
        pytest.skip(f"no off-screen OpenGL (Mesa EGL): {why}")
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([LOGIC, os.environ.get("PYTHONPATH", "")]))
    log = tmp_path_factory.mktemp("web") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "addiagnosis.cli", "web", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "healthz", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    yield url, proc, log
    proc.terminate()  # this test's own server, by its PID
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_session_worker_refuses_a_client_without_the_gateways_secret(web_server):
    import asyncio
    import http.cookiejar
    import urllib.request

    url, proc, log = web_server
    assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert browser.open(url, timeout=180).status == 200  # a page: a session and its worker
    ports = worker_ports()
    assert ports, "no session worker found"
    # the secret is nowhere a local user can read it: not in a command line, not in a file left behind
    ask = urllib.request.Request(url + "paraview/", data=b"{}", method="POST", headers={"Referer": url})
    secret = json.loads(browser.open(ask, timeout=30).read())["secret"]
    assert len(secret) >= 32 and all(secret not in cmd for cmd in ports.values())
    with pytest.raises(urllib.error.HTTPError) as info:  # no cookie: no secret
        urllib.request.urlopen(urllib.request.Request(url + "paraview/", data=b"{}", method="POST"), timeout=30)
    assert info.value.code == 410 and b"secret" not in info.value.read()
    results = {}
    for port in ports:
        hello, state = asyncio.run(ws_rpc(f"http://127.0.0.1:{port}/ws", "wslink-secret"))  # the default key
        assert hello.get("error", {}).get("message") == "Authentication failed", hello
        assert "Unauthorized" in state.get("error", {}).get("message", ""), state
        assert "result" not in state
        results[port] = asyncio.run(ws_rpc(f"http://127.0.0.1:{port}/ws", secret))
    # control: the session's own worker accepts the key its page was given (the refusal above is the key's)
    accepted = [p for p, (hello, state) in results.items() if "result" in hello and "result" in state]
    assert len(accepted) == 1, results


def test_web_app_takes_a_zipped_dicom_series(web_server, tmp_path):
    import asyncio
    import gzip
    import http.cookiejar
    import io
    import time
    import urllib.error
    import urllib.request
    import zipfile

    url, proc, log = web_server
    arr, aff = head_t1()
    folder = tmp_path / "series"
    uid = write_series(folder, arr.astype(np.int16), aff)
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"DICOM/{f.name}")
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert browser.open(url, timeout=180).status == 200
    ask = urllib.request.Request(url + "paraview/", data=b"{}", method="POST", headers={"Referer": url})
    secret = json.loads(browser.open(ask, timeout=30).read())["secret"]
    up = urllib.request.Request(url + "upload?name=Doe_Jane.zip", data=blob.getvalue(), method="POST")
    upload = json.loads(browser.open(up, timeout=60).read())
    assert upload["ok"] and upload["upload"].endswith(".zip")
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    _, loaded, state = asyncio.run(ws_rpc(url.replace("http", "ws") + "ws", secret, [
        ("trame.trigger", ["addiagnosis_uploaded", [upload["upload"], "Doe_Jane.zip"], {}]),
        ("trame.state.get", [])], headers={"Cookie": cookie}))
    assert "error" not in loaded, loaded
    page = state["result"]["state"]
    assert page["has_scan"] and not page["message"], page["message"]
    assert page["scan_name"] == "Doe_Jane" and page["scan_info"].startswith("80 x 96 x 80 voxels, 2.00 x 2.00 x 2.00")
    assert PATIENT_NAME not in json.dumps(page, default=str) and PATIENT_ID not in json.dumps(page, default=str)
    # Diagnose, as the page's button does (its trigger, read from the page's own template)
    button = re.search(r'<VBtn[^>]*id="diagnose"[^>]*>', json.dumps(state["result"], default=str).replace('\\"', '"'))
    name = re.search(r"trigger\('([^']+)'", button.group(0)).group(1)
    asyncio.run(ws_rpc(url.replace("http", "ws") + "ws", secret, [("trame.trigger", [name, [], {}])],
                       headers={"Cookie": cookie}))
    deadline = time.monotonic() + 240
    while True:
        try:
            report = json.loads(browser.open(url + "download/report.json", timeout=30).read())
            break
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline, "no result within 240 s"
            time.sleep(1.0)
    assert report["input"]["series_uid"] == uid and report["input"]["shape"] == list(arr.shape)
    rel = nib.Nifti1Image.from_bytes(gzip.decompress(browser.open(url + "download/relevance.nii.gz").read()))
    assert rel.shape == arr.shape
    np.testing.assert_allclose(rel.affine, aff, atol=1e-5)
    assert PATIENT_NAME not in json.dumps(report) and PATIENT_ID not in json.dumps(report)
