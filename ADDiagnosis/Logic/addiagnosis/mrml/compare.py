"""Two relevance maps side by side with linked slices: target vs target, method vs method, baseline vs follow-up.

::

    shown = compare_nodes(scene, relevance_a, relevance_b, difference=True)   # layout, figures, B - A
    shown.summary["correlation"], summary_text(shown.summary)
    leave_compare(scene)                                                     # the layout the user had

:func:`compare_layout` registers a layout (left column: map A in axial, sagittal and coronal slice views; right
column: map B in three more; optionally a third column: the difference B - A over A's scan) on the scene's layout
node and switches to it; in desktop Slicer the layout manager then makes the views, headless the slice and
composite nodes are made here. Every view's composite node is linked (Slicer's slice link logic moves the views of
one orientation together), so a slice moved on one side moves on the other. :func:`compare_nodes` computes the
figures first (:func:`addiagnosis.explain.comparison.compare_maps`: two maps of one scan on its grid, a follow-up
through MNI onto its baseline's grid) and only then touches the scene, all or nothing.

A map to compare with comes from an earlier diagnosis of the same scan (:func:`keep_map`: the map a new target or
method is about to replace, or :func:`keep_result`: a run made for comparison), or is another scan's relevance.
Kept maps are referenced from their scan (``ADDiagnosis.kept``) and updated, not piled up, when the same target,
method and model run again. Imports ``slicer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial

import numpy as np
import slicer

from addiagnosis.explain import comparison as cmp
from addiagnosis.io.volume import Volume
from addiagnosis.mrml.nodes import (
    SceneError,
    array_from_node,
    display_node,
    node_ijk_to_ras,
    node_world_ijk_to_ras,
    set_node_image,
)
from addiagnosis.mrml.scene import (
    DEFAULT_OPACITY,
    DEFAULT_TOP_PERCENT,
    REF_RELEVANCE,
    ROLE,
    SceneUndo,
    display_range,
    node_ref,
    place_under,
    procedural_color,
    set_only,
    show_range,
)

COMPARE_LAYOUT_ID = 20601  # a custom layout id, well above Slicer's own (they end below 1000)
DIFFERENCE_LAYOUT_ID = 20602  # the same with a third column: B - A
ORIENTATIONS = (("Axial", "Red", "#F34A33"), ("Sagittal", "Yellow", "#EDD54C"), ("Coronal", "Green", "#6EB04B"))
LEFT = tuple(name for _, name, _ in ORIENTATIONS)  # map A in Slicer's own three slice views
RIGHT = tuple(f"Compare{name}" for name in LEFT)  # map B in three more
DIFFERENCE = tuple(f"Difference{name}" for name in LEFT)  # B - A over A's scan
COLUMNS = ((LEFT, ""), (RIGHT, "+"), (DIFFERENCE, "-"))  # view names and the suffix of their labels (R, R+, R-)

REF_KEPT = "ADDiagnosis.kept"  # scan -> its kept maps (several)
REF_INPUT = "ADDiagnosis.input"  # kept map -> the scan it lies on
REF_DIFFERENCE = "ADDiagnosis.difference"  # map A -> the difference volume last shown with it
ATTR_REGISTRATION = "ADDiagnosis.mniToInput"  # a map's registration to MNI (16 numbers, JSON): for two scans
ATTR_PREVIOUS = "ADDiagnosis.compare.previous"  # layout node: the arrangement and links before the compare layout
KEPT, DIFF = "relevance-kept", "difference"  # ROLE of a kept map and of a difference volume
MAP_ROLES = ("relevance", KEPT)
DESCRIBED_BY = ("ADDiagnosis.target", "ADDiagnosis.method", "ADDiagnosis.model")
DIFFERENCE_COLOR_NAME = "ADDiagnosis difference (cold-hot)"
# B - A: blue where A holds more, black at 0 (added to the scan: no change shows the scan), red where B holds more
COLD_HOT = ((0.0, 0.2, 0.55, 1.0), (0.5, 0.0, 0.0, 0.0), (1.0, 1.0, 0.3, 0.0))


# ---------------------------------------------------------------------------------------------------
# The layout
# ---------------------------------------------------------------------------------------------------


def _view_xml(name: str, orientation: str, label: str, color: str) -> str:
    return (f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
            f'<property name="orientation" action="default">{orientation}</property>'
            f'<property name="viewlabel" action="default">{label}</property>'
            f'<property name="viewcolor" action="default">{color}</property></view></item>')


def layout_xml(columns: int = 2) -> str:
    """Slicer's layout description: columns (A, B[, B - A]) of axial, sagittal and coronal views."""
    out = []
    for names, suffix in COLUMNS[:columns]:
        views = "".join(_view_xml(n, o, f"{base[0]}{suffix}", c)
                        for n, base, (o, _, c) in zip(names, LEFT, ORIENTATIONS))
        out.append(f'<item><layout type="vertical">{views}</layout></item>')
    return f'<layout type="horizontal">{"".join(out)}</layout>'


