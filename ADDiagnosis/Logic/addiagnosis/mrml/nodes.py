"""Slicer volume node <-> Volume (contract): exact voxels and the world IJK->RAS matrix, parent transforms
included; the only place that reads or writes a volume node's image (and makes its display node).

Imports ``slicer`` and ``vtk`` but neither torch nor the engine.
"""

from __future__ import annotations

import numpy as np

from addiagnosis.errors import AddiagnosisError
from addiagnosis.io.volume import Volume

try:  # the Slicer runtime: desktop Slicer or the slicer-core wheel
    import vtk
    from vtk.util import numpy_support
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "addiagnosis.mrml.nodes needs the 3D Slicer runtime: run it inside 3D Slicer, or "
        "pip install 'addiagnosis[scene]' (slicer-core)"
    ) from _exc


class SceneError(AddiagnosisError):
    """A node cannot be used as it is (e.g. under a non-linear transform)."""


def _matrix_to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpy_to_matrix(a: np.ndarray):
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def node_ijk_to_ras(node) -> np.ndarray:
    """The node's own IJK->RAS (4x4), without its parent transform."""
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


def node_world_ijk_to_ras(node) -> np.ndarray:
    """IJK -> world RAS of a volume node: its IJK->RAS, then its (linear) parent transform if any.

    Where Slicer shows the voxels. Raises SceneError under a non-linear transform.
    """
    ijk_to_ras = node_ijk_to_ras(node)
    to_world = parent_transform_to_world(node)
    return ijk_to_ras if to_world is None else to_world @ ijk_to_ras


def array_from_node(node) -> np.ndarray:
    """The node's voxels in IJK order (a view; Slicer's arrayFromVolume gives KJI)."""
    image = node.GetImageData()
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)


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
    vol = Volume(array_from_node(node), node_world_ijk_to_ras(node), node.GetName())
    vol.meta["node_id"] = node.GetID()
    if node.GetParentTransformNode() is not None:
        vol.meta["parent_transform"] = node.GetParentTransformNode().GetName()
    storage = node.GetStorageNode()
    if storage is not None and storage.GetFileName():
        vol.meta["source"] = storage.GetFileName()
    return vol


def set_node_image(node, ijk_array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
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


def display_node(scene, volume_node):
    """The volume's display node; made when it has none, with automatic window/level and threshold off (no
    histogram pass over the voxels)."""
    disp = volume_node.GetDisplayNode()
    if disp is None:
        import slicer

        disp = slicer.vtkMRMLScalarVolumeDisplayNode()
        disp.AutoWindowLevelOff()
        disp.AutoThresholdOff()
        scene.AddNode(disp)
        volume_node.SetAndObserveDisplayNodeID(disp.GetID())
    return disp
