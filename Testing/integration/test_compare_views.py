"""mrml/compare_views.py in a real MRML scene (slicer-core, no views drawn): a slider move that Slicer's slice link
logic passes on to the linked compare view, the difference's colour legend, a kept map's colours, node removal."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core runtime is not installed (pip install '.[scene]')")

from addiagnosis.io.volume import Volume  # noqa: E402
from addiagnosis.mrml import compare as scene_compare  # noqa: E402
from addiagnosis.mrml import compare_views  # noqa: E402
from addiagnosis.mrml import scene as scene_module  # noqa: E402
from addiagnosis.mrml.runtime import SlicerRuntime  # noqa: E402


@pytest.fixture()
def scene():
    rt = SlicerRuntime()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-40.0, -40.0, -40.0)
    ramp = np.indices((40, 40, 40)).sum(axis=0).astype(np.float32)
    scan = rt.add_volume(Volume(ramp, aff, "scan"))
    maps = [rt.add_volume(Volume(ramp * k, aff, f"map {k}")) for k in (1.0, 2.0)]
    return rt.scene, scan, maps


def test_a_slider_move_reaches_the_linked_view(scene):
    scene, scan, (map_a, map_b) = scene
    views = scene_compare.compare_layout(scene, (scan, map_a), (scan, map_b))
    left, right = views[scene_compare.LEFT[0]], views[scene_compare.RIGHT[0]]
    start = right.GetSliceOffset()
    compare_views.move_linked(left, start + 8.0)
    assert left.GetSliceOffset() == pytest.approx(start + 8.0)
    assert right.GetSliceOffset() == pytest.approx(start + 8.0)  # the link logic moved it
    assert not left.GetInteracting()
    left.SetSliceOffset(start)  # a plain offset change (not an interaction) is not passed on
    assert right.GetSliceOffset() == pytest.approx(start + 8.0)


def test_legend_colours_and_removal(scene):
    scene, scan, (map_a, map_b) = scene
    colour = scene_compare.difference_color(scene)
    map_a.GetDisplayNode().SetAndObserveColorNodeID(colour.GetID())
    legend = scene_module.color_legend(scene, map_a, compare_views.DIFFERENCE_TITLE)
    assert scene_module.color_legend(scene, map_a, "again") is legend  # made once, then updated
    assert legend.GetTitleText() == "again" and legend.GetVisibility()
    assert legend.GetPrimaryDisplayNode() is map_a.GetDisplayNode()
    assert scene_compare.difference_color(scene) is colour  # one colour node per scene, by name
    assert colour.GetColorTransferFunction().GetSize() == len(scene_compare.COLD_HOT)
    own = scene.AddNode(slicer.vtkMRMLProceduralColorNode())
    map_b.GetDisplayNode().SetAndObserveColorNodeID(own.GetID())
    compare_views.same_colours(map_b, map_a)  # it has colours of its own: kept
    assert map_b.GetDisplayNode().GetColorNodeID() == own.GetID()
    map_b.GetDisplayNode().SetAndObserveColorNodeID("")
    compare_views.same_colours(map_b, map_a)
    assert map_b.GetDisplayNode().GetColorNodeID() == colour.GetID()
    displays = [map_a.GetNthDisplayNode(i).GetID() for i in range(map_a.GetNumberOfDisplayNodes())]
    assert len(displays) == 2  # the scalar display and the legend
    compare_views.remove_nodes(scene, [None, map_a, map_a])  # None and a node already gone are skipped
    assert map_a.GetScene() is None and all(scene.GetNodeByID(i) is None for i in displays)
    assert scan.GetScene() is scene and map_b.GetScene() is scene
