"""The anatomical atlas (prep/atlas.py): known regions at known MNI positions, geometry of the file, the mapping
onto a scan through a registration, volumes, colours, and a one-line error without the package."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from addiagnosis.errors import InputError
from addiagnosis.prep import atlas as atlases

KNOWN = [  # MNI mm -> region (standard coordinates of these structures; the same label 1 mm around each)
    ((-26.0, -20.0, -14.0), "Left Hippocampus"),
    ((28.0, -20.0, -14.0), "Right Hippocampus"),
    ((-24.0, -4.0, -20.0), "Left Amygdala"),
    ((-6.0, -60.0, 40.0), "Left PCu precuneus"),
    ((-45.0, -20.0, -28.0), "Left ITG inferior temporal gyrus"),
]


@pytest.fixture(scope="module")
def atlas():
    return atlases.load_atlas()


def test_known_regions_at_known_positions(atlas):
    assert atlas.key == "neuromorphometrics"
    for mni, name in KNOWN:
        assert atlas.name_at(mni) == name, mni
    assert atlas.label_at((0.0, 0.0, 500.0)) == 0  # outside the atlas
    assert len(atlas.names) == 136 and all("_" not in n for n in atlas.names.values())
    assert atlas.names[48] == "Left Hippocampus" and atlas.names[47] == "Right Hippocampus"


def test_geometry_read_as_nibabel_reads_it(atlas):
    folder = atlases.package_folder()
    img = nib.load(str(folder / atlases.NEUROMORPHOMETRICS.image))
    np.testing.assert_allclose(atlas.ijk_to_mni, img.affine, atol=1e-6)
    np.testing.assert_array_equal(atlas.labels, np.asarray(img.dataobj).astype(np.int16))


def test_labels_on_a_scan_through_the_registration(atlas):
    # a scan 1.2 mm, LPS-stored, whose head sits rotated, scaled and shifted against MNI
    c, s = np.cos(0.2), np.sin(0.2)
    mni_to_input = np.array([[1.05 * c, -s, 0, 12.0], [s, 0.95 * c, 0, -30.0], [0, 0, 1.1, 7.0], [0, 0, 0, 1]])
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])  # voxel centres within 0.9 mm of any point
    ijk_to_ras[:3, 3] = [110.0, 80.0, -90.0]
    shape = (190, 200, 170)
    labels = atlases.labels_on_scan(atlas, {"mni_to_input_ras": mni_to_input.tolist()}, ijk_to_ras, shape)
    assert labels.shape == shape and labels.dtype == np.int16
    to_ijk = np.linalg.inv(ijk_to_ras) @ mni_to_input
    every = np.argwhere(labels >= 0)[::997]  # each voxel has the label of its own centre's MNI position
    centres_mni = (np.linalg.inv(to_ijk) @ np.c_[every, np.ones(len(every))].T)[:3].T
    np.testing.assert_array_equal(labels[tuple(every.T)], [atlas.label_at(p) for p in centres_mni])
    for mni, name in KNOWN:
        ijk = np.rint(to_ijk @ np.append(mni, 1.0))[:3].astype(int)
        assert atlas.names[int(labels[tuple(ijk)])] == name
        assert atlas.names[int(atlases.labels_at_voxels(atlas, np.linalg.inv(to_ijk), ijk[None])[0])] == name
    assert atlases.labels_on_scan(atlas, {"kind": "physical"}, ijk_to_ras, shape) is None


def test_region_volumes_scale_with_the_registration(atlas):
    mni = atlases.region_volumes_ml(atlas)
    assert 2.5 < mni[48] < 6.0  # a hippocampus holds a few mL
    assert 1200 < sum(mni.values()) < 1900  # a brain
    scaled = atlases.region_volumes_ml(atlas, np.diag([1.1, 1.0, 0.9, 1.0]))
    assert scaled[48] == pytest.approx(mni[48] * 0.99)


def test_colours_fixed_and_paired(atlas):
    colours = atlas.colours()
    assert set(colours) == set(atlas.names)
    assert colours == atlases.load_atlas.__wrapped__().colours()  # the same in every load (no salted hash)
    left, right = np.array(colours[48]), np.array(colours[47])  # one hue for a pair, the left one darker
    assert left.max() < right.max() and np.allclose(left / left.max(), right / right.max(), atol=1e-6)


def test_without_the_package_one_line_error(monkeypatch):
    monkeypatch.setattr(atlases, "package_folder", lambda: None)
    assert not atlases.available()
    with pytest.raises(atlases.AtlasUnavailable) as err:
        atlases.load_atlas.__wrapped__()
    assert "\n" not in str(err.value) and "addiagnosis[atlas]" in str(err.value)
    with pytest.raises(InputError, match="unknown atlas"):
        atlases.load_atlas.__wrapped__("nope")
