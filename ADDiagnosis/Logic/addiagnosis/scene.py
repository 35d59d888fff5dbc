"""MRML scene bridge (contract): Slicer volume node <-> Volume, and a DiagnosisResult -> scene nodes.

The only engine module that imports ``slicer`` (besides ``ADDiagnosis.py``). It needs no Qt and no
``slicer.app``: it runs the same inside desktop 3D Slicer, in the web app (trame-slicer) and headless
with the ``slicer-core`` wheel (see :class:`SlicerRuntime` and :mod:`addiagnosis.views`).

:func:`push_results` creates, or on a re-run updates in place, these nodes, all placed under the input
in the subject hierarchy and referenced from the input node (``ADDiagnosis.*`` node references):

- scalar volume ``"<input> relevance"`` with the input's exact geometry (array, IJK->RAS, parent
  transform), a procedural hot colour node, window/level and threshold from the relevance
  distribution, a colour legend, shown as foreground over the input in every slice view;
- volume rendering of the relevance whose transfer function shows the top relevance only;
- a table ``"<input> probabilities"`` and a bar plot chart, shown in the layout's plot view.

A failed push removes what it added and restores what it changed: the scene is left as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import AddiagnosisError
from .volume import Volume

try:  # the Slicer runtime: desktop Slicer or the slicer-core wheel
    import slicer
    import vtk
    from vtk.util import numpy_support
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "addiagnosis.scene needs the 3D Slicer runtime: run it inside 3D Slicer, or "
        "pip install 'addiagnosis[scene]' (slicer-core)"
    ) from _exc

COLOR_NODE_NAME = "ADDiagnosis relevance (hot)"
REF_RELEVANCE = "ADDiagnosis.relevance"
REF_TABLE = "ADDiagnosis.probabilities"
REF_CHART = "ADDiagnosis.chart"
REF_SERIES = "ADDiagnosis.series"
ROLE = "ADDiagnosis.role"  # node attribute naming what an output node is
# Hot colour ramp (position in [0,1] of the displayed window -> RGB): dark red, red, orange, yellow.
HOT = ((0.0, 0.45, 0.0, 0.0), (0.35, 0.9, 0.05, 0.0), (0.7, 1.0, 0.6, 0.0), (1.0, 1.0, 1.0, 0.25))
DEFAULT_OPACITY = 0.6
DEFAULT_TOP_PERCENT = 5.0  # threshold: show the top 5% of positive relevance in the slice views
LOWEST_SHOWN = 0.1  # ... but never relevance below 10% of the saturation value


class SceneError(AddiagnosisError):
    """A node cannot be used as it is (e.g. under a non-linear transform)."""


@dataclass
class SceneOutputs:
    relevance: object  # vtkMRMLScalarVolumeNode
    color: object  # vtkMRMLProceduralColorNode
    legend: object | None  # vtkMRMLColorLegendDisplayNode
    vr_display: object | None  # vtkMRMLVolumeRenderingDisplayNode
    table: object  # vtkMRMLTableNode
    chart: object  # vtkMRMLPlotChartNode
    series: object  # vtkMRMLPlotSeriesNode
    regions: object | None = None  # vtkMRMLTableNode of relevance per region (region_summary), when asked
    display_range: dict = field(default_factory=dict)
    seconds: float = 0.0

    def node_ids(self) -> dict[str, str]:
        out = {}
        for key in ("relevance", "color", "legend", "vr_display", "table", "chart", "series"):
            node = getattr(self, key)
            if node is not None:
                out[key] = node.GetID()
        return out


# ---------------------------------------------------------------------------------------------------
# Headless runtime (slicer-core): a scene with the module logics that Slicer's application would make
# ---------------------------------------------------------------------------------------------------


class SlicerRuntime:
    """A real MRML scene with application, Colors, Volumes and Volume Rendering logics (no Qt).

    Inside desktop Slicer use ``slicer.mrmlScene`` and the application's logics instead.
    """

    def __init__(self, cpu_volume_rendering: bool = True):
        out = vtk.vtkOutputWindow()
        out.SetDisplayModeToAlwaysStdErr()
        vtk.vtkOutputWindow.SetInstance(out)
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.SetSliceLogics(vtk.vtkCollection())
        self.app_logic.SetViewLogics(vtk.vtkCollection())
        self.color_logic = self._register(slicer.vtkMRMLColorLogic(), "Colors")
        self.color_logic.AddDefaultColorNodes()
        self.volumes_logic = self._register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.vr_logic = self._register(slicer.vtkSlicerVolumeRenderingLogic(), "VolumeRendering")
        if cpu_volume_rendering:  # ~0.4 s per frame on llvmpipe; the GPU ray caster takes ~5 s there
            self.vr_logic.SetDefaultRenderingMethod("vtkMRMLCPURayCastVolumeRenderingDisplayNode")
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.app_logic)
        slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().SetMRMLApplicationLogic(self.app_logic)

    def _register(self, logic, name: str):
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic(name, logic)
        return logic

    def load_volume(self, path, name: str | None = None):
        """Load a scan file through vtkSlicerVolumesLogic (what Slicer's Add Data does)."""
        from pathlib import Path

        path = Path(path)
        name = name or path.name.split(".nii")[0]
        node = self.volumes_logic.AddArchetypeVolume(str(path), name, 0)
        if node is None:
            raise AddiagnosisError("Slicer could not read this file as a volume", str(path))
        return node

    def add_volume(self, volume: Volume):
        """Add a Volume as a scalar volume node (exact array and IJK->RAS)."""
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", volume.name)
        _set_node_image(node, np.asarray(volume.array, dtype=np.float32), volume.ijk_to_ras)
        node.CreateDefaultDisplayNodes()
        disp = node.GetDisplayNode()
        disp.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        from .preprocess import robust_range  # (preprocess imports torch: only when a volume is added)

        lo, hi = robust_range(volume.array)
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(float(lo), float(hi))
        return node


# ---------------------------------------------------------------------------------------------------
# Node <-> Volume
# ---------------------------------------------------------------------------------------------------


def _matrix_to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpy_to_matrix(a: np.ndarray):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def node_ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def parent_transform_to_world(node) -> np.ndarray | None:
    """The 4x4 local->world matrix of the node's parent transform, None when untransformed.

    Raises SceneError for a non-linear (warping) transform: harden it first.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return None
    if not parent.IsTransformToWorldLinear():
        raise SceneError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; harden the "
            "transform (Data module: right-click > Harden transform) or remove it, then diagnose again"
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _matrix_to_numpy(m)


def volume_from_node(node) -> Volume:
    """The Volume of a scalar volume node: voxel array in IJK order and its IJK->RAS in world space.

    A linear parent transform is applied (the model sees the scan where Slicer shows it); a non-linear one
    is refused with a one-line SceneError. The array is a view on the node's voxels (no copy).
    """
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        kind = "nothing" if node is None else node.GetClassName()
        raise SceneError(f"a scalar volume (MRI scan) is needed, got {kind}")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise SceneError(f"'{node.GetName()}' has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise SceneError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; "
                         "a single-component (grey) scan is needed")
    dims = image.GetDimensions()
    kji = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    ijk_to_ras = node_ijk_to_ras(node)
    to_world = parent_transform_to_world(node)
    if to_world is not None:
        ijk_to_ras = to_world @ ijk_to_ras
    vol = Volume(kji.transpose(2, 1, 0), ijk_to_ras, node.GetName())
    vol.meta["node_id"] = node.GetID()
    if to_world is not None:
        vol.meta["parent_transform"] = node.GetParentTransformNode().GetName()
    storage = node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        vol.meta["source"] = storage.GetFileName()
    return vol


def _set_node_image(node, ijk_array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    """Put an IJK-ordered array into a volume node with this exact IJK->RAS (one copy, i fastest)."""
    shape = ijk_array.shape
    flat = np.ravel(ijk_array, order="F")  # i fastest, as VTK stores points
    scalars = numpy_support.numpy_to_vtk(flat, deep=0)
    scalars._addiagnosis_keepalive = flat  # the VTK array points into numpy memory
    scalars.SetName("ImageScalars")
    image = vtk.vtkImageData()
    image.SetDimensions(*[int(s) for s in shape])
    image.GetPointData().SetScalars(scalars)
    node.SetIJKToRASMatrix(_numpy_to_matrix(ijk_to_ras))
    node.SetAndObserveImageData(image)


# ---------------------------------------------------------------------------------------------------
# Display choices from the relevance distribution
# ---------------------------------------------------------------------------------------------------


def display_range(relevance: np.ndarray, top_percent: float = DEFAULT_TOP_PERCENT) -> dict:
    """Threshold, window/level and volume-rendering ramp from the positive relevance distribution.

    ``lower``: the value above which ``top_percent`` % of the positively relevant voxels lie (slice views
    hide everything below it); ``upper``: the 99.9th percentile (colour saturates there, so one hot voxel
    does not wash the rest out); ``vr_low``/``vr_high``: the volume rendering ramp over the top 1%.
    """
    flat = np.asarray(relevance).ravel()
    step = max(1, flat.size // 2_000_000)  # a 2M-voxel sample is plenty for percentiles
    sample = flat[::step]
    pos = sample[sample > 0]
    vmax = float(flat.max())
    if pos.size == 0 or vmax <= 0:
        return {"lower": 1.0, "upper": 2.0, "vr_low": 1.0, "vr_high": 2.0, "max": vmax,
                "min": float(flat.min()), "empty": True}
    lower, upper, vr_low = (float(v) for v in np.percentile(pos, [100.0 - top_percent, 99.9, 99.0]))
    upper = max(upper, 1e-30)
    lower = min(max(lower, LOWEST_SHOWN * upper), upper)
    vr_low = min(max(vr_low, lower), upper)
    return {"lower": lower, "upper": upper, "vr_low": vr_low, "vr_high": upper,
            "max": vmax, "min": float(flat.min()), "empty": False}


def _hot_color_node(scene):
    node = scene.GetFirstNodeByName(COLOR_NODE_NAME)
    if node is not None and node.IsA("vtkMRMLProceduralColorNode"):
        return node, False
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(COLOR_NODE_NAME)
    node.SetAttribute("Category", "ADDiagnosis")
    node.SetHideFromEditors(False)
    ctf = node.GetColorTransferFunction()
    ctf.RemoveAllPoints()
    for x, r, g, b in HOT:  # x over [0, 255]: Slicer maps window/level onto 0..255 before the colours
        ctf.AddRGBPoint(x * 255.0, r, g, b)
    scene.AddNode(node)
    return node, True


# ---------------------------------------------------------------------------------------------------
# Results -> scene
# ---------------------------------------------------------------------------------------------------


class _Undo:
    """Remembers what a push changed so a failure can restore the scene as it was."""

    def __init__(self, scene):
        self.scene = scene
        self.before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        self.actions: list = []

    def rollback(self) -> None:
        for action in reversed(self.actions):
            try:
                action()
            except Exception:  # best effort: keep undoing the rest
                pass
        added = [self.scene.GetNthNode(i) for i in range(self.scene.GetNumberOfNodes())]
        for node in reversed([n for n in added if n is not None and n.GetID() not in self.before]):
            if node.GetScene() is self.scene:
                self.scene.RemoveNode(node)


def _ref(node, role: str):
    target = node.GetNodeReference(role)
    return target if target is not None and target.GetScene() is node.GetScene() else None


def _ref_or_new(scene, input_node, role: str, class_name: str, name: str):
    """The output node the input references for ``role``, or a new one (re-runs update, never pile up)."""
    node = _ref(input_node, role)
    return node if node is not None else scene.AddNewNodeByClass(class_name, name)


def push_results(scene, input_node, result, *, opacity: float = DEFAULT_OPACITY, threshold: float | None = None,
                 top_percent: float = DEFAULT_TOP_PERCENT, vr_logic=None, volume_rendering: bool = True,
                 show_in_views: bool = True) -> SceneOutputs:
    """Create or update the output nodes of ``result`` (a DiagnosisResult for ``input_node``).

    ``threshold`` (relevance value) overrides the automatic one; ``vr_logic`` is Slicer's
    vtkSlicerVolumeRenderingLogic (``slicer.modules.volumerendering.logic()`` in Slicer,
    ``SlicerRuntime.vr_logic`` headless); without it no volume rendering is set up.
    """
    t0 = time.perf_counter()
    rel = result.relevance
    in_geom = node_ijk_to_ras(input_node)
    image = input_node.GetImageData()
    in_shape = tuple(image.GetDimensions()) if image is not None else None
    if in_shape != tuple(rel.shape):
        raise SceneError(f"relevance grid {tuple(rel.shape)} does not match '{input_node.GetName()}' {in_shape}")
    to_world = parent_transform_to_world(input_node)
    world = in_geom if to_world is None else to_world @ in_geom
    if not np.allclose(world, rel.ijk_to_ras, atol=1e-4, rtol=1e-6):
        raise SceneError("relevance geometry (IJK->RAS) does not match the input node; diagnose it again")
    rng = display_range(rel.array, top_percent)
    data = np.asarray(rel.array, dtype=np.float32)

    undo = _Undo(scene)
    try:
        out = _push(scene, input_node, result, data, in_geom, rng, undo, opacity, threshold, vr_logic,
                    volume_rendering, show_in_views)
    except Exception:
        undo.rollback()
        raise
    out.display_range = rng
    out.seconds = time.perf_counter() - t0
    return out


def _push(scene, input_node, result, data, in_geom, rng, undo, opacity, threshold, vr_logic, volume_rendering,
          show_in_views) -> SceneOutputs:
    name = input_node.GetName()
    scene.StartState(scene.BatchProcessState)
    try:
        # --- relevance volume, exact geometry ------------------------------------------------------
        rel_node = _ref(input_node, REF_RELEVANCE)
        if rel_node is None:
            rel_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{name} relevance")
        else:
            old_image, old_m = rel_node.GetImageData(), vtk.vtkMatrix4x4()
            rel_node.GetIJKToRASMatrix(old_m)
            undo.actions.append(lambda n=rel_node, i=old_image, m=old_m: (n.SetIJKToRASMatrix(m),
                                                                          n.SetAndObserveImageData(i)))
        disp = rel_node.GetDisplayNode()
        if disp is None:  # made here, with automatic window/level off: no histogram pass over the voxels
            disp = slicer.vtkMRMLScalarVolumeDisplayNode()
            disp.AutoWindowLevelOff()
            disp.AutoThresholdOff()
            scene.AddNode(disp)
            rel_node.SetAndObserveDisplayNodeID(disp.GetID())
        rel_node.SetAttribute(ROLE, "relevance")
        rel_node.SetAttribute("ADDiagnosis.model", f"{result.model_name} {result.model_version}")
        rel_node.SetAttribute("ADDiagnosis.target", result.target)
        rel_node.SetAttribute("ADDiagnosis.method", result.method)
        _set_node_image(rel_node, data, in_geom)
        parent = input_node.GetParentTransformNode()
        rel_node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)

        color, _ = _hot_color_node(scene)
        disp.SetAndObserveColorNodeID(color.GetID())
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(rng["lower"], rng["upper"])
        disp.AutoThresholdOff()
        lower = rng["lower"] if threshold is None else float(threshold)
        disp.SetThreshold(lower, max(rng["max"], lower) + 1.0)
        disp.ApplyThresholdOn()
        disp.SetInterpolate(1)

        legend = _legend(scene, rel_node, disp, result)

        # --- slice views: relevance as foreground over the input ------------------------------------
        if show_in_views:
            show_overlay(scene, input_node, rel_node, opacity, undo)

        # --- 3D: volume rendering of the top relevance ------------------------------------------------
        vr_display = _volume_rendering(vr_logic, rel_node, rng) if (vr_logic and volume_rendering) else None

        # --- probabilities: table + bar chart ----------------------------------------------------------
        table, chart, series = _probabilities(scene, input_node, result)
        if show_in_views:
            show_chart(scene, chart, undo)

        # --- subject hierarchy + references --------------------------------------------------------------
        _place_under(scene, input_node, [rel_node, table, chart, series])
        for role, node in ((REF_RELEVANCE, rel_node), (REF_TABLE, table), (REF_CHART, chart),
                           (REF_SERIES, series)):
            old = input_node.GetNodeReferenceID(role)
            undo.actions.append(lambda r=role, o=old: input_node.SetNodeReferenceID(r, o))
            input_node.SetNodeReferenceID(role, node.GetID())
    finally:
        scene.EndState(scene.BatchProcessState)
    return SceneOutputs(rel_node, color, legend, vr_display, table, chart, series)


def _legend(scene, rel_node, disp, result):
    legend = None
    for i in range(rel_node.GetNumberOfDisplayNodes()):
        d = rel_node.GetNthDisplayNode(i)
        if d is not None and d.IsA("vtkMRMLColorLegendDisplayNode"):
            legend = d
    if legend is None:
        legend = slicer.vtkMRMLColorLegendDisplayNode()
        legend.SetName(f"{rel_node.GetName()} legend")
        scene.AddNode(legend)
        legend.SetAndObservePrimaryDisplayNode(disp)
        rel_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText(f"LRP relevance ({result.target})")
    legend.SetLabelFormat("%.2e")
    legend.SetUseColorNamesForLabels(False)
    legend.SetVisibility(True)
    return legend


def show_overlay(scene, background_node, foreground_node, opacity: float = DEFAULT_OPACITY, undo=None) -> None:
    """Input as background and relevance as foreground (with ``opacity``) in every slice view."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        comp = composites.GetItemAsObject(i)
        if undo is not None:
            saved = (comp.GetBackgroundVolumeID(), comp.GetForegroundVolumeID(), comp.GetForegroundOpacity())
            undo.actions.append(lambda c=comp, s=saved: (c.SetBackgroundVolumeID(s[0]),
                                                         c.SetForegroundVolumeID(s[1]),
                                                         c.SetForegroundOpacity(s[2])))
        comp.SetBackgroundVolumeID(background_node.GetID())
        comp.SetForegroundVolumeID(foreground_node.GetID())
        comp.SetForegroundOpacity(float(opacity))


def set_overlay_opacity(scene, relevance_node, opacity: float) -> None:
    """Live opacity change (the module's slider): every slice view showing the relevance."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        comp = composites.GetItemAsObject(i)
        if comp.GetForegroundVolumeID() == relevance_node.GetID():
            comp.SetForegroundOpacity(float(opacity))


def set_threshold(relevance_node, lower: float) -> None:
    """Live threshold change (the module's slider): slice views hide relevance below ``lower``."""
    disp = relevance_node.GetDisplayNode()
    disp.SetThreshold(float(lower), max(float(lower), disp.GetUpperThreshold()))
    disp.ApplyThresholdOn()


def _volume_rendering(vr_logic, rel_node, rng):
    vr_display = vr_logic.GetFirstVolumeRenderingDisplayNode(rel_node)
    if vr_display is None:
        vr_display = vr_logic.CreateDefaultVolumeRenderingNodes(rel_node)
    prop_node = vr_display.GetVolumePropertyNode()
    prop = prop_node.GetVolumeProperty()
    lo, mid, hi = rng["lower"], rng["vr_low"], rng["vr_high"]
    opacity = vtk.vtkPiecewiseFunction()  # hidden below the slice threshold, opaque towards the top 1%
    opacity.AddPoint(min(rng["min"], 0.0) - 1.0, 0.0)
    opacity.AddPoint(lo, 0.0)
    if lo < mid < hi:
        opacity.AddPoint(mid, 0.25)
    opacity.AddPoint(hi if hi > lo else lo + 1e-6, 0.85)
    opacity.AddPoint(max(rng["max"], hi) + 1.0, 0.85)
    colors = vtk.vtkColorTransferFunction()
    for x, r, g, b in HOT:
        colors.AddRGBPoint(lo + x * (hi - lo), r, g, b)
    prop.SetScalarOpacity(opacity)
    prop.SetColor(colors)
    prop.ShadeOff()
    prop.SetInterpolationTypeToLinear()
    prop_node.Modified()
    vr_display.SetVisibility(True)
    return vr_display


def _probabilities(scene, input_node, result):
    name = input_node.GetName()
    table = _ref_or_new(scene, input_node, REF_TABLE, "vtkMRMLTableNode", f"{name} probabilities")
    table.SetAttribute(ROLE, "probabilities")
    t = table.GetTable()
    t.Initialize()
    cls = vtk.vtkStringArray()
    cls.SetName("Class")
    prob = vtk.vtkDoubleArray()
    prob.SetName("Probability")
    idx = vtk.vtkDoubleArray()
    idx.SetName("Index")
    for i, c in enumerate(result.class_names):
        cls.InsertNextValue(c)
        prob.InsertNextValue(float(result.probabilities[c]))
        idx.InsertNextValue(float(i))
    t.AddColumn(cls)
    t.AddColumn(prob)
    t.AddColumn(idx)
    table.SetColumnDescription("Probability", "softmax probability of each class")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)
    table.Modified()

    series = _ref_or_new(scene, input_node, REF_SERIES, "vtkMRMLPlotSeriesNode", f"{name} probabilities")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("Index")
    series.SetYColumnName("Probability")
    series.SetLabelColumnName("Class")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetColor(0.85, 0.3, 0.1)

    chart = _ref_or_new(scene, input_node, REF_CHART, "vtkMRMLPlotChartNode", f"{name} diagnosis")
    if chart.GetPlotSeriesNodeID() != series.GetID():
        chart.RemoveAllPlotSeriesNodeIDs()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{result.model_name}: predicted {result.predicted} (research use only)")
    chart.SetXAxisTitle("Class")
    chart.SetYAxisTitle("Probability")
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(False)
    return table, chart, series


def show_chart(scene, chart, undo=None) -> None:
    """Switch the layout to one with a plot view (Four-Up + plot), then show the chart in every plot view.

    In desktop Slicer the layout manager creates the plot view node when the layout changes, and the
    selection node's active chart is what Slicer propagates to it (what vtkSlicerPlotsLogic does).
    """
    layouts = scene.GetNodesByClass("vtkMRMLLayoutNode")
    if layouts.GetNumberOfItems():
        layout = layouts.GetItemAsObject(0)
        if undo is not None:
            old_layout = layout.GetViewArrangement()
            undo.actions.append(lambda lo=layout, o=old_layout: lo.SetViewArrangement(o))
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    if selection is not None:
        if undo is not None:
            old = selection.GetActivePlotChartID()
            undo.actions.append(lambda o=old: selection.SetActivePlotChartID(o))
        selection.SetActivePlotChartID(chart.GetID())
    views = scene.GetNodesByClass("vtkMRMLPlotViewNode")
    for i in range(views.GetNumberOfItems()):
        view = views.GetItemAsObject(i)
        if undo is not None:
            old = view.GetPlotChartNodeID()
            undo.actions.append(lambda v=view, o=old: v.SetPlotChartNodeID(o))
        view.SetPlotChartNodeID(chart.GetID())


def _place_under(scene, input_node, nodes) -> None:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return
    parent = sh.GetItemByDataNode(input_node)
    if not parent:
        parent = sh.CreateItem(sh.GetSceneItemID(), input_node)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if not item:
            sh.CreateItem(parent, node)
        elif sh.GetItemParent(item) != parent:
            sh.SetItemParent(item, parent)


def output_nodes(input_node) -> dict:
    """The output nodes a previous push referenced from ``input_node`` (missing ones left out)."""
    out = {}
    for key, role in (("relevance", REF_RELEVANCE), ("table", REF_TABLE), ("chart", REF_CHART),
                      ("series", REF_SERIES), ("regions", "ADDiagnosis.regions")):
        node = _ref(input_node, role)
        if node is not None:
            out[key] = node
    return out


def table_probabilities(table_node) -> dict[str, float]:
    t = table_node.GetTable()
    names, probs = t.GetColumnByName("Class"), t.GetColumnByName("Probability")
    return {names.GetValue(i): probs.GetValue(i) for i in range(t.GetNumberOfRows())}


def array_from_node(node) -> np.ndarray:
    """The node's voxels in IJK order (a view; Slicer's arrayFromVolume gives KJI)."""
    image = node.GetImageData()
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)


