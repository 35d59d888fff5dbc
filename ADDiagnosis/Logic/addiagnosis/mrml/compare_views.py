"""A comparison shown in slice views the caller owns (the web app's): the difference's colour legend and a slice
move that Slicer's link logic passes on.

:func:`addiagnosis.mrml.compare.compare_nodes` puts maps A and B and their difference B - A into the scene and
links the compare views (their composite nodes' linked control, one view group). A user's drag or scroll in one
view is an interaction, which the slice link logic copies to the linked views of the same orientation; a slider
is not, so :func:`move_linked` moves a view the way an interaction does. Imports ``slicer``.
"""

from __future__ import annotations

DIFFERENCE_TITLE = "B - A (share per mL)"


def same_colours(volume_node, like) -> None:
    """``volume_node`` shown in ``like``'s colours when it has none of its own (a kept map of a scan that was never
    diagnosed in the scene, such as a follow-up: its map has no current relevance to take them from)."""
    display, like_display = volume_node.GetDisplayNode(), like.GetDisplayNode()
    if display is not None and like_display is not None and not display.GetColorNodeID():
        display.SetAndObserveColorNodeID(like_display.GetColorNodeID())


def move_linked(slice_node, offset: float) -> None:
    """Move a slice view to ``offset`` (mm) as a user's interaction does, so the link logic moves its partners."""
    slice_node.SetInteractionFlags(slice_node.SliceToRASFlag)
    slice_node.InteractingOn()
    try:
        slice_node.SetSliceOffset(float(offset))
    finally:
        slice_node.InteractingOff()


def remove_nodes(scene, nodes) -> None:
    """Volume nodes (and their display nodes) out of the scene; ``None`` and nodes already gone are skipped."""
    for node in nodes:
        if node is None or node.GetScene() is not scene:
            continue
        for i in reversed(range(node.GetNumberOfDisplayNodes())):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                scene.RemoveNode(display)
        scene.RemoveNode(node)