def _layout_node(scene):
    nodes = scene.GetNodesByClass("vtkMRMLLayoutNode")
    if nodes.GetNumberOfItems():
        return nodes.GetItemAsObject(0)
    node = slicer.vtkMRMLLayoutNode()  # headless scenes have none: Slicer's application makes it
    node.SetSingletonTag("vtkMRMLLayoutNode")
    scene.AddNode(node)
    return node


def _slice_nodes(scene, name: str, orientation: str):
    """The slice node and composite node of the view ``name`` (made when the layout manager has not)."""
    node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # with the scene's default orientation presets
        node.SetName(name)  # Slicer names a slice node by its view (the link logic pairs them so)
        node.SetLayoutName(name)
        node.SetSingletonTag(name)
        node.SetDefaultOrientation(orientation)
        node.SetOrientation(orientation)
        scene.AddNode(node)
    comp = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
    if comp is None:
        comp = scene.CreateNodeByClass("vtkMRMLSliceCompositeNode")
        comp.SetLayoutName(name)
        comp.SetSingletonTag(name)
        scene.AddNode(comp)
    return node, comp


def in_compare(scene) -> bool:
    """Whether the scene's layout is one of the compare layouts."""
    return _layout_node(scene).GetViewArrangement() in (COMPARE_LAYOUT_ID, DIFFERENCE_LAYOUT_ID)


def _remember_previous(scene, layout, change) -> None:
    """What :func:`leave_compare` restores: the arrangement and the links of the views, before the first switch."""
    if in_compare(scene):
        return
    linked = {}
    for name in LEFT:
        comp = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        if comp is not None:
            linked[name] = bool(comp.GetLinkedControl())
    text = json.dumps({"arrangement": int(layout.GetViewArrangement()), "linked": linked})
    change(partial(layout.GetAttribute, ATTR_PREVIOUS), partial(layout.SetAttribute, ATTR_PREVIOUS), text)


def compare_layout(scene, left, right, opacity: float = DEFAULT_OPACITY, link: bool = True, difference=None,
                   undo: SceneUndo | None = None) -> dict:
    """Show ``left`` and ``right`` (each ``(background node, relevance node)``) side by side, and ``difference``
    (``(background node, difference node)``) in a third column when given; returns {view name: slice node}.
    ``link``: slices move together (per orientation). ``undo``: what was changed is restored on its rollback."""
    change = undo.change if undo is not None else set_only
    columns = [(LEFT, left), (RIGHT, right)] + ([(DIFFERENCE, difference)] if difference is not None else [])
    layout_id = COMPARE_LAYOUT_ID if difference is None else DIFFERENCE_LAYOUT_ID
    layout = _layout_node(scene)
    _remember_previous(scene, layout, change)
    if not layout.IsLayoutDescription(layout_id):
        layout.AddLayoutDescription(layout_id, layout_xml(len(columns)))
    views = {}
    for names, (background, foreground) in columns:
        for name, (orientation, _, _) in zip(names, ORIENTATIONS):
            node, comp = _slice_nodes(scene, name, orientation)
            node.SetOrientation(orientation)
            change(comp.GetBackgroundVolumeID, comp.SetBackgroundVolumeID, background.GetID())
            change(comp.GetForegroundVolumeID, comp.SetForegroundVolumeID,
                   foreground.GetID() if foreground is not None else None)
            # the difference is added to the scan at full strength: 0 (black) leaves the scan as it is
            change(comp.GetForegroundOpacity, comp.SetForegroundOpacity, 1.0 if names is DIFFERENCE else float(opacity))
            change(comp.GetLinkedControl, comp.SetLinkedControl, bool(link))
            if names is DIFFERENCE:
                comp.SetCompositing(comp.Add)
            views[name] = node
    change(layout.GetViewArrangement, layout.SetViewArrangement, layout_id)
    return views