def threshold_for_top_percent(relevance_node, top_percent: float) -> float:
    """The relevance value above which ``top_percent`` % of the node's positive voxels lie."""
    arr = array_from_node(relevance_node)
    rng = display_range(arr, max(0.01, min(100.0, float(top_percent))))
    return rng["lower"]


def set_top_percent(relevance_node, top_percent: float) -> float:
    """Live threshold change as 'show the top N % of positive relevance' (the module's slider)."""
    lower = threshold_for_top_percent(relevance_node, top_percent)
    set_threshold(relevance_node, lower)
    return lower


def diagnose_node(scene, input_node, package=None, method: str | None = None, target: str | None = None,
                  device: str = "cpu", progress=None, vr_logic=None, opacity: float = DEFAULT_OPACITY,
                  top_percent: float = DEFAULT_TOP_PERCENT):
    """Volume node -> engine.diagnose -> push_results, blocking: the one path every front end takes.

    Returns (result, SceneOutputs). A failure anywhere leaves the scene as it was.
    """
    from .engine import diagnose

    volume = volume_from_node(input_node)
    result = diagnose(volume, package, method, target or None, device, progress)
    outputs = push_results(scene, input_node, result, vr_logic=vr_logic, opacity=opacity,
                           top_percent=top_percent)
    return result, outputs


