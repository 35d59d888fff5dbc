"""Hostile inputs of issue 21 (items 1, 2 and 7; DICOM series): each ends in one line (or is accepted when it is a
real scan), through the real command line and the web app's real session workers."""

from __future__ import annotations

import json
import os
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
