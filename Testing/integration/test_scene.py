"""The MRML scene bridge against the real Slicer runtime (slicer-core): geometry, display, re-run, failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core runtime is not installed (pip install '.[scene]')")

import vtk  # noqa: E402

import addiagnosis  # noqa: E402
from addiagnosis.cli import main as cli  # noqa: E402
from addiagnosis.engine import diagnose  # noqa: E402
from addiagnosis.io.volume import Volume, read_nifti  # noqa: E402
from addiagnosis.mrml.nodes import (  # noqa: E402
    SceneError,
    array_from_node,
    node_ijk_to_ras,
    node_world_ijk_to_ras,
    set_node_image,
    volume_from_node,
)
from addiagnosis.mrml.regions import region_summary  # noqa: E402
from addiagnosis.mrml.runtime import SlicerRuntime  # noqa: E402
from addiagnosis.mrml.scene import (  # noqa: E402
    COLOR_NODE_NAME,
    PushOptions,
    output_nodes,
    push_results,
    set_overlay_opacity,
    set_top_percent,
    table_probabilities,
)

# oblique + anisotropic, and sagittal-stored LPS + anisotropic (permuted, flipped axes)
CASES = ["oblique-aniso", "sagittal-aniso-lps"]


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@pytest.fixture(scope="module")
def runtime():
    return SlicerRuntime()


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory, scan_files, tiny_package):
    """The CLI's relevance.nii.gz and report.json for each scan (what `addiagnosis diagnose` writes)."""
    out = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(f"cli-{case}")
        rc = cli.main(["diagnose", str(scan_files[case]), "--model", str(tiny_package), "--out", str(folder),
                       "-q", "--no-figures"])
        assert rc == 0
        out[case] = folder
    return out


@pytest.mark.parametrize("case", CASES)
def test_relevance_node_equals_cli_output(runtime, scan_files, tiny_package, cli_outputs, case):
    """Loaded through vtkSlicerVolumesLogic, diagnosed via the scene bridge: same voxels, same IJK->RAS."""
    scene = runtime.scene
    node = runtime.load_volume(scan_files[case], name=case)
    volume = volume_from_node(node)
    np.testing.assert_allclose(volume.ijk_to_ras, nib.load(str(scan_files[case])).affine, atol=1e-4)
    assert np.array_equal(volume.array, read_nifti(scan_files[case]).array)

    result = diagnose(volume, str(tiny_package))  # what every front end does: engine, then the push
    outputs = push_results(scene, node, result, vr_logic=runtime.vr_logic)
    rel = outputs.relevance
    assert rel.GetName() == f"{case} relevance"
    cli_img = nib.load(str(cli_outputs[case] / "relevance.nii.gz"))
    cli_rel = np.asarray(cli_img.dataobj, dtype=np.float32)
    node_rel = array_from_node(rel)
    assert node_rel.shape == cli_rel.shape == volume.shape
    scale = float(np.abs(cli_rel).max())
    # ITK reads an oblique NIfTI's matrix ~4e-6 mm away from nibabel (float32 header fields, qform vs
    # sform): the resampling grids differ by that much, so voxels agree to 1e-4 of the peak, not bit-wise.
    np.testing.assert_allclose(node_rel, cli_rel, rtol=1e-3, atol=1e-4 * scale)
    assert np.corrcoef(node_rel.ravel(), cli_rel.ravel())[0, 1] > 0.99999
    np.testing.assert_allclose(node_ijk_to_ras(rel), cli_img.affine, atol=1e-4)
    np.testing.assert_array_equal(node_ijk_to_ras(rel), node_ijk_to_ras(node))  # bit-identical to the input
    report = json.loads((cli_outputs[case] / "report.json").read_text())
    assert report["probabilities"] == pytest.approx(result.probabilities, abs=1e-5)


@pytest.fixture(scope="module")
def scan_result(scan_files, tiny_package):
    """One diagnosis of the oblique scan as Slicer loads it (re-used: pushing is what these tests check)."""
    rt = SlicerRuntime()
    node = rt.load_volume(scan_files["oblique-aniso"], name="scan")
    return diagnose(volume_from_node(node), str(tiny_package))


