"""ADDiagnosis.py against Slicer's own Python layer of ONE release tag (run by Testing/slicer/test_module_slicer.py,
each tag in its own process: ``ADDIAGNOSIS_SLICER_TAG=v5.10.0 python -m pytest THIS_FILE``).

Real: Slicer's slicer.util, ScriptedLoadableModule, parameterNodeWrapper, i18n and Sample Data module of that
tag, slicer-core's MRML, Volumes / Volume Rendering / slice logics, the engine, the worker process.
Stood in (this folder): PythonQt widget classes built from the real .ui file, slicer.app, message boxes.
The scenarios run in order on one application, as a user would click through them.
"""

import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import qt  # noqa: E402  (stand-in)
import slicer_app  # noqa: E402
from launcher import gone_within, group_processes, rss_mb, slicer_with_a_worker  # noqa: E402

TAG = os.environ.get("ADDIAGNOSIS_SLICER_TAG", "v5.10.0")
METRICS = os.environ.get("ADDIAGNOSIS_SLICER_METRICS")
EXAMPLE = slicer_app.ROOT / "ADDiagnosis" / "Resources" / "SampleData" / "synthetic-AD-subject.nii.gz"
TICK_S = 0.05  # the module's QTimer interval (POLL_MS)
TMP = Path(tempfile.gettempdir())  # private to this run (test_module_slicer.py sets TMPDIR)
_held = ctypes.PyDLL(None).usleep  # a C call made WITHOUT releasing the GIL (PyDLL), as Qt's event loop in PythonQt
_held.argtypes = [ctypes.c_uint]
measured = {"tag": TAG}


def hold_gil(seconds):
    """The main thread blocks in C for ``seconds`` holding the GIL: what PythonQt's event loop does."""
    _held(int(seconds * 1e6))


def event_loop(widget, gil_held, limit=300.0, until=None, tick_s=TICK_S):
    """Tick the module's timer every tick_s, the time between ticks spent in Qt's loop (GIL free or held)."""
    t0 = time.perf_counter()
    while widget._job is not None and (until is None or not until()):
        hold_gil(tick_s) if gil_held else time.sleep(tick_s)
        widget._timer.tick()
        assert time.perf_counter() - t0 < limit, "the diagnosis did not finish"
    return time.perf_counter() - t0


def leftovers():
    """What is in the temporary folder, but the stand-in application's own folders and pytest's."""
    return sorted(p.name for p in TMP.iterdir() if not p.name.startswith(("slicer-cache-", "slicer-tmp-", "pytest-")))


def scene_state(scene):
    return sorted((scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetName()) for i in range(scene.GetNumberOfNodes()))


@pytest.fixture(scope="module")
def app():
    slicer = slicer_app.boot(TAG)
    module, parent = slicer_app.load_module(slicer)
    slicer.app.startupCompleted.emit()  # Slicer emits it once the main window is up: Sample Data registration
    yield slicer, module, parent
    widget = parent._widget
    if widget is not None:
        widget.cleanup()
    if METRICS:
        Path(METRICS).write_text(json.dumps(measured, indent=1))


@pytest.fixture(autouse=True)
def fresh_records():
    qt.RECORD["messages"].clear()
    qt.RECORD["dialogs"].clear()
    yield


def test_real_slicer_python_of_the_tag(app):
    slicer, module, parent = app
    tagdir = slicer_app.SLICER_PYTHON / TAG / "slicer"
    for name in ("util", "ScriptedLoadableModule", "i18n", "parameterNodeWrapper"):
        f = Path(sys.modules[f"slicer.{name}"].__file__).resolve()
        assert tagdir.resolve() in f.parents, (name, f)
    assert Path(sys.modules["SampleData"].__file__).resolve().parent == (tagdir.parent / "modules").resolve()
    assert type(slicer.mrmlScene).__name__ == "vtkMRMLScene"  # real MRML from slicer-core


def test_module_import_and_registration(app):
    slicer, module, parent = app
    assert parent.title == "AD Diagnosis" and parent.categories == ["Neuroimaging"]
    assert "Research use only" in parent.helpText
    assert parent.icon is not None and parent.icon.path.endswith("ADDiagnosis.png")
    assert "ADDiagnosis" in slicer.selfTests


