"""Compatibility with the original project's checkpoints (../shared/seed; skipped where absent).

These files are data for tests only: never committed here, never needed by the product.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from addiagnosis.cli.main import main
from addiagnosis.engine import Diagnoser
from addiagnosis.explain.lrp import FastLRP
from addiagnosis.io.volume import read_nifti
from addiagnosis.models.network import ClassificationModel3D, flat_size
from addiagnosis.models.package import SEED_CLASSES, find_package, import_checkpoint

from conftest import SEED_130, SEED_DIR, save_nifti

needs_seed = pytest.mark.skipif(not SEED_130.is_file(), reason=f"seed checkpoints not present in {SEED_DIR}")


def test_flat_size_matches_seed():
    assert flat_size((160, 256, 256)) == 4800
    assert flat_size((166, 256, 256)) == 4800


def original_app_input(path) -> torch.Tensor:
    """What Image_Recognition_WebGUI fed its network (hot_img.process_img), re-stated for the test."""
    img = nib.load(str(path)).get_fdata()
    t = torch.from_numpy(img).squeeze().reshape(1, -1, 256, 256)[:, 0:160, :, :].float()
    return t.reshape((1, 1, -1, 256, 256))


def adni_like(shape=(166, 256, 256), seed=0):
    rng = np.random.default_rng(seed)
    base = np.zeros(shape, np.float32)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    head = zz ** 2 + yy ** 2 + xx ** 2 < 0.8
    base[head] = 300 + 200 * np.sin(6 * zz[head]) * np.cos(5 * yy[head])
    return np.clip(base + rng.normal(0, 20, shape), 0, None).astype(np.int16)


@needs_seed
def test_seed_loads_strict_and_imports(tmp_path):
    state = torch.load(SEED_130, map_location="cpu", weights_only=True)
    ClassificationModel3D((160, 256, 256)).load_state_dict(state, strict=True)
    pkg = import_checkpoint(SEED_130, name="seed130", dest_root=tmp_path)
    card = json.loads((pkg.path / "card.json").read_text())
    assert card["class_names"] == SEED_CLASSES == ["AD", "CN", "MCI", "EMCI", "LMCI"]
    assert card["preprocessing"]["kind"] == "seed-raw"
    assert card["input_grid"]["shape"] == [160, 256, 256]
    assert "not a medical device" in card["intended_use"]
    reloaded = find_package(str(pkg.path)).load_state_dict()
    for k, v in state.items():
        assert torch.equal(reloaded[k], v), k


@needs_seed
@pytest.mark.parametrize("shape", [(166, 256, 256), (256, 256, 166)], ids=["166x256x256", "256x256x166"])
def test_seed_raw_is_bit_faithful(tmp_path, shape):
    path = save_nifti(tmp_path / "scan.nii", adni_like(shape), np.diag([1.2, 1.0, 1.0, 1.0]))
    pkg = import_checkpoint(SEED_130, name="seed130", dest_root=tmp_path / "models")
    diag = Diagnoser(pkg)
    from addiagnosis.prep.physical import prepare

    ours = prepare(read_nifti(path), pkg.card).tensor
    theirs = original_app_input(path)
    assert torch.equal(ours, theirs)  # same bits into the network
    model = ClassificationModel3D((160, 256, 256))
    model.load_state_dict(torch.load(SEED_130, map_location="cpu", weights_only=True))
    model.eval()
    with torch.no_grad():
        want = model(theirs)
    got = FastLRP(model).forward(ours).logits
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))
    res = diag.run(read_nifti(path))
    probs = torch.softmax(want[0].double(), 0).numpy()
    assert [res.probabilities[c] for c in SEED_CLASSES] == pytest.approx(list(probs), abs=1e-4)
    assert res.relevance.shape == shape


@needs_seed
def test_seed_end_to_end_cli(tmp_path, capsys):
    path = save_nifti(tmp_path / "adni.nii.gz", adni_like(), np.diag([1.2, 1.0, 1.0, 1.0]))
    assert main(["import-checkpoint", str(SEED_130), "--name", "seed130", "--dest", str(tmp_path / "m")]) == 0
    out = tmp_path / "out"
    code = main(["diagnose", str(path), "--model", str(tmp_path / "m" / "seed130"), "--out", str(out),
                 "--target", "CN", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert set(report["probabilities"]) == set(SEED_CLASSES)
    assert report["target_class"] == "CN"
    rel = nib.load(str(out / "relevance.nii.gz"))
    assert rel.shape == (166, 256, 256)
    np.testing.assert_allclose(rel.affine, np.diag([1.2, 1.0, 1.0, 1.0]))
    assert not np.asarray(rel.dataobj)[160:].any()  # slices the original app never looked at
