"""Reading the map in the real Slicer runtime (slicer-core): the atlas as a label map under the engine's
registration with its colour table (the region under a position, read the way Slicer's Data Probe reads the label
layer), the cluster table and its row jump, and the compare layout with linked slices."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core runtime is not installed (pip install '.[scene]')")

from addiagnosis.engine import diagnose  # noqa: E402
from addiagnosis.io.volume import read_nifti  # noqa: E402
from addiagnosis.mrml import atlas as scene_atlas  # noqa: E402
from addiagnosis.mrml import clusters as scene_clusters  # noqa: E402
from addiagnosis.mrml import compare as scene_compare  # noqa: E402
from addiagnosis.mrml.nodes import SceneError, array_from_node  # noqa: E402
from addiagnosis.mrml.runtime import SlicerRuntime  # noqa: E402
from addiagnosis.mrml.scene import PushOptions, push_results  # noqa: E402
from addiagnosis.prep import atlas as atlases  # noqa: E402
from addiagnosis.resources import default_scan  # noqa: E402

HIPPOCAMPUS_MNI = (-26.0, -20.0, -14.0)


@pytest.fixture(scope="module")
def shown():
    """The example scan diagnosed by the bundled model and pushed into a fresh scene with its atlas and clusters."""
    rt = SlicerRuntime()
    volume = read_nifti(default_scan())
    node = rt.add_volume(volume)
    result = diagnose(volume)
    push_results(rt.scene, node, result, PushOptions(volume_rendering=False), vr_logic=None)
    atlas_nodes = scene_atlas.show_atlas(rt.scene, node, result)
    table = scene_clusters.cluster_table(rt.scene, node, result)
    return rt, node, result, atlas_nodes, table


def distance_to_plane(slice_node, ras) -> float:
    """Distance (mm) from ``ras`` to the plane a slice view shows."""
    m = np.array([[slice_node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    normal = m[:3, 2] / np.linalg.norm(m[:3, 2])
    return float(abs(np.dot(np.asarray(ras) - m[:3, 3], normal)))


def to_scan(result, mni):
    m = np.asarray(result.preprocessing["mni_to_input_ras"])
    return (m @ np.append(mni, 1.0))[:3]


def test_atlas_label_map_under_the_registration(shown):
    rt, node, result, nodes, _ = shown
    atlas = atlases.load_atlas()
    np.testing.assert_array_equal(array_from_node(nodes.labels), atlas.labels)
    m = slicer.vtkMRMLLinearTransformNode.SafeDownCast(nodes.transform)
    matrix = np.array([[m.GetMatrixTransformToParent().GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(matrix, result.preprocessing["mni_to_input_ras"], atol=1e-9)
    assert nodes.labels.GetParentTransformNode() is nodes.transform
    colors = nodes.labels.GetDisplayNode().GetColorNode()
    assert colors is nodes.colors and colors.GetColorName(48) == "Left Hippocampus"
    assert sum(1 for i in range(colors.GetNumberOfColors()) if colors.GetColorName(i) not in ("", "background")) == 136
    assert scene_atlas.atlas_node(node) is nodes.labels
    # the region at the scan position where the registration puts MNI (-26, -20, -14)
    assert scene_atlas.region_at(nodes.labels, to_scan(result, HIPPOCAMPUS_MNI)) == "Left Hippocampus"
    assert scene_atlas.region_at(nodes.labels, to_scan(result, (0.0, 0.0, 400.0))) is None
    assert {n.GetID() for n in scene_atlas.reading_nodes(node)} >= {nodes.labels.GetID(), nodes.transform.GetID()}
    before = rt.scene.GetNumberOfNodes()
    again = scene_atlas.show_atlas(rt.scene, node, result)  # a re-run updates, never piles up
    assert again.labels is nodes.labels and rt.scene.GetNumberOfNodes() == before


def test_cursor_readout(shown):
    """Position, intensity, relevance and region at a position: the scan's and the map's own voxels there."""
    rt, node, result, nodes, _ = shown
    ras = to_scan(result, HIPPOCAMPUS_MNI)
    out = scene_atlas.cursor_readout(node, ras)
    ijk = tuple(np.floor(np.linalg.solve(result.relevance.ijk_to_ras, np.append(ras, 1.0)) + 0.5)[:3].astype(int))
    assert out["ras"] == pytest.approx(list(ras)) and out["region"] == "Left Hippocampus"
    assert out["relevance"] == pytest.approx(float(result.relevance.array[ijk]))
    assert out["intensity"] == pytest.approx(float(read_nifti(default_scan()).array[ijk]))
    outside = scene_atlas.cursor_readout(node, (900.0, 0.0, 0.0))
    assert outside["intensity"] is None and outside["relevance"] is None and outside["region"] is None


def test_data_probe_path_names_the_region(shown):
    """What Slicer's Data Probe does for the label layer: the slice logic's XY -> IJK of the label layer, the
    voxel's value, the colour node's name. Here at the view position of the left hippocampus."""
    rt, node, result, nodes, _ = shown
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(rt.app_logic)
    logic.SetMRMLScene(rt.scene)
    slice_node = logic.AddSliceNode("Probe")
    slice_node.SetOrientation("Axial")
    scene_atlas.show_as_outline(rt.scene, nodes.labels)
    logic.GetSliceCompositeNode().SetBackgroundVolumeID(node.GetID())
    ras = to_scan(result, HIPPOCAMPUS_MNI)
    slice_node.JumpSliceByCentering(*ras)
    xy_to_ras = np.array([[slice_node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    xyz = np.linalg.solve(xy_to_ras, np.append(ras, 1.0))
    layer = logic.GetLabelLayer()
    assert layer.GetVolumeNode() is nodes.labels
    ijk = layer.GetXYToIJKTransform().TransformDoublePoint(*xyz[:3])
    i, j, k = (int(round(v)) for v in ijk)
    value = int(nodes.labels.GetImageData().GetScalarComponentAsDouble(i, j, k, 0))
    name = layer.GetVolumeDisplayNode().GetColorNode().GetColorName(value)
    assert name == "Left Hippocampus"
    assert slice_node.GetUseLabelOutline()
    logic.SetMRMLScene(None)


def test_no_atlas_without_a_registration(shown):
    rt, node, result, _, _ = shown

    class Physical:
        preprocessing = {"kind": "physical"}

    with pytest.raises(SceneError, match="MNI"):
        scene_atlas.show_atlas(rt.scene, node, Physical())


def test_cluster_table_and_row_jump(shown):
    rt, node, result, _, table = shown
    clusters = result.reading["clusters"]
    t = table.GetTable()
    assert t.GetNumberOfRows() == len(clusters) > 0
    shares = [t.GetColumnByName("Share %").GetValue(r) for r in range(t.GetNumberOfRows())]
    assert shares == pytest.approx([100 * c["share"] for c in clusters])
    assert sum(shares) == pytest.approx(100 * sum(c["share"] for c in clusters))
    assert t.GetColumnByName("Peak region").GetValue(0) == (clusters[0]["peak_region"] or "")
    assert scene_clusters.cluster_table_node(node) is table
    views = {}
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(rt.app_logic)
        logic.SetMRMLScene(rt.scene)
        views[name] = logic.AddSliceNode(name)
        views[name].SetOrientation(orientation)
    for row in range(min(3, len(clusters))):
        r, a, s = scene_clusters.jump_to_cluster(rt.scene, table, row)
        assert [r, a, s] == pytest.approx(clusters[row]["peak_ras"])
        assert views["Red"].GetSliceOffset() == pytest.approx(s)  # axial: the offset is S
        assert views["Green"].GetSliceOffset() == pytest.approx(a)  # coronal: A
        for view in views.values():  # every view's plane passes through the peak
            assert distance_to_plane(view, (r, a, s)) == pytest.approx(0.0, abs=1e-6)
        crosshair = rt.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        assert list(crosshair.GetCrosshairRAS()) == pytest.approx([r, a, s])
    with pytest.raises(SceneError, match="no cluster in row"):
        scene_clusters.jump_to_cluster(rt.scene, table, len(clusters))


def test_compare_layout_links_the_two_maps(shown):
    rt, node, result, _, _ = shown
    rel_a = node.GetNodeReference("ADDiagnosis.relevance")
    other = rt.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other map")
    other.SetAndObserveImageData(rel_a.GetImageData())
    views = scene_compare.compare_layout(rt.scene, (node, rel_a), (node, other))
    layout = rt.scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == scene_compare.COMPARE_LAYOUT_ID
    assert 'singletontag="CompareRed"' in layout.GetLayoutDescription(scene_compare.COMPARE_LAYOUT_ID)
    for name in scene_compare.LEFT + scene_compare.RIGHT:
        comp = rt.scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        assert comp.GetLinkedControl() and comp.GetBackgroundVolumeID() == node.GetID()
        assert comp.GetForegroundVolumeID() == (rel_a if name in scene_compare.LEFT else other).GetID()
    for left, right in scene_compare.pairs(views):  # a slice moved on one side moves the other (link logic)
        target = left.GetSliceOffset() + 7.5
        left.SetInteractionFlags(left.SliceToRASFlag)
        left.InteractingOn()
        left.SetSliceOffset(target)
        left.InteractingOff()
        assert right.GetSliceOffset() == pytest.approx(target)
    # a cluster row jumps both sides
    ras = scene_clusters.jump_to_cluster(rt.scene, scene_clusters.cluster_table_node(node), 0)
    for view in views.values():
        assert distance_to_plane(view, ras) == pytest.approx(0.0, abs=1e-6)