def test_sample_data_registered_with_checksum_and_loads(app):
    slicer, module, parent = app
    import SampleData

    sources = slicer.modules.sampleDataSources["ADDiagnosis"]
    assert [s.sampleName for s in sources] == ["synthetic-AD-subject"]
    sha = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert sources[0].checksums == [f"SHA256:{sha}"]
    node = SampleData.SampleDataLogic().downloadSample("synthetic-AD-subject")
    assert node is not None and node.GetName().startswith("synthetic-AD-subject")
    cached = Path(slicer.app.cachePath) / EXAMPLE.name
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    import nibabel as nib

    img = nib.load(str(EXAMPLE))
    arr = slicer.util.arrayFromVolume(node)  # KJI
    np.testing.assert_array_equal(arr.transpose(2, 1, 0), np.asarray(img.dataobj))
    from addiagnosis.mrml.nodes import node_ijk_to_ras

    np.testing.assert_allclose(node_ijk_to_ras(node), img.affine, atol=1e-4)
    slicer.mrmlScene.RemoveNode(node)


def test_sample_data_refuses_a_wrong_checksum(app, tmp_path):
    slicer, module, parent = app
    import SampleData

    bad = tmp_path / "tampered.nii.gz"
    shutil.copy(EXAMPLE, bad)
    with open(bad, "ab") as fh:
        fh.write(b"x")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ADDiagnosisTest", sampleName="tampered", uris=qt.QUrl.fromLocalFile(str(bad)).toString(),
        fileNames="tampered.nii.gz", nodeNames="tampered",
        checksums="SHA256:" + hashlib.sha256(EXAMPLE.read_bytes()).hexdigest(), loadFileType="VolumeFile")
    before = scene_state(slicer.mrmlScene)
    try:  # 5.10 raises after its retries; 5.8 logs the failure and returns no node
        got = SampleData.SampleDataLogic().downloadSample("tampered")
    except Exception:
        got = None
    assert not hasattr(got, "GetID")
    assert scene_state(slicer.mrmlScene) == before
    assert not (Path(slicer.app.cachePath) / "tampered.nii.gz").exists()  # removed after the failed check


def test_parameter_node_creation(app):
    slicer, module, parent = app
    logic = module.ADDiagnosisLogic()
    p = logic.getParameterNode()
    assert p.inputVolume is None and p.regions is None and p.relevanceVolume is None
    assert p.method == "auto" and p.overlayOpacity == pytest.approx(0.6) and p.topPercent == pytest.approx(5.0)


def test_union_without_none_is_what_broke_the_panel(app):
    """The wrapper of this tag writes defaults on creation: a node Union without None cannot be written."""
    slicer, module, parent = app
    from typing import Union

    from slicer.parameterNodeWrapper import parameterNodeWrapper

    @parameterNodeWrapper
    class Broken:
        regions: Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode]  # noqa: UP007

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    with pytest.raises(TypeError):
        Broken(node)
    slicer.mrmlScene.RemoveNode(node)


