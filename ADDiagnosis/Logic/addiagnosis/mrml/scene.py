"""MRML scene bridge (contract): a DiagnosisResult -> scene nodes (node <-> Volume is :mod:`addiagnosis.mrml.nodes`).

Imports ``slicer`` and ``vtk`` but neither torch nor the engine: the caller diagnoses, this module shows.
It needs no Qt and no ``slicer.app``, so it runs the same in desktop 3D Slicer (``ADDiagnosis.py``), in the
web app and headless with the ``slicer-core`` wheel (:mod:`addiagnosis.mrml.runtime` makes the scene there,
:mod:`addiagnosis.mrml.views` renders it, :mod:`addiagnosis.mrml.regions` adds relevance per region). Every front end
takes the same two steps::

    volume = volume_from_node(node)                     # node -> Volume (world IJK->RAS)
    result = engine.diagnose(volume, package, method)   # in a worker process in desktop Slicer
    outputs = push_results(scene, node, result, PushOptions(opacity=0.6, top_percent=5.0), vr_logic=vr_logic)

:func:`push_results` creates, or on a re-run updates in place, these nodes, all placed under the input
in the subject hierarchy and referenced from the input node (``ADDiagnosis.*`` node references):

- scalar volume ``"<input> relevance"`` with the input's exact geometry (array, IJK->RAS, parent
  transform), a procedural hot colour node, window/level and threshold from the relevance
  distribution (:func:`display_range`), a colour legend, shown as foreground over the input in every
  slice view;
- volume rendering of the relevance whose transfer function shows the top relevance only;
- a table ``"<input> probabilities"`` and a bar plot chart, shown in the layout's plot view.

A failed push removes what it added and restores what it changed: the scene is left as it was.
Afterwards :func:`set_overlay_opacity` and :func:`set_top_percent` (or :func:`set_threshold`) change the
display live, without a new push.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np

# isort: off
from addiagnosis.mrml.nodes import (  # first: it refuses in one line when the Slicer runtime is missing
    SceneError,
    array_from_node,
    display_node,
    node_ijk_to_ras,
    node_world_ijk_to_ras,
    set_node_image,
)
import slicer
import vtk
# isort: on

COLOR_NODE_NAME = "ADDiagnosis relevance (hot)"
REF_RELEVANCE = "ADDiagnosis.relevance"
REF_TABLE = "ADDiagnosis.probabilities"
REF_CHART = "ADDiagnosis.chart"
REF_SERIES = "ADDiagnosis.series"
REF_REGIONS = "ADDiagnosis.regions"  # written by addiagnosis.mrml.regions
ROLE = "ADDiagnosis.role"  # node attribute naming what an output node is
# Hot colour ramp (position in [0,1] of the displayed window -> RGB): dark red, red, orange, yellow.
HOT = ((0.0, 0.45, 0.0, 0.0), (0.35, 0.9, 0.05, 0.0), (0.7, 1.0, 0.6, 0.0), (1.0, 1.0, 1.0, 0.25))
DEFAULT_OPACITY = 0.6
DEFAULT_TOP_PERCENT = 5.0  # threshold: show the top 5% of positive relevance in the slice views (no other floor)


# ---------------------------------------------------------------------------------------------------
# Display policy: what is shown, from the relevance distribution and the user's choices
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisplayRange:
    """Threshold, window/level and volume-rendering ramp of a relevance map (see :func:`display_range`)."""

    lower: float  # slice views hide relevance below this (threshold) and the colour ramp starts here
    upper: float  # the colour saturates here
    vr_low: float  # the volume rendering ramp: from vr_low (top 1 %) ...
    vr_high: float  # ... to vr_high
    max: float
    min: float
    empty: bool  # no positive relevance: nothing to show


@dataclass(frozen=True)
class PushOptions:
    """The user's display choices for :func:`push_results` (the module's sliders and check boxes)."""

    opacity: float = DEFAULT_OPACITY  # of the relevance over the input in the slice views
    threshold: float | None = None  # relevance value; None: from top_percent
    top_percent: float = DEFAULT_TOP_PERCENT  # show the top N % of the positive relevance
    volume_rendering: bool = True  # in the 3D view (needs Slicer's volume rendering logic)
    show_in_views: bool = True  # set the slice views' foreground, the layout and the plot view


def display_range(relevance: np.ndarray, top_percent: float = DEFAULT_TOP_PERCENT) -> DisplayRange:
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
        return DisplayRange(lower=1.0, upper=2.0, vr_low=1.0, vr_high=2.0, max=vmax, min=float(flat.min()),
                            empty=True)
    lower, upper, vr_low = (float(v) for v in np.percentile(pos, [100.0 - top_percent, 99.9, 99.0]))
    upper = max(upper, 1e-30)
    lower = min(lower, upper)  # no hidden floor: what Top % says is what is shown
    vr_low = min(max(vr_low, lower), upper)
    return DisplayRange(lower=lower, upper=upper, vr_low=vr_low, vr_high=upper, max=vmax, min=float(flat.min()),
                        empty=False)


def procedural_color(scene, name: str, points):
    """The procedural colour node ``name`` of ``points`` ((x, r, g, b), x over [0, 1]), made once per scene."""
    node = scene.GetFirstNodeByName(name)
    if node is not None and node.IsA("vtkMRMLProceduralColorNode"):
        return node
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(name)
    node.SetAttribute("Category", "ADDiagnosis")
    node.SetHideFromEditors(False)
    ctf = node.GetColorTransferFunction()
    ctf.RemoveAllPoints()
    for x, r, g, b in points:  # x over [0, 255]: Slicer maps window/level onto 0..255 before the colours
        ctf.AddRGBPoint(x * 255.0, r, g, b)
    scene.AddNode(node)
    return node


def _hot_color_node(scene):
    return procedural_color(scene, COLOR_NODE_NAME, HOT)


# ---------------------------------------------------------------------------------------------------
# The push (results -> scene) and its undo
# ---------------------------------------------------------------------------------------------------


@dataclass
class SceneOutputs:
    """The nodes one :func:`push_results` made or updated."""

    relevance: object  # vtkMRMLScalarVolumeNode
    color: object  # vtkMRMLProceduralColorNode
    legend: object | None  # vtkMRMLColorLegendDisplayNode
    vr_display: object | None  # vtkMRMLVolumeRenderingDisplayNode
    table: object  # vtkMRMLTableNode
    chart: object  # vtkMRMLPlotChartNode
    series: object  # vtkMRMLPlotSeriesNode
    regions: object | None = None  # vtkMRMLTableNode of relevance per region (addiagnosis.mrml.regions), when asked
    display_range: DisplayRange | None = None
    seconds: float = 0.0

    def node_ids(self) -> dict[str, str]:
        out = {}
        for key in ("relevance", "color", "legend", "vr_display", "table", "chart", "series"):
            node = getattr(self, key)
            if node is not None:
                out[key] = node.GetID()
        return out


class SceneUndo:
    """Remembers what a push changed so a failure can restore the scene as it was."""

    def __init__(self, scene):
        self.scene = scene
        self.before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        self.actions: list = []

    def change(self, get, set_, value) -> None:
        """``set_(value)``, with what ``get()`` gave before restored on rollback."""
        old = get()
        self.actions.append(lambda: set_(old))
        set_(value)

    def set_reference(self, node, role: str, target) -> None:
        """``node``'s ``role`` reference -> ``target`` (the old one is restored on rollback)."""
        self.change(partial(node.GetNodeReferenceID, role), partial(node.SetNodeReferenceID, role), target.GetID())

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


