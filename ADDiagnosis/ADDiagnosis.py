"""ADDiagnosis: explainable Alzheimer's-disease classification of brain MRI inside 3D Slicer.

Thin glue (Slicer's scripted module template): every step runs in the ``addiagnosis`` engine package in
``Logic/`` (the same code as the command line and the web app): ``addiagnosis.engine`` diagnoses a
``Volume``, ``addiagnosis.mrml.scene`` turns volume nodes into Volumes and pushes the results into the scene.

Research use only: not a medical device.
"""

import logging
import os
import shutil
import sys
import time
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# The engine package, one import name everywhere: ``addiagnosis`` (this is the one place that maps it).
LOGIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Logic")
if LOGIC_DIR not in sys.path:
    sys.path.insert(0, LOGIC_DIR)

# All torch-free: Slicer's GUI process never imports torch (the worker process runs it).
from addiagnosis import RESEARCH_USE  # noqa: E402
from addiagnosis.io.checks import check_volume  # noqa: E402 - the one input check, before anything runs
from addiagnosis.models import card as _card  # noqa: E402 - names, methods, card text
from addiagnosis.models import discovery as _discovery  # noqa: E402 - which packages are installed
from addiagnosis.mrml import atlas as _atlas  # noqa: E402 - the atlas as a label map: region names under the cursor
from addiagnosis.mrml import clusters as _clusters  # noqa: E402 - cluster table; a row jumps the views to its peak
from addiagnosis.mrml import compare as _compare  # noqa: E402 - two maps side by side, linked slices
from addiagnosis.mrml import nodes as _nodes  # noqa: E402 - volume node -> Volume
from addiagnosis.mrml import regions as _regions  # noqa: E402 - relevance per label / segment
from addiagnosis.mrml import scene as _scene  # noqa: E402 - result -> nodes
from addiagnosis.prep import atlas as _atlasData  # noqa: E402 - is the atlas installed (torch-free)
from addiagnosis.prep import qc as _quality  # noqa: E402 - the verdict a result is shown with (torch-free)
from addiagnosis.worker import client as _client  # noqa: E402 - the long-lived worker process and its jobs

METHODS = list(_card.METHOD_CHOICES)  # "auto": the card's recommended method (lrp-reference-alpha1.25beta0.25, bundled)
TORCH_REQUIREMENT = ">=2.1"
# Asked for (once, with a confirmation) only where missing; the worker reads voxels from .npy, not files, so nibabel
# is not needed inside Slicer. Never numpy/SimpleITK/torch from PyPI (torch comes through PyTorchUtils).
PIP_PACKAGES = {"scipy": "scipy>=1.10"}
# Packages whose template preprocessing does not carry its own template assets need nilearn (which ships MNI152).
TEMPLATE_PACKAGE = {"nilearn": "nilearn>=0.10"}
POLL_MS = 50  # the GUI reads the worker's progress this often (non-blocking reads: a tick costs microseconds)
IDLE_SETTING = "ADDiagnosis/WorkerIdleSeconds"  # the worker leaves after this long unused (default 600 s)
ENGINE_PACKAGE = "addiagnosis"


#
# ADDiagnosis
#


