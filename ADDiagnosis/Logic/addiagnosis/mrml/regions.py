"""Relevance per region: a label map or a segmentation -> a table node under the diagnosed input.

Run after :func:`addiagnosis.mrml.scene.push_results` (it reads the relevance volume the push referenced from
the input)::

    table = region_summary(scene, input_node, regions_node)   # label map volume or segmentation node

One row per region: name, label, voxel count, relevance sum and mean, and the region's share of the
total positive relevance. Imports ``slicer`` (and scipy for resampling a label map), not torch.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from addiagnosis.mrml.nodes import SceneError, array_from_node, node_world_ijk_to_ras
from addiagnosis.mrml.scene import REF_REGIONS, REF_RELEVANCE, ROLE, SceneUndo, node_ref
from addiagnosis.mrml.tables import output_table


def _segment_labels(scene, segmentation_node, relevance_node) -> tuple[np.ndarray, dict[int, str]]:
    """Segment i -> label i+1 on the relevance grid, resampled there by Slicer itself."""
    ids = vtk.vtkStringArray()
    segmentation = segmentation_node.GetSegmentation()
    segmentation.GetSegmentIDs(ids)
    names = {i + 1: segmentation.GetSegment(ids.GetValue(i)).GetName() for i in range(ids.GetNumberOfValues())}
    temporary = SceneUndo(scene)  # the export adds a label map, a display node and a colour table
    tmp = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(tmp)
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, tmp, relevance_node)
        if not ok:
            raise SceneError(f"could not turn segmentation '{segmentation_node.GetName()}' into labels")
        labels = np.array(array_from_node(tmp), copy=True)
    finally:
        temporary.rollback()
    return labels, names


def _label_map_labels(label_node, relevance_node) -> tuple[np.ndarray, dict[int, str]]:
    """A label map's labels on the relevance grid (nearest neighbour, in world space) and their names."""
    from scipy import ndimage

    src = array_from_node(label_node)
    shape = tuple(relevance_node.GetImageData().GetDimensions())
    rel_to_lab = np.linalg.inv(node_world_ijk_to_ras(label_node)) @ node_world_ijk_to_ras(relevance_node)
    if src.shape == shape and np.allclose(rel_to_lab, np.eye(4), atol=1e-4):
        labels = np.asarray(src)
    else:
        labels = ndimage.affine_transform(np.asarray(src), rel_to_lab[:3, :3], rel_to_lab[:3, 3],
                                          output_shape=shape, order=0, mode="constant", cval=0)
    labels = labels.astype(np.int64)
    color = label_node.GetDisplayNode().GetColorNode() if label_node.GetDisplayNode() else None
    names = {}
    for v in np.unique(labels):
        if v > 0:
            name = color.GetColorName(int(v)) if color is not None else ""
            names[int(v)] = name if name and name != "(none)" else f"label {int(v)}"
    return labels, names


def labels_on_grid(scene, regions_node, relevance_node) -> tuple[np.ndarray, dict[int, str]]:
    """Integer labels on the relevance grid (IJK order) and their names, from a label map or segmentation."""
    if regions_node.IsA("vtkMRMLSegmentationNode"):
        return _segment_labels(scene, regions_node, relevance_node)
    if regions_node.IsA("vtkMRMLScalarVolumeNode"):  # label map (or any integer volume)
        return _label_map_labels(regions_node, relevance_node)
    raise SceneError(f"regions must be a label map or a segmentation, got {regions_node.GetClassName()}")


def region_summary(scene, input_node, regions_node, relevance_node=None):
    """Relevance per region (sum, mean, share of the total positive relevance) as a table under the input.

    ``regions_node``: a label map volume (any grid: resampled, nearest neighbour) or a segmentation.
    Re-running updates the same table; a failure leaves the scene as it was.
    """
    relevance_node = relevance_node or node_ref(input_node, REF_RELEVANCE)
    if relevance_node is None:
        raise SceneError(f"'{input_node.GetName()}' has no relevance yet: diagnose it first")

    def fill(table):  # inside the transaction: a segmentation's export onto the grid is undone too on failure
        labels, names = labels_on_grid(scene, regions_node, relevance_node)
        _fill_table(table, labels, names, array_from_node(relevance_node))

    return output_table(scene, input_node, REF_REGIONS, f"{input_node.GetName()} relevance by region", fill)


def _fill_table(table, labels: np.ndarray, names: dict[int, str], rel: np.ndarray) -> None:
    flat_l = np.ravel(labels, order="F")  # same voxel order for both (no copy for node arrays)
    flat_r = np.ravel(rel, order="F")
    n = int(flat_l.max(initial=0)) + 1
    count = np.bincount(flat_l, minlength=n)
    total = np.bincount(flat_l, weights=flat_r.astype(np.float64), minlength=n)
    positive = np.bincount(flat_l, weights=np.clip(flat_r, 0, None).astype(np.float64), minlength=n)
    all_pos = float(np.clip(flat_r, 0, None).sum(dtype=np.float64))
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
