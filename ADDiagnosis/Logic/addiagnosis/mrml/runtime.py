"""A headless 3D Slicer runtime (``slicer-core``): a real MRML scene with the logics the application makes.

Desktop Slicer builds the scene and its module logics itself (``slicer.mrmlScene``,
``slicer.modules.volumerendering.logic()``); everywhere else (the CLI's ``--views``, the web app, the
tests, the benchmarks) :class:`SlicerRuntime` builds the same pieces without Qt and without ``slicer.app``::

    from addiagnosis.mrml.runtime import SlicerRuntime
    from addiagnosis.mrml.scene import push_results
    from addiagnosis.mrml.nodes import volume_from_node
    from addiagnosis.mrml.views import SceneViews            # optional: off-screen slice and 3D views

    rt = SlicerRuntime()
    node = rt.load_volume("scan.nii.gz")                # or rt.add_volume(volume)
    views = SceneViews(rt)                              # before the push: the overlay goes into its views
    result = engine.diagnose(volume_from_node(node))    # the engine (torch) is the caller's business
    outputs = push_results(rt.scene, node, result, vr_logic=rt.vr_logic)
    views.render(out_dir, node)

Several runtimes may live in one process (one per web session), but Slicer's displayable manager factories
are process-wide and follow the runtime made last (and the views made last): make a runtime's views right
after it, close views you drop (``SceneViews.close``), and let :func:`addiagnosis.mrml.views.render_views` use its
own private runtime (it hands the factories back). This module imports ``slicer`` and ``vtk``, not torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
import vtk

from addiagnosis.errors import AddiagnosisError
from addiagnosis.io.intensity import robust_range
from addiagnosis.io.volume import Volume
from addiagnosis.mrml.nodes import set_node_image


class SlicerRuntime:
    """A real MRML scene with application, Colors, Volumes and Volume Rendering logics (no Qt).

    Attributes: ``scene`` (vtkMRMLScene), ``app_logic``, ``color_logic``, ``volumes_logic`` and ``vr_logic``
    (pass it to :func:`addiagnosis.mrml.scene.push_results` for the 3D volume rendering). Inside desktop Slicer
    use ``slicer.mrmlScene`` and the application's logics instead.
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
        path = Path(path)
        name = name or path.name.split(".nii")[0]
        node = self.volumes_logic.AddArchetypeVolume(str(path), name, 0)
        if node is None:
            raise AddiagnosisError("Slicer could not read this file as a volume", str(path))
        return node

    def add_volume(self, volume: Volume):
        """Add a Volume as a scalar volume node (exact array and IJK->RAS), grey, robust window/level."""
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", volume.name)
        set_node_image(node, np.asarray(volume.array, dtype=np.float32), volume.ijk_to_ras)
        node.CreateDefaultDisplayNodes()
        disp = node.GetDisplayNode()
        disp.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        lo, hi = robust_range(volume.array)
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(float(lo), float(hi))
        return node
