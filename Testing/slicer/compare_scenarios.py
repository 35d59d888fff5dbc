"""The module panel's Compare section against Slicer's own Python layer of ONE release tag (run by
Testing/slicer/test_module_slicer.py, each tag in its own process: ``ADDIAGNOSIS_SLICER_TAG=v5.10.0 python -m pytest
THIS_FILE``), on real slicer-core MRML (slice composite nodes, the slice link logic), the real worker and engine.

In order, as a user clicks: no map (button disabled, why in its tooltip), one Diagnose (still disabled), a second
Diagnose with another target (the first map kept: enabled), Compare (the compare layout, A and B in the two columns'
composite nodes, slices linked both ways, the panel's figures the engine's), the difference column, the way back,
a run made for comparison (the current result untouched), an error (one line, scene and layout unchanged), keeping
switched off, and back to one map (disabled).
"""

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from vtk.util import numpy_support

STANDINS = Path(__file__).resolve().parents[1] / "support" / "slicer_standins"
sys.path.insert(0, str(STANDINS))

import qt  # noqa: E402  (stand-in)
import slicer_app  # noqa: E402

TAG = os.environ.get("ADDIAGNOSIS_SLICER_TAG", "v5.10.0")
TICK_S = 0.05  # the module's QTimer interval
METHOD = "lrp-reference-alpha1.25beta0.25"  # the bundled model's recommended method ("auto")
RESULTS = {}  # target -> the worker's DiagnosisResult


@pytest.fixture(scope="module")
def app():
    slicer = slicer_app.boot(TAG)
    module, parent = slicer_app.load_module(slicer)
    slicer.app.startupCompleted.emit()
    parent.enter()
    w = parent.widgetRepresentation()
    yield slicer, module, w
    w.cleanup()


@pytest.fixture(autouse=True)
def fresh_records():
    qt.RECORD["messages"].clear()
    yield


def run(w, button):
    """Click ``button`` and tick the module's timer until its job has finished; the job's result."""
    assert button.click()
    job, t0 = w._job, time.perf_counter()
    assert job is not None
    while w._job is not None:
        time.sleep(TICK_S)
        w._timer.tick()
        assert time.perf_counter() - t0 < 300, "the diagnosis did not finish"
    assert job.error is None and not qt.RECORD["messages"], (job.error, qt.RECORD["messages"])
    return job.result


def composite(slicer, name):
    return slicer.mrmlScene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")


def layout(slicer):
    return slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")


def scene_state(scene):
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetName()) for i in range(scene.GetNumberOfNodes()))


def moved_together(slicer, lead, follow, step=6.0):
    """Move the slice of view ``lead`` as a user does (interacting); whether ``follow`` moved to the same offset."""
    a = slicer.mrmlScene.GetSingletonNode(lead, "vtkMRMLSliceNode")
    b = slicer.mrmlScene.GetSingletonNode(follow, "vtkMRMLSliceNode")
    target = a.GetSliceOffset() + step
    a.SetInteractionFlags(a.SliceToRASFlag)
    a.InteractingOn()
    a.SetSliceOffset(target)
    a.InteractingOff()
    return a.GetSliceOffset() == pytest.approx(target) and b.GetSliceOffset() == pytest.approx(target)


def test_no_map_nothing_to_compare(app):
    slicer, module, w = app
    w.ui.loadExampleButton.click()
    assert w._parameterNode.inputVolume is not None
    assert w.ui.compareSelector.count == 0 and w.ui.compareALabel.text == "(diagnose a scan first)"
    assert not w.ui.compareButton.enabled and not w.ui.compareButton.click()
    assert w.ui.compareButton.toolTip.startswith("Diagnose a scan first")
    assert not w.ui.compareRunButton.enabled and not w.ui.leaveCompareButton.enabled
    assert w.ui.compareResearchUseLabel.text.startswith("Research use only")


def test_one_map_the_button_is_disabled_and_says_why(app):
    slicer, module, w = app
    RESULTS["AD"] = run(w, w.ui.diagnoseButton)
    assert RESULTS["AD"].target == "AD" and RESULTS["AD"].method == METHOD
    rel = w._parameterNode.relevanceVolume
    assert w.ui.compareALabel.text == f"{rel.GetName()} (AD, {METHOD})"
    assert w.ui.compareSelector.count == 0
    assert not w.ui.compareButton.enabled and not w.ui.compareButton.click()
    assert w.ui.compareButton.toolTip.startswith("Only one map")
    assert w.ui.compareRunButton.enabled  # a map B can be made from here