@pytest.fixture
def pushed(scan_files, scan_result):
    """A fresh scene with slice views' composite nodes, a plot view, a layout, and one pushed result."""
    rt = SlicerRuntime()
    for name in ("Red", "Green", "Yellow"):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(rt.app_logic)
        logic.SetMRMLScene(rt.scene)
        logic.AddSliceNode(name)
    plot_view = rt.scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    layout = slicer.vtkMRMLLayoutNode()
    rt.scene.AddNode(layout)
    node = rt.load_volume(scan_files["oblique-aniso"], name="scan")
    outputs = push_results(rt.scene, node, scan_result, PushOptions(opacity=0.45), vr_logic=rt.vr_logic)
    return rt, node, scan_result, outputs, plot_view, layout


def test_display_setup(pushed):
    rt, node, result, out, plot_view, layout = pushed
    scene = rt.scene
    rel = out.relevance
    disp = rel.GetDisplayNode()
    # colour node made by code, hot ramp; window/level and threshold from the distribution
    color = scene.GetNodeByID(disp.GetColorNodeID())
    assert color.GetName() == COLOR_NODE_NAME and color.IsA("vtkMRMLProceduralColorNode")
    rng = out.display_range
    assert 0 < rng.lower < rng.upper <= rng.max
    assert disp.GetWindowLevelMin() == pytest.approx(rng.lower, rel=1e-6)
    assert disp.GetWindowLevelMax() == pytest.approx(rng.upper, rel=1e-6)
    assert disp.GetApplyThreshold() and disp.GetLowerThreshold() == pytest.approx(rng.lower, rel=1e-6)
    arr = array_from_node(rel)
    shown = np.count_nonzero(arr >= rng.lower) / max(1, np.count_nonzero(arr > 0))
    assert 0.001 < shown <= 0.06  # about the top 5% of the positive relevance
    # legend
    assert out.legend is not None and out.legend.GetVisibility()
    assert out.legend.GetPrimaryDisplayNode() is disp
    # foreground in every slice view, with the opacity asked for
    comps = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert comps.GetNumberOfItems() == 3
    for i in range(3):
        comp = comps.GetItemAsObject(i)
        assert comp.GetBackgroundVolumeID() == node.GetID()
        assert comp.GetForegroundVolumeID() == rel.GetID()
        assert comp.GetForegroundOpacity() == pytest.approx(0.45)
    # volume rendering shows only the top relevance
    vr = out.vr_display
    assert vr.GetVisibility() and vr.GetVolumeNodeID() == rel.GetID()
    opacity = vr.GetVolumePropertyNode().GetVolumeProperty().GetScalarOpacity()
    assert opacity.GetValue(0.0) == 0.0 and opacity.GetValue(rng.lower * 0.99) == 0.0
    assert opacity.GetValue(rng.upper) > 0.5
    # table = report probabilities; bar chart on it, shown in the plot view, layout with a plot
    probs = table_probabilities(out.table)
    assert probs == pytest.approx(result.report()["probabilities"], abs=1e-12)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert out.series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert out.series.GetTableNodeID() == out.table.GetID()
    assert out.chart.GetPlotSeriesNodeID() == out.series.GetID()
    assert plot_view.GetPlotChartNodeID() == out.chart.GetID()
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView
    # subject hierarchy: every output under the input; references from the input
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = sh.GetItemByDataNode(node)
    for n in (rel, out.table, out.chart, out.series):
        assert sh.GetItemParent(sh.GetItemByDataNode(n)) == parent
    assert output_nodes(node) == {"relevance": rel, "table": out.table, "chart": out.chart, "series": out.series}


def test_live_opacity_and_threshold(pushed):
    rt, node, result, out, *_ = pushed
    set_overlay_opacity(rt.scene, out.relevance, 0.8)
    comp = rt.scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    assert comp.GetForegroundOpacity() == pytest.approx(0.8)
    lo5 = out.relevance.GetDisplayNode().GetLowerThreshold()
    lo1 = set_top_percent(out.relevance, 1.0)
    assert lo1 > lo5 and out.relevance.GetDisplayNode().GetLowerThreshold() == pytest.approx(lo1)


def test_rerun_updates_instead_of_adding(pushed, tiny_package):
    rt, node, result, out, *_ = pushed
    before = node_ids(rt.scene)
    result2 = diagnose(volume_from_node(node), str(tiny_package), method="lrp-epsilon", target="AD")
    out2 = push_results(rt.scene, node, result2, vr_logic=rt.vr_logic)
    assert node_ids(rt.scene) == before
    assert out2.node_ids() == out.node_ids()
    assert out2.relevance.GetAttribute("ADDiagnosis.method") == "lrp-epsilon"
    np.testing.assert_allclose(array_from_node(out2.relevance), result2.relevance.array)