def test_widget_setup_binds_the_ui_with_connectGui(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    parent.enter()
    p = w._parameterNode
    assert p is not None and w._parameterNodeGuiTag is not None
    assert [w.ui.methodSelector.itemText(i) for i in range(w.ui.methodSelector.count)] == module.METHODS
    assert [w.ui.deviceSelector.itemText(i) for i in range(w.ui.deviceSelector.count)] == ["cpu", "cuda"]
    assert w.ui.modelSelector.currentText == "addiagnosis-synthetic-demo" == p.model
    assert w.ui.targetSelector.itemText(0) == w.PREDICTED and w.ui.targetSelector.count == 6
    w.ui.methodSelector.currentIndex = module.METHODS.index("lrp-epsilon")  # widget -> parameter
    assert p.method == "lrp-epsilon"
    p.method = "auto"  # parameter -> widget
    assert w.ui.methodSelector.currentText == "auto"
    w.ui.targetSelector.setCurrentText("AD")
    assert p.targetClass == "AD"
    w.ui.targetSelector.setCurrentText(w.PREDICTED)
    assert p.targetClass == ""
    import addiagnosis
    from addiagnosis.models.card import METHOD_CHOICES

    assert w.ui.researchUseLabel.text == addiagnosis.RESEARCH_USE and module.METHODS == list(METHOD_CHOICES)
    assert not w.ui.diagnoseButton.enabled  # no scan in the scene yet
    assert not w.ui.diagnoseButton.click()


def test_selecting_the_example(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    assert w.ui.loadExampleButton.enabled
    w.ui.loadExampleButton.click()
    node = w._parameterNode.inputVolume
    assert node is not None and node.GetName().startswith("synthetic-AD-subject")
    assert w.ui.inputSelector.currentNode() is node
    assert w.ui.diagnoseButton.enabled
    comp = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
    assert comp.GetBackgroundVolumeID() == node.GetID()
    assert not qt.RECORD["messages"]


def _relevance_checks(slicer, w):
    from addiagnosis.mrml.nodes import array_from_node, node_ijk_to_ras
    from addiagnosis.mrml.scene import table_probabilities

    p = w._parameterNode
    rel, inp = p.relevanceVolume, p.inputVolume
    assert rel is not None and rel.GetName() == inp.GetName() + " relevance"
    np.testing.assert_array_equal(node_ijk_to_ras(rel), node_ijk_to_ras(inp))
    assert array_from_node(rel).shape == array_from_node(inp).shape
    assert np.isfinite(array_from_node(rel)).all() and array_from_node(rel).max() > 0
    for name in slicer.app.layoutManager().sliceViewNames():
        comp = slicer.app.layoutManager().sliceWidget(name).sliceLogic().GetSliceCompositeNode()
        assert comp.GetForegroundVolumeID() == rel.GetID() and comp.GetBackgroundVolumeID() == inp.GetID()
        assert comp.GetForegroundOpacity() == pytest.approx(p.overlayOpacity)
    probs = table_probabilities(p.probabilityTable)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6) and set(probs) == {"CN", "EMCI", "MCI", "LMCI", "AD"}
    plot_view = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    chart = slicer.mrmlScene.GetNodeByID(plot_view.GetPlotChartNodeID())
    assert chart is not None and chart.GetPlotSeriesNodeID() is not None
    vr = slicer.app.runtime.vr_logic.GetFirstVolumeRenderingDisplayNode(rel)
    assert vr is not None and vr.GetVisibility()
    return probs


def test_diagnose_shows_relevance_table_chart_and_3d(app):
    """The first click (the worker may have been started in advance when the module was entered)."""
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    assert w.ui.diagnoseButton.click()
    assert w.ui.diagnoseButton.text == "Cancel" and w.ui.progressBar.visible
    job = w._job
    seconds = event_loop(w, gil_held=False)
    measured["first_click_to_overlay_s"] = round(seconds, 2)
    measured["first_worker"] = job.result.worker
    assert not qt.RECORD["messages"], qt.RECORD["messages"]
    assert w.ui.diagnoseButton.text == "Diagnose" and not w.ui.progressBar.visible
    probs = _relevance_checks(slicer, w)
    assert w.ui.predictedLabel.text.startswith("AD") and "lrp-reference-alpha1.25beta0.25" in w.ui.predictedLabel.text
    assert "synthetic data" in w.ui.predictedLabel.text
    assert w.ui.statusLabel.text.startswith("done in")
    assert max(probs, key=probs.get) == "AD"
    # the bundled card's conformal sets: the 90 % set of stages is shown with the probabilities
    assert w.ui.probabilitiesLabel.text.splitlines()[-1] == "90 % set: " + ", ".join(job.result.prediction_set)
    measured["probabilities"] = probs
    FIRST["relevance"] = job.result.relevance.array.copy()
    FIRST["pid"] = job.result.worker["pid"]
    _table_has_quality(w, "ok")
    assert "torch" not in sys.modules  # Slicer's GUI process only moved data into MRML; the worker ran torch


FIRST = {}


def _table_has_quality(w, text):
    table = w._parameterNode.probabilityTable.GetTable()
    column = table.GetColumnByName("Quality")
    assert column is not None and {column.GetValue(i) for i in range(table.GetNumberOfRows())} == {text}


def test_second_click_reuses_the_warm_worker(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    before = scene_state(slicer.mrmlScene)
    assert w.ui.diagnoseButton.click()
    job = w._job
    measured["warm_click_to_overlay_gil_free_s"] = round(event_loop(w, gil_held=False), 2)
    measured["warm_worker"] = job.result.worker
    assert job.result.worker["pid"] == FIRST["pid"] and job.result.worker["import_s"] == 0.0
    np.testing.assert_array_equal(job.result.relevance.array, FIRST["relevance"])  # same scan: same voxels
    assert scene_state(slicer.mrmlScene) == before and not qt.RECORD["messages"]
    worker = module.ADDiagnosisLogic._process
    measured["idle_worker_rss_mb"] = round(sum(rss_mb(pid) for pid, _ in group_processes(worker.group)), 1)
    assert len(group_processes(worker.group)) == 2  # PythonSlicer (the launcher stand-in) and its child


def test_opacity_and_threshold_controls(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    p, comp = w._parameterNode, slicer.app.layoutManager().sliceWidget("Green").sliceLogic().GetSliceCompositeNode()
    w.ui.opacitySlider.value = 0.25
    assert p.overlayOpacity == pytest.approx(0.25) and comp.GetForegroundOpacity() == pytest.approx(0.25)
    disp = p.relevanceVolume.GetDisplayNode()
    lower5 = disp.GetLowerThreshold()
    w.ui.thresholdSlider.value = 50.0
    assert p.topPercent == pytest.approx(50.0) and disp.GetLowerThreshold() <= lower5  # (floor: 10 % of max)
    w.ui.thresholdSlider.value = 1.0
    assert disp.GetLowerThreshold() > lower5
    w.ui.thresholdSlider.value = 5.0
    assert disp.GetLowerThreshold() == pytest.approx(lower5, rel=1e-6)


def _plane_distance(slice_node, ras):
    m = np.array([[slice_node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    return float(abs(np.dot(np.asarray(ras, dtype=float) - m[:3, 3], m[:3, 2] / np.linalg.norm(m[:3, 2]))))


def test_atlas_in_the_scene_names_the_region(app):
    """Issue 20: after Diagnose the atlas is a label map in the scene, under the diagnosis's registration, in every
    slice view's label layer, with a colour table naming the regions (what Slicer's Data Probe shows)."""
    from addiagnosis.mrml import atlas as scene_atlas

    slicer, module, parent = app
    w = parent.widgetRepresentation()
    inp = w._parameterNode.inputVolume
    labels = scene_atlas.atlas_node(inp)
    assert labels is not None and labels.IsA("vtkMRMLLabelMapVolumeNode")
    assert labels.GetDisplayNode().GetColorNode().GetColorName(48) == "Left Hippocampus"
    for name in slicer.app.layoutManager().sliceViewNames():
        comp = slicer.app.layoutManager().sliceWidget(name).sliceLogic().GetSliceCompositeNode()
        assert comp.GetLabelVolumeID() == labels.GetID()
    m = labels.GetParentTransformNode().GetMatrixTransformToParent()
    mni_to_scan = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    ras = (mni_to_scan @ np.array([-26.0, -20.0, -14.0, 1.0]))[:3]
    assert scene_atlas.region_at(labels, ras) == "Left Hippocampus"


def test_cluster_list_jumps_the_slice_views_to_the_peak(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    table = w._clusterTable
    t = table.GetTable()
    assert t.GetNumberOfRows() >= 1 and w.ui.clusterSelector.count == t.GetNumberOfRows() + 1
    assert w.ui.clusterSelector.enabled and "%" in w.ui.clusterSelector.itemText(1)
    for row in range(min(2, t.GetNumberOfRows())):
        w.ui.clusterSelector.currentIndex = row + 1
        peak = [t.GetColumnByName(c).GetValue(row) for c in ("Peak R", "Peak A", "Peak S")]
        for name in slicer.app.layoutManager().sliceViewNames():
            node = slicer.app.layoutManager().sliceWidget(name).mrmlSliceNode()
            assert _plane_distance(node, peak) < 1e-6, (name, row)
    assert not qt.RECORD["messages"]


def test_compare_layout_with_linked_slices(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    p = w._parameterNode
    views = w.logic.compareLayout(p.inputVolume, p.inputVolume, opacity=p.overlayOpacity)
    layout = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == 20601 and len(views) == 6
    red, right = views["Red"], views["CompareRed"]
    red.SetInteractionFlags(red.SliceToRASFlag)
    red.InteractingOn()
    red.SetSliceOffset(red.GetSliceOffset() + 6.0)
    red.InteractingOff()
    assert right.GetSliceOffset() == pytest.approx(red.GetSliceOffset())
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)


def test_python_threads_are_starved_while_the_gil_is_held(app):
    """The model of PythonQt used below: a Python thread barely runs while the main thread holds the GIL."""
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.3)
    free = count[0]
    count[0] = 0
    hold_gil(1.0)  # the thread only runs for the few ms before the main thread takes the GIL back
    held = count[0]
    stop.set()
    t.join()
    assert held / 1.0 < free / 0.3 / 20, (held, free)


STAGES = {"start": lambda job: True,
          "preprocessing": lambda job: job.progress[0] == "preprocessing",
          "explaining": lambda job: job.progress[0].startswith("explaining")}


@pytest.mark.parametrize("when", ["start", "preprocessing", "explaining", "time limit"])
def test_cancel_ends_the_whole_worker_tree_within_a_second(app, when, monkeypatch):
    """PythonSlicer is a launcher with the real Python as its child: Cancel (and the time limit) end both."""
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    before, rel_mtime = scene_state(slicer.mrmlScene), w._parameterNode.relevanceVolume.GetImageData().GetMTime()
    files = leftovers()
    if when == "time limit":
        monkeypatch.setattr(module.ADDiagnosisLogic, "timeLimit", 1.5)
    module.ADDiagnosisLogic.stopWorker()  # a cold worker: every stage is reached while the test watches
    assert w.ui.diagnoseButton.click()
    job, group = w._job, module.ADDiagnosisLogic._process.group
    if when == "time limit":
        event_loop(w, gil_held=True, tick_s=0.01)
        t = time.perf_counter()
        assert str(job.error) == "the diagnosis took longer than 1.5 s and was stopped"
        assert w.ui.statusLabel.text == "failed: the diagnosis took longer than 1.5 s and was stopped"
        assert len(qt.RECORD["messages"]) == 1
    else:
        event_loop(w, gil_held=True, tick_s=0.01, until=lambda: STAGES[when](job))
        assert w._job is job and (when == "start" or len(group_processes(group)) == 2)
        t = time.perf_counter()
        assert w.ui.diagnoseButton.click()  # the same button reads "Cancel"
        assert job.cancelled and job.result is None and w._job is None
        assert w.ui.statusLabel.text == "cancelled; the scene was not changed" and not qt.RECORD["messages"]
    while group_processes(group):
        assert time.perf_counter() - t < 1.0, f"{when}: still alive after 1 s: {group_processes(group)}"
        time.sleep(0.005)
    measured.setdefault("cancel_to_no_process_s", {})[when] = round(time.perf_counter() - t, 3)
    assert scene_state(slicer.mrmlScene) == before and leftovers() == files
    assert w._parameterNode.relevanceVolume.GetImageData().GetMTime() == rel_mtime


def test_diagnose_after_cancel_starts_a_new_worker_and_is_not_slower_with_the_gil_held(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    before = scene_state(slicer.mrmlScene)
    for run in ("new worker", "warm"):
        assert w.ui.diagnoseButton.click()
        job = w._job
        seconds = event_loop(w, gil_held=True)
        assert not qt.RECORD["messages"], qt.RECORD["messages"]
        assert job.result.worker["pid"] != FIRST["pid"] and job.result.worker["jobs"] == (1 if run == "new worker"
                                                                                          else 2)
        np.testing.assert_array_equal(job.result.relevance.array, FIRST["relevance"])
    measured["warm_click_to_overlay_gil_held_s"] = round(seconds, 2)
    free, free_worker = measured["warm_click_to_overlay_gil_free_s"], measured["warm_worker"]["seconds"]
    measured["gil_ratio_raw"] = round(seconds / free, 3)
    # the worker's own time moves with the load of a shared machine; holding the GIL can only add time outside
    # it (polling, reading the result, pushing into MRML): compare click-to-overlay per second of worker time
    measured["gil_ratio"] = round((seconds / job.result.worker["seconds"]) / (free / free_worker), 3)
    assert scene_state(slicer.mrmlScene) == before
    _relevance_checks(slicer, w)
    assert measured["gil_ratio"] <= 1.5, measured


def test_model_method_and_device_changes_on_the_warm_worker(app, tmp_path, monkeypatch):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    bundled = slicer_app.ROOT / "ADDiagnosis" / "Resources" / "Models" / "addiagnosis-synthetic-demo"
    copy = tmp_path / "models" / "demo-copy"  # the same weights under another name: the same numbers expected
    shutil.copytree(bundled, copy)
    card = json.loads((copy / "card.json").read_text())
    card.update(name="demo-copy", default=False)
    (copy / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("ADDIAGNOSIS_MODEL_PATH", str(tmp_path / "models"))  # seen by the GUI process only
    w._fillModels()
    pid = module.ADDiagnosisLogic._process.ready.pid
    try:
        w.ui.modelSelector.setCurrentText("demo-copy")
        assert w._parameterNode.model == "demo-copy"
        result = _diagnose(w)
        assert result.model_name == "demo-copy" and result.worker["pid"] == pid
        np.testing.assert_array_equal(result.relevance.array, FIRST["relevance"])
        w._parameterNode.method = "lrp-epsilon"
        result = _diagnose(w)
        assert result.method == "lrp-epsilon" and result.worker["pid"] == pid
        w._parameterNode.device = "cuda"  # this machine has no GPU: one line, the worker stays
        assert w.ui.diagnoseButton.click()
        event_loop(w, gil_held=True)
        assert [m["text"] for m in qt.RECORD["messages"]] == [
            "--device cuda asked for, but no CUDA GPU is available to PyTorch"]
        assert module.ADDiagnosisLogic._process.ready.pid == pid and module.ADDiagnosisLogic.workerRunning()
    finally:
        w._parameterNode.device, w._parameterNode.method = "cpu", "auto"
        monkeypatch.undo()
        w._fillModels()
        w.ui.modelSelector.setCurrentText("addiagnosis-synthetic-demo")
    assert w._parameterNode.model == "addiagnosis-synthetic-demo"


@pytest.mark.parametrize("variant", ["coarse", "inverted"])
def test_quality_verdicts_are_in_sight(app, variant):
    """A scan too coarse for the model (every second voxel in two axes: yellow, "check") and a scan that is no T1
    (contrast inverted: red, "not interpretable", no class named as the diagnosis), on the panel and in the
    results table. The reasons are the quality control's own words."""
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    example = w._parameterNode.inputVolume
    from addiagnosis.mrml.nodes import node_ijk_to_ras

    arr, ijk_to_ras = slicer.util.arrayFromVolume(example).astype(np.float32), node_ijk_to_ras(example)  # KJI
    if variant == "coarse":
        arr, ijk_to_ras = np.ascontiguousarray(arr[:, ::2, ::2]), ijk_to_ras @ np.diag([2.0, 2.0, 1.0, 1.0])
    else:
        arr = np.where(arr > 0.05 * arr.max(), arr.max() - arr, 0).astype(np.float32)
    node = slicer.util.addVolumeFromArray(arr, ijkToRAS=ijk_to_ras, name=f"example {variant}")
    w._parameterNode.inputVolume = node
    try:
        result = _diagnose(w)
        label = w.ui.verdictLabel
        reasons = "; ".join(r["detail"] for r in result.qc["reasons"] if r["verdict"] != "pass")
        assert label.visible and "\n" not in label.text
        if variant == "coarse":
            assert result.qc["verdict"] == "warn" and label.text == "check: " + reasons and "resolution" in reasons
            assert "#fff3b0" in label.styleSheet and w.ui.predictedLabel.text.startswith(result.predicted)
        else:
            assert result.qc["verdict"] == "fail" and label.text == "not interpretable: " + reasons
            assert "contrast" in reasons
            assert "#f8c5c5" in label.styleSheet and w.ui.predictedLabel.text.startswith("No diagnosis")
            assert w.ui.probabilitiesLabel.styleSheet == "color: gray;"
            plot_view = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
            chart = slicer.mrmlScene.GetNodeByID(plot_view.GetPlotChartNodeID())
            series = slicer.mrmlScene.GetNodeByID(chart.GetPlotSeriesNodeID())
            assert series.GetColor() == pytest.approx((0.6, 0.6, 0.6))
        _table_has_quality(w, label.text)
    finally:
        w._parameterNode.inputVolume = example
        slicer.mrmlScene.RemoveNode(node)
    _diagnose(w)
    assert not w.ui.verdictLabel.visible and w.ui.probabilitiesLabel.styleSheet == ""


def _diagnose(w):
    assert w.ui.diagnoseButton.click()
    job = w._job
    event_loop(w, gil_held=True)
    assert job.error is None and not qt.RECORD["messages"], (job.error, qt.RECORD["messages"])
    return job.result


@pytest.mark.parametrize("python", ["missing", "not executable", "exits at once"])
def test_a_failed_start_is_one_clear_line_and_leaves_nothing(app, python, tmp_path, monkeypatch):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    module.ADDiagnosisLogic.stopWorker()
    path = tmp_path / "bin" / "PythonSlicer"
    if python != "missing":
        path.parent.mkdir()
        path.write_text("#!/bin/sh\necho 'python-real: cannot open shared object file' >&2\nexit 127\n")
        path.chmod(0o755 if python == "exits at once" else 0o644)
    monkeypatch.setattr(module.ADDiagnosisLogic, "workerPython", staticmethod(lambda: str(path)))
    before, files = scene_state(slicer.mrmlScene), leftovers()
    w.ui.diagnoseButton.click()
    if python == "exits at once":
        event_loop(w, gil_held=True)
    expected = {"missing": f"Slicer's Python could not be started: {path} does not exist",
                "not executable": f"Slicer's Python could not be started: {path} is not executable",
                "exits at once": "Slicer's Python started but the diagnosis worker did not (exit status 127): "
                                 "python-real: cannot open shared object file"}[python]
    assert [m["text"] for m in qt.RECORD["messages"]] == [expected]
    assert w.ui.statusLabel.text.endswith(expected) and "\n" not in w.ui.statusLabel.text
    assert w._job is None and w.ui.diagnoseButton.text == "Diagnose"
    assert scene_state(slicer.mrmlScene) == before and leftovers() == files  # no job folder
    assert not module.ADDiagnosisLogic.workerRunning()


def test_a_killed_slicer_leaves_no_worker(app):
    """Slicer crashes (SIGKILL: no cleanup runs): the worker's watchdog ends it."""
    with slicer_with_a_worker(shutil.which("PythonSlicer")) as (gui, group):
        assert len(group_processes(group)) == 2
        gui.kill()
        measured["parent_killed_to_no_worker_s"] = round(gone_within(group, limit=2.0), 3)


def test_an_idle_worker_leaves_and_slicer_exit_ends_it(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    module.ADDiagnosisLogic.stopWorker()
    settings = slicer.app.userSettings()
    settings.setValue(module.IDLE_SETTING, 2.0)
    try:
        _diagnose(w)
        group = module.ADDiagnosisLogic._process.group
        assert group_processes(group)
        t = time.perf_counter()
        while group_processes(group):
            assert time.perf_counter() - t < 5.0
            time.sleep(0.05)
        measured["idle_worker_rss_after_idle_mb"] = 0.0
        assert not module.ADDiagnosisLogic.workerRunning()
        _diagnose(w)  # a new worker starts on its own
    finally:
        settings.setValue(module.IDLE_SETTING, 600.0)
    group = module.ADDiagnosisLogic._process.group
    slicer.app.aboutToQuit.emit()  # File > Exit
    assert not module.ADDiagnosisLogic.workerRunning()
    gone_within(group)


def _bad_volume(slicer, array, name, cls="vtkMRMLScalarVolumeNode"):
    return slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([1.2, 1.0, 1.1, 1.0]), name=name,
                                          nodeClassName=cls)


@pytest.mark.parametrize("kind", ["constant", "zero", "nan", "label-values"])
def test_bad_scans_are_refused_before_anything_runs(app, kind):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    shape = (40, 44, 36)  # KJI
    rng = np.random.default_rng(0)
    array = {"constant": np.full(shape, 7.0, np.float32), "zero": np.zeros(shape, np.float32),
             "nan": rng.normal(100, 10, shape).astype(np.float32),
             "label-values": (np.indices(shape).sum(0) // 12 % 4).astype(np.int16)}[kind]  # flat regions
    if kind == "nan":
        array[3, 4, 5] = np.nan
    node = _bad_volume(slicer, array, f"bad {kind}")
    old = w._parameterNode.inputVolume
    w._parameterNode.inputVolume = node
    before = scene_state(slicer.mrmlScene)
    assert w.ui.diagnoseButton.click()
    assert w._job is None and w.ui.diagnoseButton.text == "Diagnose"
    msgs = qt.RECORD["messages"]
    assert len(msgs) == 1 and msgs[0]["icon"] == qt.QMessageBox.Critical
    line = msgs[0]["text"]
    assert "\n" not in line and line == w.ui.statusLabel.text
    assert {"constant": "same value", "zero": "same value", "nan": "NaN", "label-values": "label map"}[kind] in line
    assert scene_state(slicer.mrmlScene) == before
    w._parameterNode.inputVolume = old
    slicer.mrmlScene.RemoveNode(node)


def test_scene_close_and_reenter(app):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    slicer.mrmlScene.Clear(0)  # File > Close Scene
    assert not qt.RECORD["messages"]
    p = w._parameterNode
    assert p is not None and p.inputVolume is None and p.relevanceVolume is None
    assert p.model == "addiagnosis-synthetic-demo"
    assert not w.ui.diagnoseButton.enabled
    parent.exit()
    parent.enter()
    parent.exit()
    parent.enter()
    assert w._parameterNode is not None and not w.ui.diagnoseButton.enabled
    assert list(w._parameterNode._parameterGUIs) == [w._parameterNodeGuiTag]  # no stale GUI connections
    w.ui.loadExampleButton.click()
    assert w.ui.diagnoseButton.enabled


def test_module_self_test(app):
    """ADDiagnosisTest().runTest(): Slicer's Reload & Test, on the DEFAULT model and method too."""
    slicer, module, parent = app
    files = leftovers()
    t = time.perf_counter()
    slicer.selfTests["ADDiagnosis"]()
    measured["self_test_s"] = round(time.perf_counter() - t, 1)
    assert not [m for m in qt.RECORD["messages"] if m["icon"] == qt.QMessageBox.Critical]
    assert leftovers() == files  # no self-test package folder, no job folder
    assert "torch" not in sys.modules  # the self-test's package was written by another process


def test_reload_re_imports_the_engine(app, monkeypatch):
    """Slicer's Reload: the engine's modules are imported afresh (edits take effect), the worker is ended."""
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    module.ADDiagnosisLogic().warmUp(None)
    group = module.ADDiagnosisLogic._process.group
    reloaded = []
    monkeypatch.setattr(slicer.util, "reloadScriptedModule", reloaded.append)  # the widget swap itself is Qt's
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] == "addiagnosis"}
    try:
        w.onReload()
        assert reloaded == ["ADDiagnosis"] and not [n for n in sys.modules if n.split(".")[0] == "addiagnosis"]
        import addiagnosis.models.card

        assert addiagnosis.models.card is not saved["addiagnosis.models.card"]  # a fresh import
        assert not module.ADDiagnosisLogic.workerRunning()
        gone_within(group)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "addiagnosis"]:
            del sys.modules[name]
        sys.modules.update(saved)


# --- nothing outside Slicer's Python but torch: nilearn / nibabel unimportable ------------------------------
DEPS = os.environ.get("ADDIAGNOSIS_SLICER_DEPS") == "1"  # run once (one tag): they exercise the engine side


def _block(names):
    """Make ``names`` unimportable here (meta-path blocker) and in the worker (sitecustomize on PYTHONPATH)."""
    import importlib.util as iu

    spec = iu.spec_from_file_location("addiagnosis_test_blocker", HERE / "blocker" / "sitecustomize.py")
    blocker = iu.module_from_spec(spec)
    spec.loader.exec_module(blocker)
    os.environ["ADDIAGNOSIS_BLOCK"] = ",".join(names)
    path = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(HERE / "blocker") not in path:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE / "blocker"), *[p for p in path if p]])
    blocker.install(names)
    return blocker


@pytest.mark.skipif(not DEPS, reason="run for one tag only")
@pytest.mark.parametrize("missing", ["nilearn", "nibabel"])
def test_diagnose_without(app, missing):
    slicer, module, parent = app
    w = parent.widgetRepresentation()
    parent.enter()
    if w._parameterNode.inputVolume is None:  # (the self-test before closed the scene)
        w.ui.loadExampleButton.click()
    module.ADDiagnosisLogic.stopWorker()  # the next worker starts with the package made unimportable
    blocker = _block([missing])
    try:
        with pytest.raises(ImportError):
            __import__(missing)
        assert w.ui.diagnoseButton.click()
        event_loop(w, gil_held=True)
        assert not qt.RECORD["messages"], qt.RECORD["messages"]  # nothing to ask, nothing failed
        _relevance_checks(slicer, w)
        assert w.ui.predictedLabel.text.startswith("AD")
    finally:
        blocker.install([])
        os.environ["ADDIAGNOSIS_BLOCK"] = ""
        module.ADDiagnosisLogic.stopWorker()


@pytest.mark.skipif(not DEPS, reason="run for one tag only")
def test_a_package_without_its_template_asks_once_for_nilearn(app, tmp_path, monkeypatch):
    slicer, module, parent = app
    bundled = slicer_app.ROOT / "ADDiagnosis" / "Resources" / "Models" / "addiagnosis-synthetic-demo"
    pkg = tmp_path / "models" / "demo-no-template"
    shutil.copytree(bundled, pkg)  # every file the package carries (weights, OOD model, ...) but its template
    card = json.loads((bundled / "card.json").read_text())
    card["name"] = "demo-no-template"
    card["default"] = False
    (pkg / card["preprocessing"].pop("template_assets")["file"]).unlink()
    (pkg / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("ADDIAGNOSIS_MODEL_PATH", str(tmp_path / "models"))
    blocker = _block(["nilearn"])
    installed = []

    def pip_install(requirements):  # what slicer.util.pip_install would do: afterwards nilearn imports
        installed.append(requirements)
        blocker.install([])
        os.environ["ADDIAGNOSIS_BLOCK"] = ""

    try:
        # without nilearn the worker cannot make this package's template: one line, nothing pushed
        node = parent.widgetRepresentation()._parameterNode.inputVolume
        from addiagnosis.mrml.nodes import volume_from_node
        from addiagnosis.worker.client import WorkerJob

        job = WorkerJob(volume_from_node(node), "demo-no-template", "auto")
        while not job.poll():
            time.sleep(0.1)
        assert job.result is None and "nilearn" in str(job.error) and "\n" not in str(job.error)
        # the module asks first, once; declining leaves everything as it was
        monkeypatch.setattr(slicer.util, "pip_install", pip_install)
        logic = module.ADDiagnosisLogic()
        qt.ANSWERS["messageBox"][:] = [qt.QMessageBox.Cancel]
        with pytest.raises(RuntimeError, match="nilearn"):
            logic.ensureDependencies(model="demo-no-template")
        assert len(qt.RECORD["messages"]) == 1 and not installed
        qt.RECORD["messages"].clear()
        logic.ensureDependencies(model="demo-no-template")  # accepted (Ok): installed
        logic.ensureDependencies(model="demo-no-template")  # not asked again
        assert len(qt.RECORD["messages"]) == 1 and "nilearn" in qt.RECORD["messages"][0]["text"]
        assert installed == [["nilearn>=0.10"]]
    finally:
        blocker.install([])
        os.environ["ADDIAGNOSIS_BLOCK"] = ""