def test_a_second_diagnose_keeps_the_first_map_and_enables_compare(app):
    from addiagnosis.mrml import compare as scene_compare
    from addiagnosis.mrml.nodes import array_from_node, node_ijk_to_ras

    slicer, module, w = app
    p = w._parameterNode
    assert p.keepMaps and w.ui.keepMapsCheckBox.checked
    w.ui.targetSelector.setCurrentText("CN")
    RESULTS["CN"] = run(w, w.ui.diagnoseButton)
    rel, scan = p.relevanceVolume, p.inputVolume
    assert RESULTS["CN"].target == "CN" and rel.GetAttribute("ADDiagnosis.target") == "CN"
    np.testing.assert_array_equal(array_from_node(rel), RESULTS["CN"].relevance.array)
    (kept,) = scene_compare.kept_maps(scan)
    assert w.ui.compareSelector.count == 1
    assert w.ui.compareSelector.currentText == f"{scan.GetName()} relevance (AD, {METHOD})"
    assert w._mapB() is kept and kept.GetName() == f"{scan.GetName()} relevance (AD, {METHOD})"
    np.testing.assert_array_equal(array_from_node(kept), RESULTS["AD"].relevance.array)  # the first map, exactly
    np.testing.assert_array_equal(node_ijk_to_ras(kept), node_ijk_to_ras(scan))
    assert w.ui.compareButton.enabled and w.ui.compareButton.toolTip.startswith("Show A (left) and B (right)")
    before = scene_state(slicer.mrmlScene)
    run(w, w.ui.diagnoseButton)  # the same target and method again: updated, nothing added
    assert scene_state(slicer.mrmlScene) == before and w.ui.compareSelector.count == 1


def engine_comparison():
    """The engine's own comparison of the two results the worker sent (A: CN, the current one; B: AD)."""
    from addiagnosis.explain.comparison import compare_maps

    a, b = RESULTS["CN"], RESULTS["AD"]
    return compare_maps(a.relevance, a.preprocessing, b.relevance, b.preprocessing, on="input")


def test_compare_shows_the_two_maps_side_by_side_with_linked_slices(app):
    from addiagnosis.mrml import compare as scene_compare

    slicer, module, w = app
    p = w._parameterNode
    scan, mapA, mapB = p.inputVolume, p.relevanceVolume, w._mapB()
    assert w.ui.compareButton.click()
    assert layout(slicer).GetViewArrangement() == scene_compare.COMPARE_LAYOUT_ID
    for names, shown in ((scene_compare.LEFT, mapA), (scene_compare.RIGHT, mapB)):
        for name in names:
            comp = composite(slicer, name)
            assert comp.GetBackgroundVolumeID() == scan.GetID() and comp.GetForegroundVolumeID() == shown.GetID()
            assert comp.GetLinkedControl() and comp.GetForegroundOpacity() == pytest.approx(p.overlayOpacity)
    for left, right in zip(scene_compare.LEFT, scene_compare.RIGHT):
        assert moved_together(slicer, left, right) and moved_together(slicer, right, left, step=-9.0)
    engine = engine_comparison()
    text = w.ui.compareSummaryLabel.text
    assert text == scene_compare.summary_text(engine.summary)
    figures = dict(re.findall(r"(correlation|share moved|Dice of the shown voxels) (-?[0-9.]+)", text))
    assert float(figures["correlation"]) == round(engine.summary["correlation"], 3)
    assert float(figures["share moved"]) == round(engine.summary["share_moved"], 3)
    assert float(figures["Dice of the shown voxels"]) == round(engine.summary["dice_shown"], 3)
    assert 0.0 < engine.summary["correlation"] < 1.0  # two targets: alike, not the same
    assert w.ui.leaveCompareButton.enabled and not qt.RECORD["messages"]


def test_the_difference_in_a_third_column(app):
    from addiagnosis.mrml import compare as scene_compare
    from addiagnosis.mrml.nodes import array_from_node, node_world_ijk_to_ras

    slicer, module, w = app
    p = w._parameterNode
    w.ui.differenceCheckBox.click()
    assert p.compareDifference
    assert w.ui.compareButton.click()
    assert layout(slicer).GetViewArrangement() == scene_compare.DIFFERENCE_LAYOUT_ID
    diff = slicer.mrmlScene.GetNodeByID(composite(slicer, "DifferenceRed").GetForegroundVolumeID())
    engine = engine_comparison()
    np.testing.assert_allclose(array_from_node(diff), engine.difference.array, rtol=0, atol=1e-12)
    np.testing.assert_allclose(node_world_ijk_to_ras(diff), node_world_ijk_to_ras(p.inputVolume), atol=1e-9)
    for name in scene_compare.DIFFERENCE:
        comp = composite(slicer, name)
        assert comp.GetBackgroundVolumeID() == p.inputVolume.GetID() and comp.GetForegroundVolumeID() == diff.GetID()
        assert comp.GetCompositing() == comp.Add and comp.GetLinkedControl()
    assert moved_together(slicer, "DifferenceGreen", "Green") and moved_together(slicer, "Green", "CompareGreen")
    check_difference_pixels(slicer, diff, engine.difference.array)
    assert w.ui.compareSummaryLabel.text == scene_compare.summary_text(engine.summary)
    w.ui.differenceCheckBox.click()
    assert not p.compareDifference