def test_failed_push_leaves_scene_as_it_was(pushed, tiny_package, scan_files, monkeypatch):
    rt, node, result, out, plot_view, layout = pushed
    scene = rt.scene
    # a second input, never diagnosed: a failure half-way through its push must leave nothing behind
    other = rt.load_volume(scan_files["oblique-aniso"], name="other")
    before = node_ids(scene)
    comp = scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    fg_before = comp.GetForegroundVolumeID()
    res = result  # same file, same grid

    import addiagnosis.mrml.scene as bridge

    def boom(*a, **k):
        raise RuntimeError("simulated failure while building the chart")

    monkeypatch.setattr(bridge, "_probabilities", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        push_results(scene, other, res, vr_logic=rt.vr_logic)
    assert node_ids(scene) == before
    assert comp.GetForegroundVolumeID() == fg_before
    assert output_nodes(other) == {}
    # a failing re-run of an already diagnosed input keeps its previous outputs intact
    old = array_from_node(out.relevance).copy()
    with pytest.raises(RuntimeError, match="simulated"):
        push_results(scene, node, result, vr_logic=rt.vr_logic)
    assert node_ids(scene) == before
    np.testing.assert_array_equal(array_from_node(out.relevance), old)
    # a failure after the views were switched: slice views, layout and plot view are restored as well
    monkeypatch.undo()
    monkeypatch.setattr(bridge, "place_under", boom)

    def view_state():
        comps = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        return ([(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity())
                 for c in (comps.GetItemAsObject(i) for i in range(comps.GetNumberOfItems()))],
                layout.GetViewArrangement(), plot_view.GetPlotChartNodeID(),
                scene.GetNodeByID("vtkMRMLSelectionNodeSingleton").GetActivePlotChartID())

    views_before = view_state()
    with pytest.raises(RuntimeError, match="simulated"):
        push_results(scene, other, res, PushOptions(opacity=0.9), vr_logic=rt.vr_logic)
    assert view_state() == views_before and node_ids(scene) == before
    assert output_nodes(other) == {}


def test_engine_failure_adds_no_nodes(pushed, tiny_package):
    rt, node, *_ = pushed
    before = node_ids(rt.scene)
    with pytest.raises(Exception, match="(?i)unknown class"):
        push_results(rt.scene, node, diagnose(volume_from_node(node), str(tiny_package), target="NOT-A-CLASS"))
    assert node_ids(rt.scene) == before


def test_push_refuses_a_result_of_another_grid(pushed):
    """A result whose grid or geometry is not the input node's is refused before the scene is touched."""
    rt, node, result, *_ = pushed
    before = node_ids(rt.scene)
    rel = result.relevance
    cropped = replace(result, relevance=Volume(rel.array[1:], rel.ijk_to_ras, rel.name))
    with pytest.raises(SceneError, match="does not match"):
        push_results(rt.scene, node, cropped)
    shifted = rel.ijk_to_ras.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(SceneError, match="geometry"):
        push_results(rt.scene, node, replace(result, relevance=Volume(rel.array, shifted, rel.name)))
    assert node_ids(rt.scene) == before


def test_parent_transforms(runtime, scan_files):
    node = runtime.load_volume(scan_files["lps-stored"], name="moved")
    base = volume_from_node(node).ijk_to_ras
    tnode = runtime.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.5)
    tnode.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(tnode.GetID())
    moved = volume_from_node(node)
    assert moved.ijk_to_ras[0, 3] == pytest.approx(base[0, 3] + 12.5)
    np.testing.assert_array_equal(node_world_ijk_to_ras(node), moved.ijk_to_ras)
    np.testing.assert_array_equal(node_ijk_to_ras(node), base)  # the node's own matrix is left alone
    assert moved.meta["parent_transform"] == "shift"
    grid = runtime.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(SceneError, match="non-linear transform 'warp'.*harden"):
        volume_from_node(node)


def test_refuses_what_is_not_a_scan(runtime):
    label = runtime.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(SceneError, match="scalar volume"):
        volume_from_node(label)
    with pytest.raises(SceneError, match="scalar volume"):
        volume_from_node(None)