def set_only(get, set_, value) -> None:  # SceneUndo.change where nothing is to be undone
    set_(value)


def _nodes_of_class(scene, class_name: str) -> list:
    nodes = scene.GetNodesByClass(class_name)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def node_ref(node, role: str):
    target = node.GetNodeReference(role)
    return target if target is not None and target.GetScene() is node.GetScene() else None


def ref_or_new(scene, input_node, role: str, class_name: str, name: str):
    """The output node the input references for ``role``, or a new one (re-runs update, never pile up)."""
    node = node_ref(input_node, role)
    return node if node is not None else scene.AddNewNodeByClass(class_name, name)


def push_results(scene, input_node, result, options: PushOptions | None = None, *, vr_logic=None) -> SceneOutputs:
    """Create or update the output nodes of ``result`` (a DiagnosisResult for ``input_node``).

    ``options``: the display choices (default :class:`PushOptions`; its ``threshold``, a relevance value,
    overrides the automatic one); ``vr_logic`` is Slicer's vtkSlicerVolumeRenderingLogic
    (``slicer.modules.volumerendering.logic()`` in Slicer, ``SlicerRuntime.vr_logic`` headless); without it no
    volume rendering is set up. Raises SceneError when the result's grid is not the input node's; on any
    failure the scene is left as it was.
    """
    t0 = time.perf_counter()
    options = options if options is not None else PushOptions()
    rel = result.relevance
    image = input_node.GetImageData()
    in_shape = tuple(image.GetDimensions()) if image is not None else None
    if in_shape != tuple(rel.shape):
        raise SceneError(f"relevance grid {tuple(rel.shape)} does not match '{input_node.GetName()}' {in_shape}")
    if not np.allclose(node_world_ijk_to_ras(input_node), rel.ijk_to_ras, atol=1e-4, rtol=1e-6):
        raise SceneError("relevance geometry (IJK->RAS) does not match the input node; diagnose it again")
    rng = display_range(rel.array, options.top_percent)

    undo = SceneUndo(scene)
    try:
        out = _push(scene, input_node, result, rng=rng, options=options, vr_logic=vr_logic, undo=undo)
    except Exception:
        undo.rollback()
        raise
    out.display_range = rng
    out.seconds = time.perf_counter() - t0
    return out