def layer_pixels(connection):
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).astype(int)


def check_difference_pixels(slicer, diff, array):
    """What Slicer's slice logic composes in the DifferenceRed view through the largest |B - A|: the scan plus the
    difference's colour (Add), so red where B holds more, blue where A does, the scan itself where they agree."""
    node = slicer.mrmlScene.GetSingletonNode("DifferenceRed", "vtkMRMLSliceNode")
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(slicer.runtime.app_logic)
    logic.SetMRMLScene(slicer.mrmlScene)
    logic.SetSliceNode(node)
    logic.ResizeSliceNode(256, 256)
    logic.FitSliceToBackground()
    from addiagnosis.mrml.nodes import node_world_ijk_to_ras

    for ijk in (np.unravel_index(np.argmax(array), array.shape), np.unravel_index(np.argmin(array), array.shape)):
        node.JumpSliceByOffsetting(*(node_world_ijk_to_ras(diff) @ np.append(np.array(ijk, float), 1.0))[:3])
        logic.UpdatePipeline()
        assert logic.GetForegroundLayer().GetVolumeNode() is diff
        scan = layer_pixels(logic.GetBackgroundLayer().GetImageDataConnection())[:, :3]
        tint = layer_pixels(logic.GetForegroundLayer().GetImageDataConnection())[:, :3]
        shown = layer_pixels(logic.GetImageDataConnection())[:, :3]
        assert np.abs(shown - np.clip(scan + tint, 0, 255)).max() <= 1  # added, not blended over
        assert np.abs(shown - scan).max() > 60  # the difference is in sight
        tinted = np.abs(shown - scan).sum(1) > 30
        red = tinted & (tint[:, 0] > tint[:, 2])
        assert red.any() if array[ijk] > 0 else (tinted & ~red).any()
        agree = (tint <= 1).all(1)  # B - A = 0 there: the scan as it is
        assert agree.any() and (np.abs(shown - scan)[agree] <= 1).all()


def test_back_to_the_normal_layout(app):
    from addiagnosis.mrml import compare as scene_compare

    slicer, module, w = app
    w.ui.leaveCompareButton.click()
    assert layout(slicer).GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView
    for name in scene_compare.LEFT + scene_compare.RIGHT + scene_compare.DIFFERENCE:
        assert not composite(slicer, name).GetLinkedControl()  # unlinked, as before Compare
    assert not w.ui.leaveCompareButton.enabled and w.ui.compareButton.enabled


def test_a_run_made_for_comparison_leaves_the_current_result(app):
    from addiagnosis.mrml.nodes import array_from_node

    slicer, module, w = app
    p = w._parameterNode
    current, predicted = p.relevanceVolume, w.ui.predictedLabel.text
    mtime = current.GetImageData().GetMTime()
    w.ui.compareTargetSelector.setCurrentText("MCI")
    w.ui.compareMethodSelector.setCurrentText("lrp-epsilon")
    result = run(w, w.ui.compareRunButton)
    assert (result.target, result.method) == ("MCI", "lrp-epsilon")
    assert p.relevanceVolume is current and current.GetImageData().GetMTime() == mtime
    assert current.GetAttribute("ADDiagnosis.target") == "CN" and w.ui.predictedLabel.text == predicted
    mapB = w._mapB()
    assert w.ui.compareSelector.currentText.endswith("(MCI, lrp-epsilon)") and w.ui.compareSelector.count == 2
    np.testing.assert_array_equal(array_from_node(mapB), result.relevance.array)
    assert w.ui.statusLabel.text.startswith("map B ready in")
    assert composite(slicer, "Red").GetForegroundVolumeID() == current.GetID()  # the views still show A
    assert w.ui.compareButton.click()
    assert composite(slicer, "CompareRed").GetForegroundVolumeID() == mapB.GetID()
    w.ui.leaveCompareButton.click()