def pairs(views: dict) -> list[tuple]:
    """(left, right) slice nodes of one orientation each."""
    return [(views[a], views[b]) for a, b in zip(LEFT, RIGHT)]


def leave_compare(scene, default=None) -> int:
    """Back to the arrangement the user had before the compare layout (``default``: Four-Up + plot when it is not
    known), the views' links as they were; returns the arrangement."""
    layout = _layout_node(scene)
    previous = json.loads(layout.GetAttribute(ATTR_PREVIOUS) or "{}")
    if default is None:
        default = slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView
    arrangement = int(previous.get("arrangement", default))
    for name in LEFT + RIGHT + DIFFERENCE:
        comp = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        if comp is not None:
            comp.SetLinkedControl(bool(previous.get("linked", {}).get(name, False)))
    layout.RemoveAttribute(ATTR_PREVIOUS)
    layout.SetViewArrangement(arrangement)
    return arrangement


# ---------------------------------------------------------------------------------------------------
# Maps in the scene: the current ones, kept ones, their scans and registrations
# ---------------------------------------------------------------------------------------------------


def _registration_text(preprocessing: dict | None) -> str | None:
    """A diagnosis's registration (MNI -> scan RAS) as the map attribute stores it (16 numbers, JSON)."""
    m = (preprocessing or {}).get("mni_to_input_ras")
    return json.dumps(np.asarray(m, dtype=float).ravel().tolist()) if m is not None else None


def remember_registration(relevance_node, preprocessing: dict | None) -> None:
    """Store the diagnosis's registration (MNI -> scan RAS) on its map: needed to compare maps of two scans."""
    text = _registration_text(preprocessing)
    if text is not None:
        relevance_node.SetAttribute(ATTR_REGISTRATION, text)


def registration_of(node) -> dict | None:
    """The preprocessing record :func:`addiagnosis.explain.comparison.compare_maps` needs, from the node."""
    text = node.GetAttribute(ATTR_REGISTRATION)
    return {"mni_to_input_ras": np.asarray(json.loads(text), dtype=float).reshape(4, 4)} if text else None


def kept_maps(input_node) -> list:
    """The maps kept for comparison on ``input_node``."""
    role, out = REF_KEPT, []
    for i in range(input_node.GetNumberOfNodeReferences(role)):
        node = input_node.GetNthNodeReference(role, i)
        if node is not None and node.GetScene() is input_node.GetScene():
            out.append(node)
    return out


def input_of(scene, map_node):
    """The scan a map lies on: a kept map's reference, else the scan whose current relevance it is (or None)."""
    node = node_ref(map_node, REF_INPUT)
    if node is not None:
        return node
    for scan in _volumes(scene):
        if node_ref(scan, REF_RELEVANCE) is map_node:
            return scan
    return None


def _volumes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def maps_in_scene(scene) -> list:
    """Every relevance map that can be compared: the scans' current maps and the kept ones, in scene order."""
    return [n for n in _volumes(scene) if n.GetAttribute(ROLE) in MAP_ROLES and input_of(scene, n) is not None]


def describe(map_node) -> str:
    """A map in a few words: "synthetic relevance (AD, lrp-epsilon)"."""
    target, method = (map_node.GetAttribute(k) or "?" for k in DESCRIBED_BY[:2])
    name = map_node.GetName()
    return name if name.endswith(")") and f"({target}, {method}" in name else f"{name} ({target}, {method})"


def _same_description(node, values) -> bool:
    return tuple(node.GetAttribute(k) for k in DESCRIBED_BY) == tuple(values)


def _kept_node(scene, input_node, values, undo: SceneUndo):
    """The kept map of ``input_node`` with these (target, method, model), or a new one."""
    for node in kept_maps(input_node):
        if _same_description(node, values):
            return node
    name = f"{input_node.GetName()} relevance ({values[0]}, {values[1]})"
    if any(node.GetName() == name for node in kept_maps(input_node)):  # the same target and method, another model
        name = f"{input_node.GetName()} relevance ({values[0]}, {values[1]}, {values[2]})"
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    input_node.AddNodeReferenceID(REF_KEPT, node.GetID())
    undo.actions.append(partial(_drop_reference, input_node, REF_KEPT, node.GetID()))
    node.SetNodeReferenceID(REF_INPUT, input_node.GetID())
    return node


