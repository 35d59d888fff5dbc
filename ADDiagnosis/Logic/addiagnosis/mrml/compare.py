"""Two relevance maps side by side with linked slices: target vs target, method vs method, baseline vs follow-up.

::

    views = compare_layout(scene, (scan_a, relevance_a), (scan_b, relevance_b))

Registers a layout (left column: map A in axial, sagittal and coronal slice views; right column: map B in three
more) on the scene's layout node and switches to it; in desktop Slicer the layout manager then makes the views,
headless the slice and composite nodes are made here. Every view's composite node is linked (Slicer's slice link
logic moves the views of one orientation together), so a slice moved on one side moves on the other. Two maps of
one scan (another target or method) share its background; a follow-up against its baseline is compared on the
template grid or on the baseline (:mod:`addiagnosis.explain.comparison` resamples the maps). Imports ``slicer``.
"""

from __future__ import annotations

import slicer

from addiagnosis.mrml.scene import DEFAULT_OPACITY

COMPARE_LAYOUT_ID = 20601  # a custom layout id, well above Slicer's own (they end below 1000)
ORIENTATIONS = (("Axial", "Red", "#F34A33"), ("Sagittal", "Yellow", "#EDD54C"), ("Coronal", "Green", "#6EB04B"))
LEFT = tuple(name for _, name, _ in ORIENTATIONS)  # map A in Slicer's own three slice views
RIGHT = tuple(f"Compare{name}" for name in LEFT)  # map B in three more


def _view_xml(name: str, orientation: str, label: str, color: str) -> str:
    return (f'<item><view class="vtkMRMLSliceNode" singletontag="{name}">'
            f'<property name="orientation" action="default">{orientation}</property>'
            f'<property name="viewlabel" action="default">{label}</property>'
            f'<property name="viewcolor" action="default">{color}</property></view></item>')


def layout_xml() -> str:
    """Slicer's layout description: two columns (A left, B right) of axial, sagittal and coronal views."""
    columns = []
    for names, suffix in ((LEFT, ""), (RIGHT, "+")):
        views = "".join(_view_xml(n, o, f"{n[0] if not suffix else n[7]}{suffix}", c)
                        for n, (o, _, c) in zip(names, ORIENTATIONS))
        columns.append(f'<item><layout type="vertical">{views}</layout></item>')
    return f'<layout type="horizontal">{"".join(columns)}</layout>'


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


def compare_layout(scene, left, right, opacity: float = DEFAULT_OPACITY, link: bool = True) -> dict:
    """Show ``left`` and ``right`` (each ``(background node, relevance node)``) side by side; returns
    {view name: slice node}. ``link``: slices move together (per orientation)."""
    layout = _layout_node(scene)
    if not layout.IsLayoutDescription(COMPARE_LAYOUT_ID):
        layout.AddLayoutDescription(COMPARE_LAYOUT_ID, layout_xml())
    layout.SetViewArrangement(COMPARE_LAYOUT_ID)
    views = {}
    for names, (background, relevance) in ((LEFT, left), (RIGHT, right)):
        for name, (orientation, _, _) in zip(names, ORIENTATIONS):
            node, comp = _slice_nodes(scene, name, orientation)
            node.SetOrientation(orientation)
            node.SetViewGroup(0)  # one group: the link logic pairs the views of one orientation
            comp.SetBackgroundVolumeID(background.GetID())
            comp.SetForegroundVolumeID(relevance.GetID() if relevance is not None else None)
            comp.SetForegroundOpacity(float(opacity))
            comp.SetLinkedControl(bool(link))
            views[name] = node
    return views


def pairs(views: dict) -> list[tuple]:
    """(left, right) slice nodes of one orientation each."""
    return [(views[a], views[b]) for a, b in zip(LEFT, RIGHT)]