def _push(scene, input_node, result, *, rng: DisplayRange, options: PushOptions, vr_logic, undo: SceneUndo
          ) -> SceneOutputs:
    scene.StartState(scene.BatchProcessState)
    try:
        rel_node, disp = _relevance_volume(scene, input_node, result, undo)
        color = _show_relevance(scene, disp, rng, options.threshold)
        legend = color_legend(scene, rel_node, f"LRP relevance ({result.target})")
        if options.show_in_views:  # slice views: relevance as foreground over the input
            show_overlay(scene, input_node, rel_node, options.opacity, undo)
        # 3D: volume rendering of the top relevance
        vr_display = _volume_rendering(vr_logic, rel_node, rng) if (vr_logic and options.volume_rendering) else None
        table, chart, series = _probabilities(scene, input_node, result)
        if options.show_in_views:
            show_chart(scene, chart, undo)
        place_under(scene, input_node, [rel_node, table, chart, series])
        for role, node in ((REF_RELEVANCE, rel_node), (REF_TABLE, table), (REF_CHART, chart),
                           (REF_SERIES, series)):
            undo.set_reference(input_node, role, node)
    finally:
        scene.EndState(scene.BatchProcessState)
    return SceneOutputs(rel_node, color, legend, vr_display, table, chart, series)