def _drop_reference(node, role: str, node_id: str) -> None:
    for i in reversed(range(node.GetNumberOfNodeReferences(role))):
        if node.GetNthNodeReferenceID(role, i) == node_id:
            node.RemoveNthNodeReferenceID(role, i)


def _show_map(scene, node, like, top_percent: float) -> None:
    """``node`` displayed as the relevance ``like`` is (its colours), thresholded at its own top ``top_percent``."""
    disp = display_node(scene, node)
    like_disp = like.GetDisplayNode() if like is not None else None
    if like_disp is not None and like_disp.GetColorNodeID():
        disp.SetAndObserveColorNodeID(like_disp.GetColorNodeID())
    show_range(disp, display_range(array_from_node(node), top_percent))


def _store_map(scene, input_node, array: np.ndarray, values, registration: str | None, top_percent: float,
               undo: SceneUndo):
    """A kept map of ``input_node``: ``array`` (IJK, the scan's grid), described by (target, method, model)."""
    node = _kept_node(scene, input_node, values, undo)
    set_node_image(node, np.array(array, dtype=np.float32), node_ijk_to_ras(input_node))
    parent = input_node.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    node.SetAttribute(ROLE, KEPT)
    for key, value in zip(DESCRIBED_BY, values):
        node.SetAttribute(key, value or "")
    if registration:
        node.SetAttribute(ATTR_REGISTRATION, registration)
    _show_map(scene, node, node_ref(input_node, REF_RELEVANCE), top_percent)
    place_under(scene, input_node, [node])
    return node


def _transaction(scene, fn, *args):
    undo = SceneUndo(scene)
    try:
        return fn(*args, undo)
    except Exception:
        undo.rollback()
        raise


def keep_map(scene, input_node, result, push, top_percent: float = DEFAULT_TOP_PERCENT, keep: bool = True):
    """Push ``result`` (a new diagnosis of ``input_node``) with ``push()`` (which shows it, replacing the scan's
    map), keeping that map first (``keep``) when it explains another target or comes from another method or model;
    a kept map that ``result`` repeats is dropped afterwards. Returns (what ``push()`` returned, the kept node or
    None). All or nothing: when ``push()`` fails, the kept node goes too."""
    current = node_ref(input_node, REF_RELEVANCE)
    new = (result.target, result.method, f"{result.model_name} {result.model_version}")
    undo = SceneUndo(scene)
    try:
        kept = None
        replaced = current is not None and current.GetImageData() is not None and not _same_description(current, new)
        if keep and replaced:
            values = tuple(current.GetAttribute(k) for k in DESCRIBED_BY)
            kept = _store_map(scene, input_node, array_from_node(current), values,
                              current.GetAttribute(ATTR_REGISTRATION), top_percent, undo)
        pushed = push()
    except Exception:
        undo.rollback()
        raise
    for node in kept_maps(input_node):
        if _same_description(node, new):  # the new result is this map again: it is the current one now
            scene.RemoveNode(node)
    return pushed, kept


def keep_result(scene, input_node, result, top_percent: float = DEFAULT_TOP_PERCENT):
    """``result`` (a run of ``input_node`` made for comparison) as a kept map; the scan's current result is left as
    it is. Returns the node. All or nothing."""
    rel = result.relevance
    if tuple(rel.shape) != tuple(input_node.GetImageData().GetDimensions()):
        raise SceneError(f"relevance grid {tuple(rel.shape)} does not match '{input_node.GetName()}'")
    registration = _registration_text(result.preprocessing)
    values = (result.target, result.method, f"{result.model_name} {result.model_version}")
    return _transaction(scene, _store_map, scene, input_node, rel.array, values, registration, top_percent)


# ---------------------------------------------------------------------------------------------------
# Comparing two maps in the scene
# ---------------------------------------------------------------------------------------------------


@dataclass
class CompareShown:
    """What :func:`compare_nodes` showed."""

    views: dict  # view name -> slice node
    comparison: cmp.MapComparison  # the engine's densities and figures
    difference: object | None  # the B - A volume node, when asked

    @property
    def summary(self) -> dict:
        return self.comparison.summary


def map_volume(node) -> Volume:
    """A map node as the engine's Volume (IJK voxels, IJK->RAS in world space)."""
    return Volume(array_from_node(node), node_world_ijk_to_ras(node), node.GetName())