def test_maps_that_cannot_be_compared_are_one_line_and_change_nothing(app):
    """A map on another grid without a registration to MNI (another scan, a model that does not register)."""
    slicer, module, w = app
    arr = np.random.default_rng(0).random((30, 32, 28)).astype(np.float32)
    scan = slicer.util.addVolumeFromArray(arr, ijkToRAS=np.diag([3.0, 3.0, 3.0, 1.0]), name="other scan")
    other = slicer.util.addVolumeFromArray(arr, ijkToRAS=np.diag([3.0, 3.0, 3.0, 1.0]), name="other scan relevance")
    other.SetAttribute("ADDiagnosis.role", "relevance")
    scan.SetNodeReferenceID("ADDiagnosis.relevance", other.GetID())
    w.ui.compareCollapsibleButton.collapsed = True  # opening the section lists what the scene holds now
    w.ui.compareCollapsibleButton.collapsed = False
    w.ui.compareSelector.setCurrentText("other scan relevance (?, ?)")
    assert w._mapB() is other
    before, arrangement = scene_state(slicer.mrmlScene), layout(slicer).GetViewArrangement()
    assert w.ui.compareButton.click()
    text = w.ui.compareSummaryLabel.text
    assert text.startswith("Could not compare: map B has no registration to MNI space") and "\n" not in text
    assert scene_state(slicer.mrmlScene) == before and layout(slicer).GetViewArrangement() == arrangement
    slicer.mrmlScene.RemoveNode(other)
    slicer.mrmlScene.RemoveNode(scan)
    assert w.ui.compareSelector.count == 2 and "other scan" not in w.ui.compareSelector.currentText


def test_keeping_switched_off_and_back_to_one_map(app):
    from addiagnosis.mrml import compare as scene_compare

    slicer, module, w = app
    p = w._parameterNode
    w.ui.keepMapsCheckBox.click()
    assert not p.keepMaps
    w.ui.targetSelector.setCurrentText("AD")
    assert w.ui.compareSummaryLabel.text  # the one-line error of the test before
    run(w, w.ui.diagnoseButton)  # CN is replaced, not kept; the kept AD map is the current one now: dropped
    assert w.ui.compareSummaryLabel.text == ""  # no figures of a map that is not shown any more
    kept = scene_compare.kept_maps(p.inputVolume)
    assert [scene_compare.describe(k)[-len("(MCI, lrp-epsilon)"):] for k in kept] == ["(MCI, lrp-epsilon)"]
    assert w.ui.compareSelector.count == 1 and w.ui.compareButton.enabled
    slicer.mrmlScene.RemoveNode(kept[0])  # one map again
    assert w.ui.compareSelector.count == 0
    assert not w.ui.compareButton.enabled and w.ui.compareButton.toolTip.startswith("Only one map")
    w.ui.keepMapsCheckBox.click()
    assert p.keepMaps


def test_a_follow_up_against_its_baseline(app):
    """Two scans of one subject (the follow-up on another grid, 6 mm and 3 voxels away): B is carried onto A's scan
    through both diagnoses' registrations to MNI; the figures are the engine's on A's grid."""
    from addiagnosis.explain.comparison import compare_maps
    from addiagnosis.mrml import compare as scene_compare
    from addiagnosis.mrml.nodes import node_ijk_to_ras

    slicer, module, w = app
    p = w._parameterNode
    baseline, mapBaseline = p.inputVolume, p.relevanceVolume
    w.ui.targetSelector.setCurrentText("AD")
    arr = slicer.util.arrayFromVolume(baseline)[3:, :, :].astype(np.float32)  # KJI: three axial slices fewer
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 6.0, 0.0)
    crop = np.eye(4)
    crop[2, 3] = 3.0  # voxel k of the follow-up is voxel k + 3 of the baseline
    ijk_to_ras = shift @ node_ijk_to_ras(baseline) @ crop
    followUp = slicer.util.addVolumeFromArray(arr, ijkToRAS=ijk_to_ras, name="follow-up")
    p.inputVolume = followUp
    result = run(w, w.ui.diagnoseButton)
    mapFollowUp = p.relevanceVolume
    assert w.ui.compareALabel.text.startswith("follow-up relevance (AD")
    w.ui.compareSelector.setCurrentText(scene_compare.describe(mapBaseline))
    assert w._mapB() is mapBaseline and w.ui.compareButton.enabled
    assert w.ui.compareButton.click()
    for name in scene_compare.LEFT:
        assert composite(slicer, name).GetBackgroundVolumeID() == followUp.GetID()
    for name in scene_compare.RIGHT:
        comp = composite(slicer, name)
        assert comp.GetBackgroundVolumeID() == baseline.GetID() and comp.GetForegroundVolumeID() == mapBaseline.GetID()
    assert moved_together(slicer, "Yellow", "CompareYellow")
    first = RESULTS["AD"]
    engine = compare_maps(result.relevance, result.preprocessing, first.relevance, first.preprocessing, on="a")
    assert engine.summary["space"] == "a"
    assert w.ui.compareSummaryLabel.text == scene_compare.summary_text(engine.summary)
    assert "compared on A's scan" in w.ui.compareSummaryLabel.text and 0.5 < engine.summary["correlation"] < 1.0
    w.ui.leaveCompareButton.click()
    assert mapFollowUp is p.relevanceVolume
