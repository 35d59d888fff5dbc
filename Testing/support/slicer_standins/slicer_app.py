"""Stand-in for what desktop Slicer's application object provides, over REAL slicer-core MRML and logics.

``App``: ``slicer.app`` (settings, cursor, message-box parent, module manager, a layout manager whose slice
widgets hold real ``vtkMRMLSliceLogic`` objects, a core IO manager that loads through the real
``vtkSlicerVolumesLogic``). ``boot(tag)`` assembles the ``slicer`` package the way Slicer's Python sees it:
slicer-core's package (MRML, logics) with the tag's own Python files (util, ScriptedLoadableModule, i18n,
parameterNodeWrapper) put first on its package path, read from ../shared/slicer-python/<tag>/ in place.
"""

import importlib
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

import qt

ROOT = Path(__file__).resolve().parents[3]
SLICER_PYTHON = ROOT.parent / "shared" / "slicer-python"
MODULE_FILE = ROOT / "ADDiagnosis" / "ADDiagnosis.py"
SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


def available_tags():
    return sorted(p.name for p in SLICER_PYTHON.glob("v*") if (p / "slicer" / "util.py").is_file())


class _Signals(qt.QObject):
    SIGNALS = ("startupCompleted", "moduleAboutToBeUnloaded")


class SliceWidget:
    def __init__(self, logic):
        self._logic = logic

    def sliceLogic(self):
        return self._logic

    def mrmlSliceNode(self):
        return self._logic.GetSliceNode()


class LayoutManager:
    """Real slice logics (Red/Yellow/Green) attached to the application logic, as Slicer's layout manager."""

    def __init__(self, runtime):
        import slicer

        self.runtime = runtime
        self.slice_logics = {}
        for name, orientation in SLICE_VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(runtime.app_logic)
            runtime.app_logic.GetSliceLogics().AddItem(logic)
            logic.SetMRMLScene(runtime.scene)
            logic.AddSliceNode(name).SetOrientation(orientation)
            self.slice_logics[name] = logic
        self.layout = 0

    def sliceWidget(self, name):
        return SliceWidget(self.slice_logics[name]) if name in self.slice_logics else None

    def sliceViewNames(self):
        return list(self.slice_logics)

    def setLayout(self, layout):
        self.layout = layout


class IOManager:
    """Loads volume files through the real vtkSlicerVolumesLogic and shows them (as Add Data does)."""

    def __init__(self, runtime):
        self.runtime = runtime

    def fileType(self, fileName):
        return "VolumeFile" if str(fileName).endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mgz")) else "NoFile"

    def loadNodes(self, fileType, properties, loadedNodes=None):
        if fileType != "VolumeFile":
            return False
        path = str(properties["fileName"])
        name = properties.get("name") or os.path.basename(path).split(".")[0]
        node = self.runtime.volumes_logic.AddArchetypeVolume(path, name, 0)
        if node is None:
            return False
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        if properties.get("show", True):
            sel = self.runtime.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
            sel.SetActiveVolumeID(node.GetID())
            self.runtime.app_logic.PropagateVolumeSelection(0)
        return True

    def loadFile(self, path):
        return self.loadNodes(self.fileType(path), {"fileName": path})


class ModuleManager(qt.QObject):
    SIGNALS = ("moduleAboutToBeUnloaded",)


class App(qt.QObject):
    SIGNALS = ("startupCompleted", "aboutToQuit")

    def __init__(self, runtime):
        super().__init__()
        import slicer

        self.runtime = runtime
        self.applicationName = "3D Slicer"
        self.cachePath = tempfile.mkdtemp(prefix="slicer-cache-")
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-tmp-")
        self.documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(self.cachePath)
        runtime.scene.SetCacheManager(cache)
        self._layout = LayoutManager(runtime)
        self._io = IOManager(runtime)
        self._modules = ModuleManager()
        self.mainWindow = qt.QWidget()
        self.mainWindow.objectName = "qSlicerMainWindow"
        self.processed_events = 0

    def translate(self, context, text):  # no translation catalogue loaded: Slicer returns the source text
        return text

    def testingEnabled(self):
        return False

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=False)

    def topLevelWidgets(self):
        return [self.mainWindow]

    def setOverrideCursor(self, cursor):
        qt.RECORD["cursor"] += 1

    def restoreOverrideCursor(self):
        qt.RECORD["cursor"] -= 1

    def processEvents(self, *args):
        self.processed_events += 1

    def moduleManager(self):
        return self._modules

    def layoutManager(self):
        return self._layout

    def coreIOManager(self):
        return self._io

    def ioManager(self):
        return self._io

    def mrmlScene(self):
        return self.runtime.scene

    def applicationLogic(self):
        return self.runtime.app_logic

    def settings(self):
        return qt.QSettings()

    def userSettings(self):
        return qt.QSettings()

    def moduleDocumentationUrl(self, name):
        return self.documentationBaseUrl + name


