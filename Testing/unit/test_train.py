"""Training: data discovery, subject-level split, and a smoke run on a tiny grid that lowers the loss."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from addiagnosis.errors import AddiagnosisError
from addiagnosis.models.network import ClassificationModel3D
from addiagnosis.models.package import find_package
from addiagnosis.research import dataset, train

PHYSICAL = {"kind": "physical", "centre": "fov", "normalise": {"low": 0.5, "high": 99.5}}
GRID = (80, 80, 80)


def _scan(path, label, rng):
    a = rng.normal(0.1, 0.02, (24, 24, 24)).astype(np.float32)
    a[4:20, 4:20, 4:20] += 1.0
    a[8:16, 8:16, 8:16] = 0.3 if label == "AD" else 1.0  # "atrophy": a dark core
    nib.save(nib.Nifti1Image(a, np.diag([4.0, 4.0, 4.0, 1.0])), str(path))


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for label in ("CN", "AD"):
        (root / label).mkdir()
        for i in range(10):
            sid = f"{100 + i + (0 if label == 'CN' else 50):03d}_S_{1000 + i:04d}"
            _scan(root / label / f"ADNI_{sid}_MR_scan.nii.gz", label, rng)
    return root


def test_items_from_class_folders_use_subject_ids(folder_data):
    items = dataset.load_items(folder_data)
    assert len(items) == 20 and {it.label for it in items} == {"CN", "AD"}
    assert all("_S_" in it.subject for it in items)


def test_table_with_unknown_label_is_refused(tmp_path):
    (tmp_path / "t.tsv").write_text("subject\tdiagnosis\tscan\ns1\tXYZ\ta.nii.gz\n")
    with pytest.raises(AddiagnosisError, match="unknown label"):
        dataset.load_items(tmp_path / "t.tsv")


def test_split_is_by_subject_stratified_and_seeded():
    items = [dataset.Item(f"s{i}", dataset.CLASSES[i % 5], None) for i in range(100) for _ in range(3)]
    split = dataset.split_subjects(items, seed=1)
    assert split == dataset.split_subjects(items, seed=1)
    assert split != dataset.split_subjects(items, seed=2)
    sides = {}
    for it in items:
        sides.setdefault(it.subject, set()).add(split[it.subject])
    assert all(len(s) == 1 for s in sides.values())  # one side per subject, all of its scans
    for c in dataset.CLASSES:
        subs = [s for s in split if int(s[1:]) % 5 == dataset.CLASSES.index(c)]
        counts = {k: sum(split[s] == k for s in subs) for k in ("train", "val", "test")}
        assert counts == {"train": 14, "val": 3, "test": 3}


def test_smoke_training_lowers_loss_and_resumes(folder_data, tmp_path):
    out = tmp_path / "pkg"
    logs = []
    kw = dict(seed=3, batch_size=4, lr=3e-3, patience=10, grid_shape=GRID, spacing=1.2,
              preprocessing=PHYSICAL, cache=str(tmp_path / "cache"), workers=1, threads=2,
              fractions=(0.6, 0.2, 0.2), log=logs.append, augment_data=False)
    card = train.train(folder_data, out, epochs=4, **kw)
    assert card["split"]["unit"] == "subject" and card["split"]["subjects"]["train"] == 12
    assert set(card["metrics"]) == {"val", "test"}
    # the stable default method; physical preprocessing has no healthy reference, so no lrp-reference alternative
    assert card["explanation"] == {"method": "lrp-alpha1beta0"}
    # issue 19: a temperature folded into the weights, 90 % prediction sets from the held-out test split
    assert card["calibration"]["temperature"] > 0 and card["conformal"]["coverage"] == 0.9
    pkg = find_package(str(out))
    items = dataset.load_items(folder_data)
    files = train.preprocess_all(items, {"preprocessing": PHYSICAL,
                                         "input_grid": {"shape": list(GRID), "spacing": [1.2] * 3}},
                                 tmp_path / "cache", 1, log=lambda m: None)
    X = torch.from_numpy(np.stack([np.load(f) for f in files]))[:, None].float()
    y = torch.tensor([card["class_names"].index(it.label) for it in items])
    torch.manual_seed(3)
    initial = ClassificationModel3D(GRID, n_classes=2).eval()
    trained = pkg.load_model()
    with torch.no_grad():
        before = float(F.cross_entropy(initial(X), y))
        after = float(F.cross_entropy(trained(X), y))
    assert after < before * 0.9, (before, after)
    # rerunning with more epochs resumes from the checkpoint
    card2 = train.train(folder_data, out, epochs=5, **kw)
    assert any("resuming" in m for m in logs) and card2["training"]["epochs_run"] == 5


def test_data_description_names_every_synthetic_cohort():
    from pathlib import Path

    items = [dataset.Item("s1", "CN", Path("a.nii.gz")), dataset.Item("s2", "AD", Path("b.nii.gz"))]
    one = {"seed": 1, "options": {"atrophy": "default"}}
    text = train._data_description(Path("cohort"), items, {"CN": 1, "AD": 1}, one)
    assert text.startswith("SYNTHETIC data (addiagnosis synth: seed 1, atrophy model default)")
    both = {"cohorts": [one, {"seed": 12, "options": {"atrophy": "erode"}}]}
    text = train._data_description(Path("mix.tsv"), items, {"CN": 1, "AD": 1}, both)
    assert "seed 1, atrophy model default; seed 12, atrophy model erode" in text
    assert text.endswith("2 scans of 2 subjects from mix.tsv: CN 1, AD 1.")
    assert train._data_description(Path("real"), items, {"CN": 1, "AD": 1}, None).startswith("2 scans")
