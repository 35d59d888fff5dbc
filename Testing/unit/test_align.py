"""Template alignment: known pose recovered, relevance back on a rotated, LPS, anisotropic input grid."""

from __future__ import annotations

import numpy as np
import pytest

from addiagnosis.io.volume import Volume
from addiagnosis.prep import align
from addiagnosis.prep.physical import prepare
from addiagnosis.research import synth

CARD = {"preprocessing": {"kind": "template"}, "input_grid": {"shape": [80, 96, 80], "spacing": [2, 2, 2]}}


@pytest.fixture(scope="module")
def subject():
    p = {**synth.subject_params(21, 3, "MCI"), "participant_id": "t", "deform_mm": 0.0, "head_scale": 1.0,
         "rotation_deg": [12.0, -9.0, 14.0], "translation_mm": [8.0, -11.0, 6.0],
         "orientation": "LPS", "grid_rotation_deg": [0.0, 10.0, -8.0], "spacing": [1.5, 1.7, 2.6]}
    vol, mask, pose = synth.make_subject(p)
    return vol, pose


def test_known_pose_aligned_within_2mm(subject):
    vol, pose = subject
    m, info = align.register_to_template(vol)
    err = align.landmark_error(m, pose["scanner_from_mni"])
    assert err < 2.0, err


def test_prepare_and_relevance_back_on_input_grid(subject):
    vol, pose = subject
    sp = vol.spacing
    assert sp[2] > 2.0 > sp[0]  # anisotropic
    assert vol.ijk_to_ras[0, 0] < 0 and vol.ijk_to_ras[1, 1] < 0  # LPS storage (with an oblique tilt)
    prep = prepare(vol, CARD)
    assert tuple(prep.tensor.shape) == (1, 1, 80, 96, 80)
    assert prep.info["registration"]["correlation"] > 0.8 and not prep.info["warnings"]
    assert prep.input_mask.shape == vol.shape
    # a blob of relevance at an MNI landmark comes back where the truth puts that landmark in the scan
    target_mni = np.array([-30.0, -20.0, -14.0])
    g = np.linalg.inv(prep.grid_affine) @ np.append(target_mni, 1.0)
    rel = np.zeros((80, 96, 80), np.float32)
    i, j, k = np.round(g[:3]).astype(int)
    rel[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 1.0
    back = prep.to_input(rel)
    assert back.shape == vol.shape
    assert abs(back.sum() / rel.sum() - 1.0) < 0.1
    idx = np.argwhere(back > back.max() * 0.2)
    w = back[tuple(idx.T)]
    centre_ijk = (idx * w[:, None]).sum(0) / w.sum()
    centre_ras = (vol.ijk_to_ras @ np.append(centre_ijk, 1.0))[:3]
    blob_mni = prep.grid_affine @ np.array([i, j, k, 1.0])
    true = np.asarray(pose["scanner_from_mni"]) @ blob_mni
    assert np.linalg.norm(centre_ras - true[:3]) < 3.0


def test_poor_registration_warns():
    rng = np.random.default_rng(0)
    noise = Volume(rng.random((60, 60, 60)).astype(np.float32) * 100, np.diag([3.0, 3.0, 3.0, 1.0]), "noise")
    prep = prepare(noise, CARD)
    assert prep.info["registration"]["quality"] == "poor" and prep.info["warnings"]