REF_REGIONS = "ADDiagnosis.regions"


def _labels_on_grid(scene, regions_node, relevance_node) -> tuple[np.ndarray, dict[int, str]]:
    """Integer labels on the relevance grid (IJK order) and their names, from a label map or segmentation."""
    if regions_node.IsA("vtkMRMLSegmentationNode"):
        ids = vtk.vtkStringArray()
        regions_node.GetSegmentation().GetSegmentIDs(ids)
        names = {i + 1: regions_node.GetSegmentation().GetSegment(ids.GetValue(i)).GetName()
                 for i in range(ids.GetNumberOfValues())}
        temporary = _Undo(scene)  # the export adds a label map, a display node and a colour table
        tmp = slicer.vtkMRMLLabelMapVolumeNode()
        scene.AddNode(tmp)
        try:  # segment i -> label i+1, resampled onto the relevance node's grid by Slicer itself
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                regions_node, ids, tmp, relevance_node)
            if not ok:
                raise SceneError(f"could not turn segmentation '{regions_node.GetName()}' into labels")
            labels = np.array(array_from_node(tmp), copy=True)
        finally:
            temporary.rollback()
        return labels, names
    if regions_node.IsA("vtkMRMLScalarVolumeNode"):  # label map (or any integer volume)
        from scipy import ndimage

        src = array_from_node(regions_node)
        rel_ijk_to_ras = node_ijk_to_ras(relevance_node)
        lab_world = node_ijk_to_ras(regions_node)
        to_world = parent_transform_to_world(regions_node)
        if to_world is not None:
            lab_world = to_world @ lab_world
        rel_to_world = parent_transform_to_world(relevance_node)
        if rel_to_world is not None:
            rel_ijk_to_ras = rel_to_world @ rel_ijk_to_ras
        shape = tuple(relevance_node.GetImageData().GetDimensions())
        rel_to_lab = np.linalg.inv(lab_world) @ rel_ijk_to_ras
        if src.shape == shape and np.allclose(rel_to_lab, np.eye(4), atol=1e-4):
            labels = np.asarray(src)
        else:
            labels = ndimage.affine_transform(np.asarray(src), rel_to_lab[:3, :3], rel_to_lab[:3, 3],
                                              output_shape=shape, order=0, mode="constant", cval=0)
        labels = labels.astype(np.int64)
        color = regions_node.GetDisplayNode().GetColorNode() if regions_node.GetDisplayNode() else None
        names = {}
        for v in np.unique(labels):
            if v > 0:
                name = color.GetColorName(int(v)) if color is not None else ""
                names[int(v)] = name if name and name != "(none)" else f"label {int(v)}"
        return labels, names
    raise SceneError(f"regions must be a label map or a segmentation, got {regions_node.GetClassName()}")