def _relevance_volume(scene, input_node, result, undo: SceneUndo):
    """The relevance volume node (new, or the one a previous push made) with the input's exact geometry."""
    rel_node = node_ref(input_node, REF_RELEVANCE)
    if rel_node is None:
        rel_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{input_node.GetName()} relevance")
    else:
        old_image, old_m = rel_node.GetImageData(), vtk.vtkMatrix4x4()
        rel_node.GetIJKToRASMatrix(old_m)
        undo.actions.append(lambda n=rel_node, i=old_image, m=old_m: (n.SetIJKToRASMatrix(m),
                                                                      n.SetAndObserveImageData(i)))
    disp = display_node(scene, rel_node)
    rel_node.SetAttribute(ROLE, "relevance")
    rel_node.SetAttribute("ADDiagnosis.model", f"{result.model_name} {result.model_version}")
    rel_node.SetAttribute("ADDiagnosis.target", result.target)
    rel_node.SetAttribute("ADDiagnosis.method", result.method)
    # the input's own IJK->RAS under the input's parent transform: where Slicer shows the input
    set_node_image(rel_node, np.asarray(result.relevance.array, dtype=np.float32), node_ijk_to_ras(input_node))
    parent = input_node.GetParentTransformNode()
    rel_node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    return rel_node, disp


def _show_relevance(scene, disp, rng: DisplayRange, threshold: float | None):
    """Hot colours, window/level and threshold of the relevance display node; returns the colour node."""
    color = _hot_color_node(scene)
    disp.SetAndObserveColorNodeID(color.GetID())
    show_range(disp, rng, threshold)
    return color


def show_range(disp, rng: DisplayRange, threshold: float | None = None) -> None:
    """Window/level over ``rng`` and everything below ``threshold`` (default: ``rng.lower``) hidden."""
    disp.AutoWindowLevelOff()
    disp.SetWindowLevelMinMax(rng.lower, rng.upper)
    disp.AutoThresholdOff()
    lower = rng.lower if threshold is None else float(threshold)
    disp.SetThreshold(lower, max(rng.max, lower) + 1.0)
    disp.ApplyThresholdOn()
    disp.SetInterpolate(1)


def color_legend(scene, volume_node, title: str, label_format: str = "%.2e"):
    """The colour legend of ``volume_node``'s display (made once, then updated), shown in every view."""
    legend = None
    for i in range(volume_node.GetNumberOfDisplayNodes()):
        node = volume_node.GetNthDisplayNode(i)
        if node is not None and node.IsA("vtkMRMLColorLegendDisplayNode"):
            legend = node
    if legend is None:
        legend = slicer.vtkMRMLColorLegendDisplayNode()
        legend.SetName(f"{volume_node.GetName()} legend")
        scene.AddNode(legend)
        legend.SetAndObservePrimaryDisplayNode(volume_node.GetDisplayNode())
        volume_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText(title)
    legend.SetLabelFormat(label_format)
    legend.SetUseColorNamesForLabels(False)
    legend.SetVisibility(True)
    return legend


def show_overlay(scene, background_node, foreground_node, opacity: float = DEFAULT_OPACITY, undo=None) -> None:
    """Input as background and relevance as foreground (with ``opacity``) in every slice view."""
    change = undo.change if undo is not None else set_only
    for comp in _nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        change(comp.GetBackgroundVolumeID, comp.SetBackgroundVolumeID, background_node.GetID())
        change(comp.GetForegroundVolumeID, comp.SetForegroundVolumeID, foreground_node.GetID())
        change(comp.GetForegroundOpacity, comp.SetForegroundOpacity, float(opacity))