class ADDiagnosis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AD Diagnosis")
        self.parent.categories = [_("Neuroimaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["ADDiagnosis developers"]
        self.parent.helpText = _(
            "<p><b>" + RESEARCH_USE + "</b></p>"
            "<p>Classifies a T1-weighted brain MRI into Alzheimer's-disease stages (CN, EMCI, MCI, LMCI, AD) "
            "with a 3D CNN and shows <i>why</i>: layer-wise relevance propagation (LRP) of the chosen class "
            "as an overlay in the slice views and a volume rendering in the 3D view, plus a table and bar "
            "chart of the class probabilities.</p>"
            "<p>Select a scan, press <b>Diagnose</b>. Models are packages (card + checksummed weights): the "
            "bundled one, or your own checkpoints via <i>Import checkpoint...</i>.</p>"
        )
        self.parent.acknowledgementText = _(
            "Builds on the open-source 'Alzheimer's disease diagnosis with explainable AI' seed project "
            "(3D CNN + LRP web app). LRP for Alzheimer's MRI: M. Boehle, F. Eitel, M. Weygandt, K. Ritter, "
            "'Layer-wise relevance propagation for explaining deep neural network decisions in MRI-based "
            "Alzheimer's disease classification', Front. Aging Neurosci. 11:194 (2019). LRP reference "
            "implementation: zennit. Rendering and scene code: 3D Slicer (slicer.org)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)
        slicer.app.connect("aboutToQuit()", ADDiagnosisLogic.stopWorker)  # no worker outlives Slicer


#
# Sample data
#


def exampleScans():
    """Example scans shipped in Resources/ (any .nii/.nii.gz/.nrrd outside Models/), sorted by path."""
    resources = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources")
    found = []
    for folder, dirs, files in os.walk(resources):
        dirs[:] = sorted(d for d in dirs if d not in ("Models", "UI", "Icons"))
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith((".nii.gz", ".nii", ".nrrd"))]
    return found


def registerSampleData():
    """Register the bundled example scan(s) in the Sample Data module, each with its SHA-256 checksum."""
    import hashlib

    import SampleData

    icon = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons", "ADDiagnosis.png")
    for path in exampleScans():
        with open(path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
        fileName = os.path.basename(path)
        name = fileName.split(".")[0]
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="ADDiagnosis",
            sampleName=name,
            thumbnailFileName=icon,
            uris=qt.QUrl.fromLocalFile(path).toString(),
            fileNames=fileName,
            nodeNames=name,
            checksums=f"SHA256:{sha}",
            loadFileType="VolumeFile",
        )


def _installed(module):
    """Whether ``module`` can be imported here, found without importing it (torch stays out of the GUI)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class Verdict:
    """How far to trust a result: ``level`` "pass", "warn" (yellow: check it) or "fail" (red: not interpretable)."""

    COLORS = {"warn": "background-color: #fff3b0; color: #5c4400;",
              "fail": "background-color: #f8c5c5; color: #7a0000; font-weight: bold;"}

    def __init__(self, level, reasons):
        self.level, self.reasons = level, list(reasons)

    @classmethod
    def of(cls, result):
        """From the result's quality control (``qc``: its verdict and the checks that did not pass), or, for a
        result without one, its warnings (the registration's: did not converge, poor correlation)."""
        return cls(*_quality.verdict_reasons(getattr(result, "qc", None), getattr(result, "warnings", None)))

    @property
    def text(self):
        """One line: "" (pass), "check: <reasons>" or "not interpretable: <reasons>"."""
        if self.level == "pass":
            return ""
        head = _("not interpretable: ") if self.level == "fail" else _("check: ")
        return head + ("; ".join(self.reasons) or _("quality control flagged this result"))


#
# Parameters
#


@parameterNodeWrapper
class ADDiagnosisParameterNode:
    """Everything the module needs to run and show a diagnosis (saved with the scene)."""

    # Node parameters are Optional: the wrapper writes every default when it creates the node, and only
    # Optional can hold None (a Union of node types without None raises TypeError there).
    inputVolume: Optional[vtkMRMLScalarVolumeNode]  # noqa: UP007, UP045 - evaluated at run time on Python 3.9
    model: str = ""
    method: Annotated[str, Choice(METHODS)] = "auto"
    targetClass: str = ""
    device: Annotated[str, Choice(["cpu", "cuda"])] = "cpu"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    topPercent: Annotated[float, WithinRange(0.1, 100.0)] = 5.0
    regions: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]]  # noqa: UP007, UP045
    relevanceVolume: Optional[vtkMRMLScalarVolumeNode]  # noqa: UP007, UP045
    probabilityTable: Optional[vtkMRMLTableNode]  # noqa: UP007, UP045
    regionTable: Optional[vtkMRMLTableNode]  # noqa: UP007, UP045
    keepMaps: bool = True  # a Diagnose with another target / method keeps the map it replaces (for Compare)
    compareDifference: bool = False  # Compare also shows B - A


#
# Widget
#


class ADDiagnosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    PREDICTED = "(predicted class)"

    def __init__(self, parent=None, logic=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._startedAt = time.monotonic()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._poll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ADDiagnosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.logic or ADDiagnosisLogic()

        self.ui.researchUseLabel.text = RESEARCH_USE
        self.ui.progressBar.visible = False
        self.ui.verdictLabel.visible = False
        self._fillModels()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.diagnoseButton.connect("clicked(bool)", self.onDiagnoseButton)
        self.ui.importButton.connect("clicked(bool)", self.onImportButton)
        self.ui.loadExampleButton.connect("clicked(bool)", self.onLoadExample)
        self.ui.loadExampleButton.enabled = bool(exampleScans())
        self.ui.modelSelector.connect("currentIndexChanged(int)", self._onModelChanged)
        self.ui.targetSelector.connect("currentIndexChanged(int)", self._onTargetChanged)
        self.ui.opacitySlider.connect("valueChanged(double)", self._onOpacity)
        self.ui.thresholdSlider.connect("valueChanged(double)", self._onThreshold)
        self.ui.regionsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onRegions)
        self.ui.clusterSelector.connect("currentIndexChanged(int)", self._onCluster)
        self._clusterTable = None
        self._setupCompare()
        self.initializeParameterNode()

    def _setupCompare(self):
        """The Compare section: map B, a run made for comparison, the compare layout and the way back."""
        self.ui.compareResearchUseLabel.text = RESEARCH_USE
        self.ui.compareMethodSelector.addItems(METHODS)
        self.ui.compareSelector.connect("currentIndexChanged(int)", self._checkCanCompare)
        self.ui.compareCollapsibleButton.connect("contentsCollapsed(bool)", lambda collapsed: self._refreshMaps())
        self.ui.compareRunButton.connect("clicked(bool)", self.onCompareRun)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.leaveCompareButton.connect("clicked(bool)", self.onLeaveCompare)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self._refreshMaps)

    def cleanup(self):
        self._cancel()
        ADDiagnosisLogic.stopWorker()
        self._disconnectParameterNode()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self._warmUp()

    def onReload(self):
        """Slicer's Reload: also re-import the engine (``addiagnosis.*``), so that edits to it take effect."""
        self._cancel()
        ADDiagnosisLogic.stopWorker()
        for name in [n for n in sys.modules if n == ENGINE_PACKAGE or n.startswith(ENGINE_PACKAGE + ".")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def _warmUp(self):
        """Start the worker (torch, the selected model) in the background, so the first Diagnose does not wait."""
        p = self._parameterNode
        if p is None or not p.model or self._job is not None:
            return
        try:
            self.logic.warmUp(p.model, p.method, p.device)
        except Exception as exc:  # Diagnose will report it, in one line, if it still fails then
            logging.info(f"ADDiagnosis: the worker was not started in advance ({exc})")

    def exit(self):
        self._disconnectParameterNode()

    def _disconnectParameterNode(self):
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self._cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            guis = getattr(self._parameterNode, "_parameterGUIs", None)
            if self._parameterNodeGuiTag is None and guis:  # Slicer 5.8's connectGui drops its tag (5.10 returns
                self._parameterNodeGuiTag = max(guis)  # it): without it disconnectGui leaves stale connections
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._syncManualParameters()
            self._checkCanApply()

    def _syncManualParameters(self):
        """model / targetClass: select the saved ones if still available, else save what is shown.

        Their choices are only known at run time (installed models, the model's classes) and connectGui binds a
        QComboBox only to a fixed Choice, so the widget keeps these two in sync itself."""
        p = self._parameterNode
        if p.model and self.ui.modelSelector.findText(p.model) >= 0:
            self.ui.modelSelector.setCurrentText(p.model)
        else:
            p.model = self.ui.modelSelector.currentText
        self._onModelChanged()
        if p.targetClass and self.ui.targetSelector.findText(p.targetClass) >= 0:
            self.ui.targetSelector.setCurrentText(p.targetClass)

    def _checkCanApply(self, caller=None, event=None):
        self._refreshMaps()
        if self._job is not None:
            return
        ok = bool(self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.model)
        self.ui.diagnoseButton.enabled = ok
        self.ui.diagnoseButton.toolTip = _("Diagnose the selected scan") if ok else _(
            "Select an input scan and a model")

    # --- models -------------------------------------------------------------------------------
    def _fillModels(self):
        packages = self.logic.listModels()
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for pkg in packages:
            self.ui.modelSelector.addItem(pkg["name"])
            self.ui.modelSelector.setItemData(self.ui.modelSelector.count - 1, pkg["card_text"], qt.Qt.ToolTipRole)
        self.ui.modelSelector.blockSignals(False)
        if not packages:
            self.ui.modelCardLabel.text = _("No model package found: use 'Import checkpoint...'.")
        self._onModelChanged()

    def _onModelChanged(self, index=None):
        name = self.ui.modelSelector.currentText
        if self._parameterNode and self._parameterNode.model != name:
            self._parameterNode.model = name
        card = self.logic.modelCard(name) if name else None
        if name and ADDiagnosisLogic.workerRunning():
            self._warmUp()  # load the newly chosen model ahead of the next Diagnose
        self.ui.targetSelector.blockSignals(True)
        self.ui.targetSelector.clear()
        self.ui.targetSelector.addItem(self.PREDICTED)
        if card:
            self.ui.targetSelector.addItems(card["class_names"])
            self.ui.modelCardLabel.text = self.logic.cardText(card)
        self.ui.targetSelector.blockSignals(False)
        self.ui.compareTargetSelector.clear()
        self.ui.compareTargetSelector.addItems([self.PREDICTED, *(card["class_names"] if card else [])])
        self._onTargetChanged()

    def _onTargetChanged(self, index=None):
        text = self.ui.targetSelector.currentText
        target = "" if text in ("", self.PREDICTED) else text
        if self._parameterNode and self._parameterNode.targetClass != target:
            self._parameterNode.targetClass = target

    def onImportButton(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Import a PyTorch state_dict"), "",
                                              "PyTorch checkpoint (*.pth *.pt)")
        if not path:
            return
        name = qt.QInputDialog.getText(self.parent, _("Model name"), _("Name of the new model package:"))
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("Import failed."), waitCursor=True):
            self.logic.importCheckpoint(path, name)
            self._fillModels()
            self.ui.modelSelector.setCurrentText(name)

    def onLoadExample(self):
        with slicer.util.tryWithErrorDisplay(_("Could not load the example scan."), waitCursor=True):
            import SampleData

            name = os.path.basename(exampleScans()[0]).split(".")[0]
            node = SampleData.SampleDataLogic().downloadSample(name)
            if node:
                self._parameterNode.inputVolume = node

    # --- run / cancel (non-blocking) -------------------------------------------------------------
    def onDiagnoseButton(self):
        if self._job is not None:
            self._cancel()
            return
        p = self._parameterNode
        self._startJob(p.method, p.targetClass or None)

    def _startJob(self, method, target, forComparison=False):
        """Start a diagnosis of the input scan on the worker; ``forComparison``: its map becomes map B."""
        p = self._parameterNode
        try:  # the scan is checked here, in the main thread, before anything runs: one line, scene untouched
            self.logic.ensureDependencies(model=p.model)
            self._job = self.logic.start(p.inputVolume, p.model, method, target, p.device)
        except Exception as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            self.ui.statusLabel.text = message
            slicer.util.errorDisplay(message, windowTitle=_("ADDiagnosis"))
            return
        self._job.forComparison = forComparison
        self._startedAt = time.monotonic()
        self._setRunning(True)
        self._timer.start()

    def _cancel(self):
        """Stop a running diagnosis now: the worker's whole process tree ends; the scene was never touched."""
        if self._job is not None:
            self._job.cancel()
            self._poll()

    def _setRunning(self, running):
        self.ui.diagnoseButton.text = _("Cancel") if running else _("Diagnose")
        self.ui.diagnoseButton.enabled = True
        self._checkCanCompare()
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("starting...")

    def _poll(self):
        job = self._job
        if job is None:
            self._timer.stop()
            return
        job.poll()  # reads what the worker wrote so far; never waits
        stage, fraction = job.progress
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = stage
        if not job.done:
            return
        self._timer.stop()
        self._job = None
        self._setRunning(False)
        self._checkCanApply()
        if job.cancelled:
            self.ui.statusLabel.text = _("cancelled; the scene was not changed")
            return
        if job.error is not None:
            message = " ".join(str(job.error).split())
            self.ui.statusLabel.text = _("failed: ") + message
            slicer.util.errorDisplay(message, windowTitle=_("ADDiagnosis"), detailedText=job.details)
            return
        with slicer.util.tryWithErrorDisplay(_("Could not show the results."), waitCursor=True):
            if getattr(job, "forComparison", False):
                self._showComparisonMap(self.logic.keepResult(job, self._parameterNode.topPercent))
                return
            outputs = self.logic.show(job, self._parameterNode, keepPrevious=self._parameterNode.keepMaps)
            self._showResult(job.result, outputs)

    def _showResult(self, result, outputs):
        verdict = Verdict.of(result)
        lines = [f"{c}: {100 * result.probabilities[c]:.1f} %" for c in result.class_names]
        if verdict.level == "fail":  # not shown like a good result: no class named as the diagnosis
            self.ui.predictedLabel.text = _("No diagnosis (not interpretable); the model's output was {c}").format(
                c=result.predicted)
            self.ui.probabilitiesLabel.text = _("(for reference only)") + "\n" + "\n".join(lines)
            self.ui.probabilitiesLabel.styleSheet = "color: gray;"
        else:
            self.ui.predictedLabel.text = f"{result.predicted}  (explained: {result.target}, {result.method})"
            if getattr(result, "prediction_set", None):  # the card's conformal set: how close the stages are
                coverage = getattr(result, "prediction_set_coverage", None) or 0.9
                lines.append(_("{p:.0f} % set: {s}").format(p=100 * coverage, s=", ".join(result.prediction_set)))
            self.ui.probabilitiesLabel.text = "\n".join(lines)
            self.ui.probabilitiesLabel.styleSheet = ""
        if getattr(result, "model_notice", None):
            self.ui.predictedLabel.text += "\n" + result.model_notice
        # registration / quality-control verdicts: a coloured line in sight, never only in the log
        self.ui.verdictLabel.text = verdict.text
        self.ui.verdictLabel.styleSheet = Verdict.COLORS.get(verdict.level, "")
        self.ui.verdictLabel.visible = verdict.level != "pass"
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.statusLabel.text = _("done in {s:.1f} s").format(s=time.monotonic() - self._startedAt)
        self._fillClusters(getattr(outputs, "clusters", None))
        self.ui.compareSummaryLabel.text = ""  # the figures were of the map this result replaced

    def _onOpacity(self, value):
        rel = self._parameterNode.relevanceVolume if self._parameterNode else None
        if rel:
            self.logic.setOpacity(rel, value)

    def _onRegions(self, node):
        p = self._parameterNode
        if node is None or p is None or not p.relevanceVolume or not p.inputVolume or self._job is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not summarise relevance per region."), waitCursor=True):
            p.regionTable = self.logic.regionSummary(p.inputVolume, node)

    def _onThreshold(self, value):
        rel = self._parameterNode.relevanceVolume if self._parameterNode else None
        if rel:
            self.logic.setTopPercent(rel, value)

    def _fillClusters(self, table):
        """One item per row of the cluster table (largest share first) after a placeholder item."""
        self._clusterTable = table
        selector = self.ui.clusterSelector
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        rows = table.GetTable().GetNumberOfRows() if table is not None else 0
        selector.addItem(_("(choose a cluster to go to its peak)") if rows else _("(no clusters)"))
        for row in range(rows):
            selector.addItem(_clusters.row_text(table, row))
        selector.blockSignals(wasBlocked)
        selector.enabled = rows > 0

    def _onCluster(self, index):
        if self._clusterTable is not None and index >= 1:
            self.logic.jumpToCluster(self._clusterTable, index - 1)

    # --- compare -------------------------------------------------------------------------------------
    def _refreshMaps(self, caller=None, event=None, select=None):
        """Map A (the current result) and the choices of map B (every other map in the scene)."""
        if not hasattr(self, "ui"):
            return
        p = self._parameterNode
        mapA = p.relevanceVolume if p else None
        self.ui.compareALabel.text = _compare.describe(mapA) if mapA else _("(diagnose a scan first)")
        others = [m for m in self.logic.comparableMaps() if m is not mapA]
        selector = self.ui.compareSelector
        chosen = select.GetID() if select is not None else self._chosenId()
        ids = [m.GetID() for m in others]
        if ids != [selector.itemData(i) for i in range(selector.count)]:
            wasBlocked = selector.blockSignals(True)
            selector.clear()
            for node in others:
                selector.addItem(_compare.describe(node), node.GetID())
            selector.blockSignals(wasBlocked)
        if chosen in ids:
            selector.setCurrentIndex(ids.index(chosen))
        self._checkCanCompare()

    def _chosenId(self):
        index = self.ui.compareSelector.currentIndex
        return self.ui.compareSelector.itemData(index) if index >= 0 else None

    def _mapB(self):
        nodeId = self._chosenId()
        return slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None

    def _checkCanCompare(self, index=None):
        p = self._parameterNode
        mapA, mapB, running = (p.relevanceVolume if p else None), self._mapB(), self._job is not None
        ok = bool(mapA and mapB and not running)
        self.ui.compareButton.enabled = ok
        if ok:
            self.ui.compareButton.toolTip = _("Show A (left) and B (right) side by side, slices linked")
        elif running:
            self.ui.compareButton.toolTip = _("Wait for the running diagnosis to finish")
        elif not mapA:
            self.ui.compareButton.toolTip = _("Diagnose a scan first: its map is A; a second map is needed as B")
        else:
            self.ui.compareButton.toolTip = _(
                "Only one map: diagnose again with another target class or method (the previous map is kept), "
                "diagnose another scan, or use 'Run for comparison' to have a map B")
        self.ui.compareRunButton.enabled = bool(p and p.inputVolume and mapA and not running)
        self.ui.leaveCompareButton.enabled = self.logic.inCompare()

    def onCompareRun(self):
        """Diagnose the input again with the chosen target and method; its map becomes B (A stays)."""
        text = self.ui.compareTargetSelector.currentText
        self._startJob(self.ui.compareMethodSelector.currentText, None if text in ("", self.PREDICTED) else text,
                       forComparison=True)

    def _showComparisonMap(self, node):
        self._refreshMaps(select=node)
        self.ui.statusLabel.text = _("map B ready in {s:.1f} s: {m}").format(
            s=time.monotonic() - self._startedAt, m=_compare.describe(node))

    def onCompareButton(self):
        p = self._parameterNode
        try:  # the figures come first: on an error nothing in the scene has changed
            shown = self.logic.compareMaps(p.relevanceVolume, self._mapB(), p.overlayOpacity, p.compareDifference,
                                           p.topPercent)
        except Exception as exc:
            self.ui.compareSummaryLabel.text = _("Could not compare: ") + (" ".join(str(exc).split())
                                                                           or type(exc).__name__)
            return
        self.ui.compareSummaryLabel.text = _compare.summary_text(shown.summary)
        self._checkCanCompare()

    def onLeaveCompare(self):
        self.logic.leaveCompare()
        self._checkCanCompare()