class ModuleParent(qt.QObject):
    """What Slicer hands a scripted module (qSlicerScriptedLoadableModule): attributes + a widget factory."""

    def __init__(self, path, widgetClassName):
        super().__init__()
        self.path, self._widgetClassName, self._widget = str(path), widgetClassName, None
        self.title, self.categories, self.dependencies, self.contributors = "", [], [], []
        self.helpText = self.acknowledgementText = ""
        self.icon = None

    def widgetRepresentation(self):
        """The module panel: a qSlicerScriptedLoadableModuleWidget with a vertical layout, then setup()."""
        if self._widget is None:
            panel = qt.QWidget()
            panel.setLayout(qt.QVBoxLayout())
            panel.isEntered = False
            module = sys.modules[Path(self.path).stem]
            self._widget = getattr(module, self._widgetClassName)(panel)
            self._widget.setup()
        return self._widget

    def enter(self):
        w = self.widgetRepresentation()
        w.parent.isEntered = True
        w.enter()

    def exit(self):
        w = self.widgetRepresentation()
        w.exit()
        w.parent.isEntered = False


def boot(tag):
    """Assemble Slicer's Python for ``tag`` over slicer-core and return the ``slicer`` package."""
    tagdir = SLICER_PYTHON / tag
    if not (tagdir / "slicer" / "util.py").is_file():
        raise FileNotFoundError(tagdir)
    import slicer  # slicer-core's meta-package: MRML, logics (and its own util.py, replaced below)

    core_util = sys.modules.get("slicer.util")
    if core_util is not None:  # names slicer-core copied from its util.py onto `slicer`: desktop Slicer has none
        for name in dir(core_util):
            if not name.startswith("_") and getattr(slicer, name, None) is getattr(core_util, name):
                delattr(slicer, name)
        del sys.modules["slicer.util"]
    slicer.__path__.insert(0, str(tagdir / "slicer"))  # the tag's files come first in the package path
    sys.path.insert(0, str(tagdir / "modules"))  # SampleData.py, as Slicer's scripted modules folder

    import ctk  # noqa: F401  (stand-in)

    from addiagnosis.mrml.runtime import SlicerRuntime

    runtime = SlicerRuntime()
    layout = slicer.vtkMRMLLayoutNode()  # the application's singletons: layout and plot view
    layout.SetSingletonTag("vtkMRMLLayoutNode")
    layout.AddLayoutDescription(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView,  # what the layout manager adds
                                '<layout type="horizontal"><item><view class="vtkMRMLPlotViewNode" '
                                'singletontag="PlotView1"/></item></layout>')
    runtime.scene.AddNode(layout)
    plot_view = slicer.vtkMRMLPlotViewNode()
    plot_view.SetSingletonTag("PlotView1")
    runtime.scene.AddNode(plot_view)
    slicer.mrmlScene = runtime.scene
    slicer.app = App(runtime)
    slicer.modules = types.SimpleNamespace(volumerendering=types.SimpleNamespace(logic=lambda: runtime.vr_logic))
    slicer.moduleNames = types.SimpleNamespace()
    for cls in ("qMRMLWidget", "qSlicerWidget", "qMRMLNodeComboBox", "qMRMLSpinBox", "qMRMLSliderWidget",
                "qMRMLRangeWidget"):
        setattr(slicer, cls, getattr(_qmrml(), cls))
    util = importlib.import_module("slicer.util")
    assert Path(util.__file__).resolve().parent == (tagdir / "slicer").resolve(), util.__file__
    slicer.util = util
    slicer.i18n = importlib.import_module("slicer.i18n")
    slicer.ScriptedLoadableModule = importlib.import_module("slicer.ScriptedLoadableModule")
    slicer.parameterNodeWrapper = importlib.import_module("slicer.parameterNodeWrapper")
    slicer.runtime = runtime
    return slicer


def _qmrml():
    import qmrml

    return qmrml


def load_module(slicer):
    """Import ADDiagnosis.py as Slicer's scripted-module loader does and instantiate the module class."""
    spec = importlib.util.spec_from_file_location("ADDiagnosis", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ADDiagnosis"] = module
    spec.loader.exec_module(module)
    parent = ModuleParent(MODULE_FILE, "ADDiagnosisWidget")
    module.ADDiagnosis(parent)
    slicer.modules.addiagnosis = parent
    return module, parent