def _volume_rendering(vr_logic, rel_node, rng: DisplayRange):
    vr_display = vr_logic.GetFirstVolumeRenderingDisplayNode(rel_node)
    if vr_display is None:
        vr_display = vr_logic.CreateDefaultVolumeRenderingNodes(rel_node)
    prop_node = vr_display.GetVolumePropertyNode()
    prop = prop_node.GetVolumeProperty()
    lo, mid, hi = rng.lower, rng.vr_low, rng.vr_high
    opacity = vtk.vtkPiecewiseFunction()  # hidden below the slice threshold, opaque towards the top 1%
    opacity.AddPoint(min(rng.min, 0.0) - 1.0, 0.0)
    opacity.AddPoint(lo, 0.0)
    if lo < mid < hi:
        opacity.AddPoint(mid, 0.25)
    opacity.AddPoint(hi if hi > lo else lo + 1e-6, 0.85)
    opacity.AddPoint(max(rng.max, hi) + 1.0, 0.85)
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
    table = ref_or_new(scene, input_node, REF_TABLE, "vtkMRMLTableNode", f"{name} probabilities")
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

    series = ref_or_new(scene, input_node, REF_SERIES, "vtkMRMLPlotSeriesNode", f"{name} probabilities")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("Index")
    series.SetYColumnName("Probability")
    series.SetLabelColumnName("Class")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetColor(0.85, 0.3, 0.1)

    chart = ref_or_new(scene, input_node, REF_CHART, "vtkMRMLPlotChartNode", f"{name} diagnosis")
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
    change = undo.change if undo is not None else set_only
    for layout in _nodes_of_class(scene, "vtkMRMLLayoutNode")[:1]:
        change(layout.GetViewArrangement, layout.SetViewArrangement,
               slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    if selection is not None:
        change(selection.GetActivePlotChartID, selection.SetActivePlotChartID, chart.GetID())
    for view in _nodes_of_class(scene, "vtkMRMLPlotViewNode"):
        change(view.GetPlotChartNodeID, view.SetPlotChartNodeID, chart.GetID())


def place_under(scene, input_node, nodes) -> None:
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
                      ("series", REF_SERIES), ("regions", REF_REGIONS)):
        node = node_ref(input_node, role)
        if node is not None:
            out[key] = node
    return out


def table_probabilities(table_node) -> dict[str, float]:
    """{class: probability} read back from a probabilities table node."""
    t = table_node.GetTable()
    names, probs = t.GetColumnByName("Class"), t.GetColumnByName("Probability")
    return {names.GetValue(i): probs.GetValue(i) for i in range(t.GetNumberOfRows())}


# ---------------------------------------------------------------------------------------------------
# Live display controls (the module's sliders): change what a push showed, without a new push
# ---------------------------------------------------------------------------------------------------


def set_overlay_opacity(scene, relevance_node, opacity: float) -> None:
    """Live opacity change: every slice view showing the relevance."""
    for comp in _nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        if comp.GetForegroundVolumeID() == relevance_node.GetID():
            comp.SetForegroundOpacity(float(opacity))


def set_threshold(relevance_node, lower: float) -> None:
    """Live threshold change: slice views hide relevance below ``lower``, where the colours (and legend) start."""
    disp = relevance_node.GetDisplayNode()
    lower = float(lower)
    disp.SetWindowLevelMinMax(lower, max(disp.GetWindowLevelMax(), lower + 1e-12 * max(1.0, abs(lower))))
    disp.SetThreshold(lower, max(lower, disp.GetUpperThreshold()))
    disp.ApplyThresholdOn()


def shown_shares(relevance_node, lower: float) -> tuple[float, float]:
    """(share of the positive relevance, share of all voxels) at or above the threshold ``lower``: what is shown."""
    arr = array_from_node(relevance_node)
    shown = arr >= lower
    positive = float(arr[arr > 0].sum())
    return (float(arr[shown & (arr > 0)].sum()) / positive if positive > 0 else 0.0,
            float(np.count_nonzero(shown)) / max(1, arr.size))


def threshold_for_top_percent(relevance_node, top_percent: float) -> float:
    """The relevance value above which ``top_percent`` % of the node's positive voxels lie."""
    arr = array_from_node(relevance_node)
    return display_range(arr, max(0.01, min(100.0, float(top_percent)))).lower


def set_top_percent(relevance_node, top_percent: float) -> float:
    """Live threshold change as 'show the top N % of positive relevance'; returns the threshold value."""
    lower = threshold_for_top_percent(relevance_node, top_percent)
    set_threshold(relevance_node, lower)
    return lower