#
# Logic
#


class ADDiagnosisLogic(ScriptedLoadableModuleLogic):
    """The module's computation, as in Slicer's template: ``process()`` blocks and works without the GUI (scripts,
    the self-test); the widget calls ``start()`` and ``show()`` so that it never waits.

    The diagnosis runs in ONE long-lived worker process per Slicer session, shared by every instance of this class:
    started on the first Diagnose (or when the module is entered), it keeps torch and the loaded model; it ends on
    Cancel and on the time limit (the next Diagnose starts a new one), with the module's cleanup, with Slicer, when
    Slicer dies (its watchdog) and after an idle time (setting ``ADDiagnosis/WorkerIdleSeconds``, default 600 s)."""

    _process = None  # the shared worker (addiagnosis.worker.client.WorkerProcess)
    _dependenciesChecked = False
    _modelsChecked = set()
    timeLimit = _client.TIME_LIMIT_S  # seconds a diagnosis may take before it is stopped

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ADDiagnosisParameterNode(super().getParameterNode())

    # --- dependencies: asked once, never at import time ------------------------------------------
    @classmethod
    def ensureDependencies(cls, askConfirmation=True, model=None):
        """torch (through PyTorchUtils) and what the model needs, each asked for once with a confirmation.

        Only looks for the packages (no import of torch into Slicer's GUI process: the worker runs it)."""
        cls._ensureModelNeeds(model, askConfirmation)
        if cls._dependenciesChecked:
            return
        if not _installed("torch"):
            cls._installTorch(askConfirmation)
        cls._pipInstall(PIP_PACKAGES, askConfirmation)
        cls._dependenciesChecked = True

    @classmethod
    def _installTorch(cls, askConfirmation):
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("ADDiagnosis needs PyTorch: install the 'PyTorch' extension from the "
                               "Extensions Manager, restart Slicer and try again") from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("ADDiagnosis needs PyTorch, which is not installed yet. Install it now "
                  "(a large download, several minutes)?")):
            raise RuntimeError("PyTorch is required; installation was declined")
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise RuntimeError("PyTorch could not be installed (see the Python console)")
        cls.stopWorker()  # a worker started before the installation would not see it

    @classmethod
    def _ensureModelNeeds(cls, model, askConfirmation):
        """A template-preprocessed package without its own template assets needs nilearn: ask once."""
        if model in cls._modelsChecked:
            return
        card = cls._cardOnDisk(model)
        prep = (card or {}).get("preprocessing") or {}
        if prep.get("kind") == "template" and not prep.get("template_assets"):
            cls._pipInstall(TEMPLATE_PACKAGE, askConfirmation)
        cls._modelsChecked.add(model)

    @classmethod
    def _pipInstall(cls, packages, askConfirmation):
        import importlib

        missing = [req for module, req in packages.items() if not _installed(module)]
        if not missing:
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("ADDiagnosis needs these Python packages: {p}. Install them now?").format(p=", ".join(missing))):
            raise RuntimeError(f"required Python packages are missing: {', '.join(missing)}")
        slicer.util.pip_install(missing)
        importlib.invalidate_caches()
        cls.stopWorker()  # the next Diagnose starts a worker that sees the new packages

    @staticmethod
    def _cardOnDisk(model):
        """The card of ``model`` (name, package folder or None: the default), or None if there is none."""
        try:
            return _discovery.find_package(model or None).card
        except Exception:
            return None

    # --- models (torch-free: nothing heavy is imported into Slicer's GUI process) ----------------------------
    def listModels(self):
        return [{"name": pkg.name, "card_text": self.cardText(pkg.card)} for pkg in _discovery.list_packages()]

    def modelCard(self, name):
        return self._cardOnDisk(name) if name else None

    @staticmethod
    def cardText(card):
        return _card.card_text(card)

    def importCheckpoint(self, path, name):
        from addiagnosis.models.package import import_checkpoint  # torch: only when a checkpoint is imported

        return import_checkpoint(path, name, preset="seed")

    @staticmethod
    def modelPath(model):
        """The package folder the worker loads: a ModelPackage's path, a name or folder resolved here (so the
        worker needs no search path of its own), or None (the default) where nothing matches."""
        if hasattr(model, "path"):
            return str(model.path)
        try:
            return str(_discovery.find_package(model or None).path)
        except Exception:  # the worker reports the reason in one line
            return model or None

    # --- the worker process -------------------------------------------------------------------------------
    @staticmethod
    def workerPython():
        """The interpreter for the worker process: PythonSlicer inside Slicer (Slicer's own Python)."""
        return shutil.which("PythonSlicer") or sys.executable or None

    @staticmethod
    def idleSeconds():
        try:
            return float(slicer.app.userSettings().value(IDLE_SETTING, _client.IDLE_S))
        except (TypeError, ValueError):
            return _client.IDLE_S

    @classmethod
    def worker(cls):
        """The running worker, started now if there is none (or it left for being idle, or was stopped)."""
        if cls._process is not None:
            cls._process.read()  # drain its pipes while no job polls them; notices a worker that left (Bye)
        if cls._process is None or not cls._process.usable():
            cls.stopWorker()
            cls._process = _client.WorkerProcess(cls.workerPython(), idle_s=cls.idleSeconds())
        return cls._process

    @classmethod
    def workerRunning(cls):
        return cls._process is not None and cls._process.usable()

    @classmethod
    def stopWorker(cls):
        """End the worker's whole process tree (module cleanup, Slicer's exit, Reload, new packages)."""
        if cls._process is not None:
            cls._process.stop()
            cls._process = None

    def warmUp(self, model=None, method="auto", device="cpu"):
        """Start the worker and load ``model`` in the background (nothing when torch is not installed yet)."""
        if _installed("torch"):
            self.worker().load(self.modelPath(model), method, device)

    # --- running -----------------------------------------------------------------------------------
    def start(self, inputNode, model, method, target, device="cpu"):
        """Check the scan and give it to the worker; returns the job to poll. The scene is not touched.

        The voxels and IJK-to-RAS go to the worker exactly (.npy). The worker starts first: if Slicer's Python
        cannot be started, nothing is written."""
        volume = _nodes.volume_from_node(inputNode)
        check_volume(volume)  # the one input check (constant, NaN/Inf, 2D/4D, label maps): before anything runs
        job = _client.WorkerJob(volume, self.modelPath(model), method, target, device, worker=self.worker(),
                                time_limit=self.timeLimit)
        job.inputNode = inputNode
        return job

    def show(self, job, parameterNode=None, regionsNode=None, keepPrevious=False):
        """Push a finished job's result into the scene (main thread)."""
        return self.pushResults(job.inputNode, job.result, parameterNode, regionsNode, keepPrevious)

    def pushResults(self, inputNode, result, parameterNode=None, regionsNode=None, keepPrevious=False):
        """``keepPrevious``: the map this result replaces is kept for Compare when it explains another target or
        comes from another method or model (a kept map this result repeats is dropped either way)."""
        options = _scene.PushOptions()
        if parameterNode:
            options = _scene.PushOptions(opacity=parameterNode.overlayOpacity, top_percent=parameterNode.topPercent)

        def push():
            return _scene.push_results(slicer.mrmlScene, inputNode, result, options,
                                       vr_logic=slicer.modules.volumerendering.logic())

        outputs, _kept = _compare.keep_map(slicer.mrmlScene, inputNode, result, push, options.top_percent,
                                           keep=keepPrevious)
        _compare.remember_registration(outputs.relevance, result.preprocessing)  # to compare maps of two scans
        self.markQuality(outputs, Verdict.of(result))
        regionsNode = regionsNode or (parameterNode.regions if parameterNode else None)
        outputs.regions = self.regionSummary(inputNode, regionsNode) if regionsNode else None
        outputs.atlas, outputs.clusters = self.showReading(inputNode, result)
        if parameterNode:
            parameterNode.relevanceVolume = outputs.relevance
            parameterNode.probabilityTable = outputs.table
            if outputs.regions is not None:
                parameterNode.regionTable = outputs.regions
        return outputs

    @staticmethod
    def markQuality(outputs, verdict):
        """The verdict in the results table (a "Quality" column) and, for a failed result, a grey bar chart."""
        table = outputs.table.GetTable()
        column = vtk.vtkStringArray()
        column.SetName("Quality")
        for _row in range(table.GetNumberOfRows()):
            column.InsertNextValue(verdict.text or "ok")
        table.AddColumn(column)
        outputs.table.SetColumnDescription("Quality", "registration and quality-control verdict of this result")
        outputs.table.Modified()
        if verdict.level == "fail":
            outputs.series.SetColor(0.6, 0.6, 0.6)

    def regionSummary(self, inputNode, regionsNode):
        """Relevance per segment / label (sum, mean, share of positive relevance) as a table node."""
        return _regions.region_summary(slicer.mrmlScene, inputNode, regionsNode)

    def showReading(self, inputNode, result):
        """The atlas (a label map whose colour table names the region under the cursor in the Data Probe, shown
        as outlines) when it is installed and the model registers to MNI, and the cluster table of ``result``.
        Returns (atlas nodes or None, cluster table node)."""
        atlasNodes = None
        if _atlasData.available() and _atlasData.mni_to_input(result.preprocessing) is not None:
            atlasNodes = _atlas.show_atlas(slicer.mrmlScene, inputNode, result)
            _atlas.show_as_outline(slicer.mrmlScene, atlasNodes.labels, opacity=0.35)
        return atlasNodes, _clusters.cluster_table(slicer.mrmlScene, inputNode, result)

    def jumpToCluster(self, clusterTable, row):
        """Every slice view through the peak of the cluster in ``row``; returns the peak (RAS mm)."""
        return _clusters.jump_to_cluster(slicer.mrmlScene, clusterTable, row)

    def compareLayout(self, inputA, inputB, opacity=_scene.DEFAULT_OPACITY):
        """The relevance maps of two diagnosed inputs side by side (A left, B right), slices linked; for a
        baseline and a follow-up, or two scans. Returns {view name: slice node}."""
        relA, relB = (_scene.node_ref(n, _scene.REF_RELEVANCE) for n in (inputA, inputB))
        if relA is None or relB is None:
            raise ValueError(_("Diagnose both scans first."))
        return _compare.compare_layout(slicer.mrmlScene, (inputA, relA), (inputB, relB), opacity)

    # --- compare: two maps side by side (addiagnosis.mrml.compare does the work) ------------------------
    @staticmethod
    def comparableMaps():
        """Every relevance map in the scene: the scans' current maps and the maps kept for comparison."""
        return _compare.maps_in_scene(slicer.mrmlScene)

    @staticmethod
    def keepResult(job, topPercent=_scene.DEFAULT_TOP_PERCENT):
        """A finished job's map as a kept map of its scan (the scan's current result is not touched)."""
        return _compare.keep_result(slicer.mrmlScene, job.inputNode, job.result, topPercent)

    @staticmethod
    def compareMaps(mapA, mapB, opacity=_scene.DEFAULT_OPACITY, difference=False,
                    topPercent=_scene.DEFAULT_TOP_PERCENT):
        """Maps A and B side by side in the compare layout (and B - A when ``difference``), slices linked, with
        the engine's figures (``.summary``). Raises a one-line error, the scene unchanged, when they cannot be
        compared."""
        return _compare.compare_nodes(slicer.mrmlScene, mapA, mapB, opacity, difference, topPercent)

    @staticmethod
    def leaveCompare():
        """Back to the layout shown before Compare."""
        return _compare.leave_compare(slicer.mrmlScene)

    @staticmethod
    def inCompare():
        return _compare.in_compare(slicer.mrmlScene)

    def process(self, inputNode, model=None, method="auto", target=None, device="cpu",
                parameterNode=None, regionsNode=None, timeout=None, keepPrevious=False):
        """Blocking: diagnose ``inputNode`` (in the worker process) and push the results into the scene.

        ``model``: a package name, folder or ModelPackage (None: the default). ``keepPrevious``: keep the map this
        result replaces for Compare (another target, method or model). Returns (result, outputs)."""
        start = time.time()
        self.ensureDependencies(model=self.modelPath(model))
        job = self.start(inputNode, model, method, target, device)
        if timeout is not None:
            job.time_limit = float(timeout)
        while not job.poll():
            time.sleep(0.02)
        if job.error is not None:
            raise RuntimeError(" ".join(str(job.error).split()))
        outputs = self.show(job, parameterNode, regionsNode, keepPrevious)
        logging.info(f"ADDiagnosis: {job.result.predicted} in {time.time() - start:.1f} s. {RESEARCH_USE}")
        return job.result, outputs

    def setOpacity(self, relevanceNode, opacity):
        _scene.set_overlay_opacity(slicer.mrmlScene, relevanceNode, opacity)

    def setTopPercent(self, relevanceNode, topPercent):
        _scene.set_top_percent(relevanceNode, topPercent)


