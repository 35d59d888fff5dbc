"""The anatomical atlas in the scene: a label map on its own MNI grid under the engine's registration.

Run after :func:`addiagnosis.mrml.scene.push_results` with the same result::

    nodes = show_atlas(scene, input_node, result)     # AtlasNodes(labels, colors, transform)
    region_at(nodes.labels, ras)                       # "Left Hippocampus": what Slicer's Data Probe shows

The label map keeps the atlas's own voxels and geometry (MNI mm); a linear transform node holding the engine's
``mni_to_input_ras`` (the registration the diagnosis used) places it on the scan, so Slicer resamples it for
display (nearest neighbour, as for every label map) and nothing is resampled here. Its colour table names every
region, so Slicer's Data Probe names the region under the cursor and the label map can be shown as outlines over
the scan. Re-running updates the same nodes; a failure leaves the scene as it was. Imports ``slicer``, not torch.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from addiagnosis.mrml.nodes import SceneError, node_world_ijk_to_ras, set_node_image
from addiagnosis.mrml.scene import REF_RELEVANCE, ROLE, SceneUndo, node_ref, place_under, ref_or_new
from addiagnosis.prep import atlas as atlases

REF_ATLAS = "ADDiagnosis.atlas"
REF_ATLAS_TRANSFORM = "ADDiagnosis.atlasTransform"


class AtlasNodes:
    def __init__(self, labels, colors, transform):
        self.labels = labels  # vtkMRMLLabelMapVolumeNode (MNI grid, under ``transform``)
        self.colors = colors  # vtkMRMLColorTableNode (names and colours of the regions)
        self.transform = transform  # vtkMRMLLinearTransformNode (MNI -> scan RAS: the engine's registration)


def color_table(scene, atlas) -> object:
    """The atlas's colour table node (one per scene and atlas): label -> region name and colour."""
    name = f"ADDiagnosis atlas ({atlas.key})"
    node = scene.GetFirstNodeByName(name)
    if node is not None and node.IsA("vtkMRMLColorTableNode"):
        return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetAttribute("Category", "ADDiagnosis")
    node.SetNumberOfColors(int(max(atlas.names)) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    colours = atlas.colours()
    for label in range(1, node.GetNumberOfColors()):
        if label in atlas.names:
            r, g, b = colours[label]
            node.SetColor(label, atlas.names[label], r, g, b, 1.0)
        else:  # unused label values: no name, so Slicer shows none
            node.SetColor(label, "", 0.0, 0.0, 0.0, 0.0)
    scene.AddNode(node)
    return node


def show_atlas(scene, input_node, result, atlas=None) -> AtlasNodes:
    """Put ``atlas`` (default: the project's atlas) on ``input_node`` through ``result``'s registration.

    Raises SceneError for a result without an MNI registration (models that do not register to a template),
    AtlasUnavailable (one line) without the atlas's package.
    """
    m = atlases.mni_to_input(getattr(result, "preprocessing", None))
    if m is None:
        raise SceneError("this model does not register scans to MNI space: no atlas can be placed on the scan")
    atlas = atlas or atlases.load_atlas()
    undo = SceneUndo(scene)
    try:
        transform = ref_or_new(scene, input_node, REF_ATLAS_TRANSFORM, "vtkMRMLLinearTransformNode",
                               f"{input_node.GetName()} MNI to scan")
        matrix = vtk.vtkMatrix4x4()
        matrix.DeepCopy([float(v) for v in m.ravel()])
        transform.SetMatrixTransformToParent(matrix)
        transform.SetAttribute(ROLE, "atlas-registration")
        labels = ref_or_new(scene, input_node, REF_ATLAS, "vtkMRMLLabelMapVolumeNode",
                            f"{input_node.GetName()} atlas")
        set_node_image(labels, np.asarray(atlas.labels, dtype=np.int16), atlas.ijk_to_mni)
        labels.SetAttribute(ROLE, "atlas")
        labels.SetAttribute("ADDiagnosis.atlasLicence", atlas.source.licence)
        labels.SetAndObserveTransformNodeID(transform.GetID())
        colors = color_table(scene, atlas)
        if labels.GetDisplayNode() is None:
            labels.CreateDefaultDisplayNodes()
        labels.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        place_under(scene, input_node, [labels, transform])
        undo.set_reference(input_node, REF_ATLAS, labels)
        undo.set_reference(input_node, REF_ATLAS_TRANSFORM, transform)
    except Exception:
        undo.rollback()
        raise
    return AtlasNodes(labels, colors, transform)


def show_as_outline(scene, labels_node, outline: bool = True, opacity: float = 1.0) -> None:
    """The atlas as the label layer of every slice view (outlines by default, so the heat map stays readable)."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(nodes.GetNumberOfItems()):
        comp = nodes.GetItemAsObject(i)
        comp.SetLabelVolumeID(labels_node.GetID() if labels_node is not None else None)
        comp.SetLabelOpacity(float(opacity))
    slices = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(slices.GetNumberOfItems()):
        slices.GetItemAsObject(i).SetUseLabelOutline(bool(outline))


def value_at(volume_node, ras) -> float | None:
    """The voxel value of a volume node at a world RAS position (the nearest voxel, through the node's linear
    transform); None outside the volume."""
    if volume_node is None or volume_node.GetImageData() is None:
        return None
    world_to_ijk = np.linalg.inv(node_world_ijk_to_ras(volume_node))
    ijk = np.floor(world_to_ijk @ np.append(np.asarray(ras, dtype=np.float64), 1.0) + 0.5)[:3].astype(int)
    dims = volume_node.GetImageData().GetDimensions()
    if np.any(ijk < 0) or np.any(ijk >= np.asarray(dims)):
        return None
    return float(volume_node.GetImageData().GetScalarComponentAsDouble(int(ijk[0]), int(ijk[1]), int(ijk[2]), 0))


def label_at(labels_node, ras) -> int:
    """The label value at a world RAS position (the nearest voxel, through the node's transform; 0 outside)."""
    value = value_at(labels_node, ras)
    return 0 if value is None else int(value)


def region_at(labels_node, ras) -> str | None:
    """The region name the label map's colour table gives at a world RAS position (None outside any region):
    the name Slicer's Data Probe shows for the label layer there."""
    label = label_at(labels_node, ras)
    if label == 0:
        return None
    colors = labels_node.GetDisplayNode().GetColorNode()
    name = colors.GetColorName(label) if colors is not None else ""
    return name or None


def cursor_readout(input_node, ras) -> dict:
    """What a cursor at world ``ras`` reads on a diagnosed input: position (mm), the scan's intensity, the
    relevance, and the atlas region (None where there is none or nothing was shown yet)."""
    labels = atlas_node(input_node)
    return {"ras": [float(v) for v in ras], "intensity": value_at(input_node, ras),
            "relevance": value_at(node_ref(input_node, REF_RELEVANCE), ras),
            "region": region_at(labels, ras) if labels is not None else None}


def reading_nodes(input_node) -> list:
    """The nodes :func:`show_atlas` and :func:`~addiagnosis.mrml.clusters.cluster_table` made for ``input_node``
    (a front end that clears its scene removes them with the input)."""
    from addiagnosis.mrml.clusters import REF_CLUSTERS

    found = (node_ref(input_node, role) for role in (REF_ATLAS, REF_ATLAS_TRANSFORM, REF_CLUSTERS))
    return [node for node in found if node is not None]


def atlas_node(input_node):
    """The atlas label map shown on ``input_node`` (None before :func:`show_atlas`)."""
    return node_ref(input_node, REF_ATLAS)