def region_summary(scene, input_node, regions_node, relevance_node=None):
    """Relevance per region (sum, mean, share of the total positive relevance) as a table under the input.

    ``regions_node``: a label map volume (any grid: resampled, nearest neighbour) or a segmentation.
    Re-running updates the same table; a failure leaves the scene as it was.
    """
    relevance_node = relevance_node or _ref(input_node, REF_RELEVANCE)
    if relevance_node is None:
        raise SceneError(f"'{input_node.GetName()}' has no relevance yet: diagnose it first")
    undo = _Undo(scene)
    try:
        labels, names = _labels_on_grid(scene, regions_node, relevance_node)
        rel = array_from_node(relevance_node)
        flat_l = np.ravel(labels, order="F")  # same voxel order for both (no copy for node arrays)
        flat_r = np.ravel(rel, order="F")
        n = int(flat_l.max(initial=0)) + 1
        count = np.bincount(flat_l, minlength=n)
        total = np.bincount(flat_l, weights=flat_r.astype(np.float64), minlength=n)
        positive = np.bincount(flat_l, weights=np.clip(flat_r, 0, None).astype(np.float64), minlength=n)
        all_pos = float(np.clip(flat_r, 0, None).sum(dtype=np.float64))
        table = _ref_or_new(scene, input_node, REF_REGIONS, "vtkMRMLTableNode",
                            f"{input_node.GetName()} relevance by region")
        table.SetAttribute(ROLE, "regions")
        t = table.GetTable()
        t.Initialize()
        cols = {"Region": vtk.vtkStringArray(), "Label": vtk.vtkIntArray(), "Voxels": vtk.vtkIntArray(),
                "Sum": vtk.vtkDoubleArray(), "Mean": vtk.vtkDoubleArray(), "Positive share": vtk.vtkDoubleArray()}
        for name, arr in cols.items():
            arr.SetName(name)
        for label in sorted(names):
            c = int(count[label]) if label < n else 0
            cols["Region"].InsertNextValue(names[label])
            cols["Label"].InsertNextValue(label)
            cols["Voxels"].InsertNextValue(c)
            cols["Sum"].InsertNextValue(float(total[label]) if c else 0.0)
            cols["Mean"].InsertNextValue(float(total[label]) / c if c else 0.0)
            cols["Positive share"].InsertNextValue(float(positive[label]) / all_pos if c and all_pos > 0 else 0.0)
        for arr in cols.values():
            t.AddColumn(arr)
        table.SetColumnDescription("Positive share", "share of the total positive relevance inside the region")
        table.SetLocked(True)
        table.Modified()
        _place_under(scene, input_node, [table])
        old = input_node.GetNodeReferenceID(REF_REGIONS)
        undo.actions.append(lambda o=old: input_node.SetNodeReferenceID(REF_REGIONS, o))
        input_node.SetNodeReferenceID(REF_REGIONS, table.GetID())
    except Exception:
        undo.rollback()
        raise
    return table