#
# Test
#


class ADDiagnosisTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload & Test, or ``Slicer --python-code``): the same scenario as the pytest suite."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ADDiagnosis1()
        self.setUp()
        self.test_ADDiagnosisDefaultModel()

    # A random-weights package, written by Slicer's Python in its own process: torch stays out of the GUI's.
    TINY_PACKAGE = (
        "import json, sys\n"
        "import torch\n"
        "from addiagnosis.models.network import ClassificationModel3D\n"
        "from addiagnosis.models.package import write_package\n"
        "torch.manual_seed(0)\n"
        "model = ClassificationModel3D(input_shape=(80, 88, 80), n_classes=5).eval()\n"
        "write_package(sys.argv[1], model.state_dict(), json.loads(sys.argv[2]))\n")

    def _tinyPackage(self, folder):
        import json

        card = {"name": "selftest", "version": "0", "class_names": ["CN", "EMCI", "MCI", "LMCI", "AD"],
                "input_grid": {"shape": [80, 88, 80], "spacing": [2, 2, 2], "orientation": "RAS"},
                "preprocessing": {"kind": "physical"}, "intended_use": "self-test only",
                "training_data": "none (random weights)"}
        path = os.path.join(folder, "selftest")
        proc = slicer.util.launchConsoleProcess(  # hides the console window on Windows
            [ADDiagnosisLogic.workerPython(), "-c", self.TINY_PACKAGE, path, json.dumps(card)],
            useStartupEnvironment=False, updateEnvironment={"PYTHONPATH": os.pathsep.join(
                [LOGIC_DIR, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])})
        slicer.util.logProcessOutput(proc)  # waits; raises CalledProcessError if it failed
        return path

    def _scan(self):
        import numpy as np

        k, j, i = np.mgrid[0:100, 110:0:-1, 0:90].astype(np.float32)  # KJI, as arrayFromVolume
        head = ((i - 45) / 40) ** 2 + ((j - 55) / 50) ** 2 + ((k - 50) / 42) ** 2 < 1
        arr = np.where(head, 400 + 80 * np.sin(i / 7.0) * np.cos(k / 9.0), 0).astype(np.float32)
        c, s = np.cos(0.2), np.sin(0.2)  # oblique, anisotropic: the geometry must be kept exactly
        ijkToRas = np.array([[-1.5 * c, 1.2 * s, 0, 60], [-1.5 * s, -1.2 * c, 0, 70], [0, 0, 1.8, -80], [0, 0, 0, 1]])
        return slicer.util.addVolumeFromArray(arr, ijkToRAS=ijkToRas, name="selftest scan")

    def test_ADDiagnosis1(self):
        import tempfile

        self.delayDisplay("Starting the ADDiagnosis test")
        logic = ADDiagnosisLogic()
        logic.ensureDependencies(askConfirmation=False)
        folder = tempfile.mkdtemp(prefix="addiagnosis-selftest-")
        try:  # nothing left behind: the package folder goes when the test ends, passed or not
            self._checkTinyPackage(logic, self._tinyPackage(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("ADDiagnosis test passed. " + RESEARCH_USE)

    def _checkTinyPackage(self, logic, package):
        import numpy as np

        from addiagnosis.mrml.nodes import array_from_node, node_ijk_to_ras
        from addiagnosis.mrml.scene import table_probabilities

        inputNode = self._scan()
        result, outputs = logic.process(inputNode, package)
        rel = outputs.relevance
        self.assertEqual(rel.GetName(), "selftest scan relevance")
        np.testing.assert_allclose(node_ijk_to_ras(rel), node_ijk_to_ras(inputNode), atol=1e-9)
        np.testing.assert_array_equal(array_from_node(rel), result.relevance.array)
        probs = table_probabilities(outputs.table)
        self.assertAlmostEqual(sum(probs.values()), 1.0, places=5)
        for name, p in result.probabilities.items():
            self.assertAlmostEqual(probs[name], p, places=6)
        comp = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(comp.GetForegroundVolumeID(), rel.GetID())
        self.assertTrue(outputs.vr_display.GetVisibility())

        count = slicer.mrmlScene.GetNumberOfNodes()
        second, _ = logic.process(inputNode, package, method="lrp-epsilon", target="AD")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertEqual(second.worker["pid"], result.worker["pid"])  # the same warm worker
        self._checkCompare(logic, inputNode, package)

    def _checkCompare(self, logic, inputNode, package):
        """Another target keeps the map it replaces; Compare shows both side by side, slices linked; and back."""
        from addiagnosis.mrml.compare import RIGHT, kept_maps

        _, outputs = logic.process(inputNode, package, method="lrp-epsilon", target="CN", keepPrevious=True)
        (kept,) = kept_maps(inputNode)
        self.assertEqual(kept.GetAttribute("ADDiagnosis.target"), "AD")
        shown = logic.compareMaps(outputs.relevance, kept, difference=True)
        self.assertTrue(logic.inCompare())
        for name, shownMap in (("Red", outputs.relevance), (RIGHT[0], kept)):
            comp = slicer.mrmlScene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
            self.assertEqual(comp.GetForegroundVolumeID(), shownMap.GetID())
            self.assertTrue(comp.GetLinkedControl())
        self.assertIsNotNone(shown.difference)
        self.assertIn("correlation", shown.summary)
        logic.leaveCompare()
        self.assertFalse(logic.inCompare())

    def test_ADDiagnosisDefaultModel(self):
        """What a user gets on the first click: the bundled model, its recommended method, the example scan."""
        import numpy as np
        import SampleData

        from addiagnosis.mrml.nodes import array_from_node, node_ijk_to_ras
        from addiagnosis.mrml.scene import table_probabilities

        self.delayDisplay("ADDiagnosis: default model and method on the example scan")
        registerSampleData()
        name = os.path.basename(exampleScans()[0]).split(".")[0]
        inputNode = SampleData.SampleDataLogic().downloadSample(name)
        self.assertIsNotNone(inputNode)
        logic = ADDiagnosisLogic()
        result, outputs = logic.process(inputNode)  # default model, method "auto"
        self.assertEqual(result.model_name, "addiagnosis-synthetic-demo")
        self.assertEqual(result.method, "lrp-reference-alpha1.25beta0.25")  # the card's recommended method
        self.assertEqual(result.predicted, "AD")  # a held-out synthetic AD subject
        rel = outputs.relevance
        np.testing.assert_allclose(node_ijk_to_ras(rel), node_ijk_to_ras(inputNode), atol=1e-9)
        self.assertEqual(array_from_node(rel).shape, array_from_node(inputNode).shape)
        self.assertGreater(result.summary.get("positive_fraction_in_brain", 0.0), 0.9)
        probs = table_probabilities(outputs.table)
        self.assertAlmostEqual(sum(probs.values()), 1.0, places=5)
        self.delayDisplay("ADDiagnosis default-model test passed. " + RESEARCH_USE)