def test_region_summary_from_label_map_and_segmentation(pushed):
    rt, node, result, out, *_ = pushed
    scene = rt.scene
    rel = array_from_node(out.relevance)
    labels = np.zeros(rel.shape, np.int16)
    labels[20:60, 30:90, 20:60] = 1
    labels[80:130, 60:120, 40:90] = 2
    # a label map on a coarser, shifted grid: coarse voxel c sits at input voxel 2c + 0.5, so input voxel v
    # falls nearest to coarse voxel v // 2 (no ties); the bridge resamples it onto the relevance grid
    coarse = np.ascontiguousarray(labels[::2, ::2, ::2])
    to_input = np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1]])
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "regions")
    set_node_image(lab, coarse, node_ijk_to_ras(node) @ to_input)
    before = node_count(scene)
    table = region_summary(scene, node, lab)
    assert node_count(scene) == before + 1
    t = table.GetTable()
    rows = {t.GetValue(r, 1).ToInt(): r for r in range(t.GetNumberOfRows())}
    assert set(rows) == {1, 2}
    pos_total = np.clip(rel, 0, None).sum(dtype=np.float64)
    idx = np.indices(rel.shape) // 2
    on_grid = coarse[idx[0], idx[1], idx[2]]
    for label in (1, 2):
        expect = on_grid == label
        r = rows[label]
        assert t.GetValue(r, 2).ToInt() == int(expect.sum())
        assert t.GetValue(r, 3).ToDouble() == pytest.approx(float(rel[expect].sum(dtype=np.float64)), rel=1e-6)
        assert t.GetValue(r, 5).ToDouble() == pytest.approx(
            float(np.clip(rel[expect], 0, None).sum(dtype=np.float64) / pos_total), rel=1e-6)
    # a segmentation made from the same label map gives one row per segment; re-running adds nothing
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segs")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lab, seg)
    before = node_count(scene)
    table2 = region_summary(scene, node, seg)
    assert table2 is table and node_count(scene) == before
    assert table.GetTable().GetNumberOfRows() == 2
    assert sum(table.GetTable().GetValue(r, 5).ToDouble() for r in range(2)) <= 1.0 + 1e-9
    assert output_nodes(node)["regions"] is table


TORCH_FREE = """
import sys
from types import SimpleNamespace

import numpy as np

import addiagnosis.io.intensity, addiagnosis.io.report  # noqa: E401
import addiagnosis.mrml.regions, addiagnosis.mrml.runtime, addiagnosis.mrml.views  # noqa: E401
from addiagnosis.mrml.runtime import SlicerRuntime
from addiagnosis.mrml.regions import region_summary
from addiagnosis.mrml.scene import push_results, set_top_percent
from addiagnosis.io.volume import Volume

rt = SlicerRuntime()
aff = np.diag([1.5, 1.2, 2.0, 1.0])
scan = np.zeros((30, 40, 20), np.float32)
scan[5:25, 5:35, 3:17] = 100.0
node = rt.add_volume(Volume(scan, aff, "scan"))
rel = np.zeros_like(scan)
rel[10:20, 10:20, 5:10] = np.linspace(0.1, 1.0, 500, dtype=np.float32).reshape(10, 10, 5)
result = SimpleNamespace(relevance=Volume(rel, aff, "scan relevance"), model_name="m", model_version="0",
                         target="AD", method="lrp-epsilon", class_names=["CN", "AD"],
                         probabilities={"CN": 0.25, "AD": 0.75}, predicted="AD")
out = push_results(rt.scene, node, result, vr_logic=rt.vr_logic)
labels = rt.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
addiagnosis.mrml.nodes.set_node_image(labels, (rel > 0.5).astype(np.int16), aff)
table = region_summary(rt.scene, node, labels)
print(out.display_range.lower, set_top_percent(out.relevance, 1.0), table.GetTable().GetNumberOfRows())
print("torch" in sys.modules)
"""


def test_scene_bridge_runs_without_torch(tmp_path):
    """The bridge, runtime, regions, views and report modules import (and push, summarise) without torch."""
    script = tmp_path / "torch_free.py"
    script.write_text(textwrap.dedent(TORCH_FREE))
    env = {**os.environ, "PYTHONPATH": str(Path(addiagnosis.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    numbers, torch_loaded = proc.stdout.strip().splitlines()[-2:]
    lower, top1, rows = numbers.split()
    assert 0 < float(lower) < float(top1) <= 1.0 and rows == "1"
    assert torch_loaded == "False"