def compare(map_a, map_b, top_percent: float = DEFAULT_TOP_PERCENT) -> cmp.MapComparison:
    """The engine's comparison of two map nodes: maps of one scan on its grid; of two scans on A's grid (B through
    both registrations to MNI), so that the difference lies on A's scan."""
    a, b = map_volume(map_a), map_volume(map_b)
    on = "input" if cmp.same_grid(a, b) else "a"
    return cmp.compare_maps(a, registration_of(map_a), b, registration_of(map_b), on=on, top_percent=top_percent)


def difference_color(scene):
    """The cold-hot colour node of differences (one per scene)."""
    return procedural_color(scene, DIFFERENCE_COLOR_NAME, COLD_HOT)


def _difference_node(scene, map_a, map_b, comparison: cmp.MapComparison, undo: SceneUndo):
    """B - A (share of each map's relevance per mL) on A's grid, in world space, shown cold-hot around 0."""
    diff = comparison.difference
    node = node_ref(map_a, REF_DIFFERENCE)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "difference")
        undo.set_reference(map_a, REF_DIFFERENCE, node)
    node.SetName(f"{describe(map_b)} - {describe(map_a)}")
    node.SetAttribute(ROLE, DIFF)
    node.SetAttribute("ADDiagnosis.units", "share of the map's positive relevance per mL, B - A")
    set_node_image(node, np.asarray(diff.array, dtype=np.float32), diff.ijk_to_ras)
    node.SetAndObserveTransformNodeID(None)  # the grid is A's in world space
    disp = display_node(scene, node)
    disp.SetAndObserveColorNodeID(difference_color(scene).GetID())
    nonzero = np.abs(diff.array[diff.array != 0])
    top = float(np.percentile(nonzero, 99.9)) if nonzero.size else 1.0
    disp.AutoWindowLevelOff()
    disp.SetWindowLevelMinMax(-max(top, 1e-30), max(top, 1e-30))
    disp.AutoThresholdOff()
    disp.ApplyThresholdOff()
    disp.SetInterpolate(1)
    return node


def compare_nodes(scene, map_a, map_b, opacity: float = DEFAULT_OPACITY, difference: bool = False,
                  top_percent: float = DEFAULT_TOP_PERCENT) -> CompareShown:
    """Maps ``map_a`` and ``map_b`` side by side over their scans, slices linked (and B - A in a third column when
    ``difference``), with the engine's figures. The figures come first: an error (one line) changes nothing."""
    if map_a is None or map_b is None or map_a is map_b:
        raise SceneError("choose two different relevance maps to compare")
    scan_a, scan_b = input_of(scene, map_a), input_of(scene, map_b)
    for node, scan in ((map_a, scan_a), (map_b, scan_b)):
        if scan is None or node.GetImageData() is None:
            raise SceneError(f"'{node.GetName()}' is no relevance map on a scan in the scene")
    comparison = compare(map_a, map_b, top_percent)
    return _transaction(scene, _show_compared, scene, map_a, map_b, (scan_a, scan_b), comparison, opacity,
                        difference)


def _show_compared(scene, map_a, map_b, scans, comparison, opacity, difference, undo):
    diff = _difference_node(scene, map_a, map_b, comparison, undo) if difference else None
    views = compare_layout(scene, (scans[0], map_a), (scans[1], map_b), opacity,
                           difference=(scans[0], diff) if diff is not None else None, undo=undo)
    return CompareShown(views, comparison, diff)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


SPACES = {"input": "on the scan's grid", "a": "on A's scan (B through the registration to MNI)",
          "template": "on the MNI template grid"}


def summary_text(summary: dict, regions: int = 3) -> str:
    """The figures in a few lines (the module panel): correlation, share moved, Dice, the regions that changed."""
    lines = [f"correlation {_fmt(summary.get('correlation'))}, share moved {_fmt(summary.get('share_moved'))}, "
             f"Dice of the shown voxels {_fmt(summary.get('dice_shown'))} (top {summary.get('top_percent', 0):g} %)",
             f"compared {SPACES.get(summary.get('space'), summary.get('space'))}"]
    for row in (summary.get("regions") or [])[:regions]:
        lines.append(f"{row['region']}: {100 * row['a']:.1f} % -> {100 * row['b']:.1f} % of the relevance")
    return "\n".join(lines)
