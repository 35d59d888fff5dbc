"""Headless rendering of Slicer's own views (axial, coronal, sagittal slice views and the 3D view) to PNG.

Uses the real MRML runtime (``slicer-core``): slice images come from ``vtkMRMLSliceLogic`` (Slicer's own
reslicing, window/level, colour mapping, threshold and layer blending) and the 3D view from Slicer's
displayable managers (volume rendering, colour legend). Off screen through Mesa EGL: set
``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` before VTK is imported (done here when unset). Renders
only when asked (no re-render on every MRML event).

:func:`render_views` is the library call behind ``addiagnosis diagnose ... --views``. A long-lived front end
(the web app) keeps one :class:`SceneViews` on its :class:`~addiagnosis.mrml.runtime.SlicerRuntime`, made before
the first :func:`~addiagnosis.mrml.scene.push_results`, and calls ``SceneViews.render`` after each push.
Imports ``slicer`` and ``vtk``, not torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402
import vtk  # noqa: E402

from addiagnosis import RESEARCH_USE  # noqa: E402
from addiagnosis.io.volume import Volume  # noqa: E402
from addiagnosis.mrml.runtime import SlicerRuntime  # noqa: E402
from addiagnosis.mrml.scene import push_results  # noqa: E402

ORIENTATIONS = {"axial": ("Red", "Axial"), "coronal": ("Green", "Coronal"), "sagittal": ("Yellow", "Sagittal")}
SLICE_MANAGERS = ("vtkMRMLColorLegendDisplayableManager", "vtkMRMLOrientationMarkerDisplayableManager")
THREED_MANAGERS = ("vtkMRMLVolumeRenderingDisplayableManager", "vtkMRMLCameraDisplayableManager",
                   "vtkMRMLModelDisplayableManager",
                   "vtkMRMLViewDisplayableManager", "vtkMRMLThreeDReformatDisplayableManager",
                   "vtkMRMLColorLegendDisplayableManager")
# the colour legend in small views (the web app's; the README's 400-pixel tiles): fractions of the view, points
LEGEND_SIZE = (0.08, 0.4)
LEGEND_POSITION = (0.98, 0.06)
LEGEND_FONT_SIZE = 11


def show_legend(legend) -> None:
    """Make Slicer's colour legend (``push_results``'s) show in every view from the first push, fitted into small
    views: a narrow bar low on the right, so that its title stands beside the head, not over it.

    Slicer's legend displayable manager makes its actor hidden when the slice composite node changes during the
    push's batch mode and looks again only when the legend node itself is modified (so the legend appeared only
    after a second push): the modification here, after the batch, is that look.
    """
    if legend is None:
        return
    legend.SetSize(*LEGEND_SIZE)
    legend.SetPosition(*LEGEND_POSITION)
    for prop in (legend.GetTitleTextProperty(), legend.GetLabelTextProperty()):
        prop.SetFontSize(LEGEND_FONT_SIZE)
    legend.Modified()


def egl_available() -> tuple[bool, str]:
    """Whether an off-screen OpenGL context can be made here (and why not)."""
    try:
        win = vtk.vtkRenderWindow()
        win.SetOffScreenRendering(1)
        win.SetSize(8, 8)
        ren = vtk.vtkRenderer()
        win.AddRenderer(ren)
        win.Render()
        ok = bool(win.SupportsOpenGL())
        name = win.GetClassName()
        win.Finalize()
        return ok, f"{name}: {'OpenGL ok' if ok else 'no OpenGL context'}"
    except Exception as exc:  # pragma: no cover - environment dependent
        return False, f"off-screen OpenGL failed: {exc}"


class _View:
    def __init__(self, runtime: SlicerRuntime, factory, managers, size):
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        factory.SetMRMLApplicationLogic(runtime.app_logic)
        for name in managers:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.group.Initialize(factory, self.renderer)

    def _attach(self, logic, runtime: SlicerRuntime, registry):
        """Hook a slice/view logic to the application logic (which lists it in ``registry``) and the scene."""
        logic.SetMRMLApplicationLogic(runtime.app_logic)
        registry.AddItem(logic)
        logic.SetMRMLScene(runtime.scene)
        self._registry = registry
        return logic

    def png(self, path: Path) -> Path:
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
        return path

    def close(self):
        """Stop observing the scene (a closed view must not react to later scene events) and free the window."""
        self.group.SetMRMLDisplayableNode(None)
        self.logic.SetMRMLScene(None)
        self._registry.RemoveItem(self.logic)
        self.window.Finalize()


class SliceView(_View):
    """One of Slicer's slice views (Red/Green/Yellow) rendered off screen."""

    def __init__(self, runtime: SlicerRuntime, name: str, orientation: str, size=(512, 512)):
        super().__init__(runtime, slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(),
                         SLICE_MANAGERS, size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.logic = self._attach(slicer.vtkMRMLSliceLogic(), runtime, runtime.app_logic.GetSliceLogics())
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation)
        self.group.SetMRMLDisplayableNode(self.node)
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(self.mapper)
        self.actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.actor)
        self.size = size

    def fit(self, slice_ras=None) -> None:
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        if slice_ras is not None:
            self.node.JumpSliceByOffsetting(*[float(v) for v in slice_ras])
        self.logic.SnapSliceOffsetToIJK()

    def render(self, path: Path) -> Path:
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        return self.png(path)


class ThreeDView(_View):
    """Slicer's 3D view (volume rendering through its displayable manager) rendered off screen."""

    def __init__(self, runtime: SlicerRuntime, name: str = "1", size=(512, 512)):
        super().__init__(runtime, slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(),
                         THREED_MANAGERS, size)
        self.logic = self._attach(slicer.vtkMRMLViewLogic(), runtime, runtime.app_logic.GetViewLogics())
        self.node = self.logic.AddViewNode(name)
        self.node.SetBoxVisible(False)
        self.node.SetAxisLabelsVisible(False)
        self.node.SetBackgroundColor(0.0, 0.0, 0.0)
        self.node.SetBackgroundColor2(0.0, 0.0, 0.0)
        self.group.SetMRMLDisplayableNode(self.node)

    def fit(self, bounds, direction: str = "oblique") -> None:
        cam_dm = self.group.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager")
        camera_node = cam_dm.GetCameraNode() if cam_dm is not None else None
        if camera_node is not None:
            point_camera(camera_node, bounds, direction)
        else:  # pragma: no cover
            centre, position, up = camera_pose(bounds, direction)
            cam = self.renderer.GetActiveCamera()
            cam.SetFocalPoint(*centre)
            cam.SetPosition(*position)
            cam.SetViewUp(*up)
        self.renderer.ResetCameraClippingRange()

    def render(self, path: Path) -> Path:
        self.renderer.ResetCameraClippingRange()
        return self.png(path)


def camera_pose(bounds, direction: str = "oblique"):
    """(focal point, position, view up) of a camera looking at RAS ``bounds`` from ``direction``.

    "oblique" is front-left-above, so that the axial slice shown in the 3D view gives the relevance context.
    """
    centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
    radius = max(bounds[2 * i + 1] - bounds[2 * i] for i in range(3))
    offsets = {"anterior": (0, 1, 0), "left": (-1, 0, 0), "superior": (0, 0, 1), "oblique": (-0.62, 0.62, 0.48)}
    d = offsets[direction]
    position = [centre[i] + 1.7 * radius * d[i] for i in range(3)]
    up = (0, 1, 0) if direction == "superior" else (0, 0, 1)
    return centre, position, up


def point_camera(camera_node, bounds, direction: str = "oblique") -> None:
    """Point a vtkMRMLCameraNode at RAS ``bounds`` from ``direction`` (see :func:`camera_pose`)."""
    centre, position, up = camera_pose(bounds, direction)
    camera_node.SetFocalPoint(*centre)
    camera_node.SetPosition(*position)
    camera_node.SetViewUp(*up)
    camera_node.ResetClippingRange()


class SceneViews:
    """The three slice views and a 3D view on a :class:`SlicerRuntime` scene.

    Make it before :func:`addiagnosis.mrml.scene.push_results` so the overlay is set in every slice view.
    """

    def __init__(self, runtime: SlicerRuntime, size=(512, 512)):
        self.runtime = runtime
        self.slices = {key: SliceView(runtime, name, orient, size) for key, (name, orient) in ORIENTATIONS.items()}
        self.threed = ThreeDView(runtime, "1", size)

    def render(self, out_dir: Path, background_node, focus_ras=None, prefix: str = "view_") -> dict[str, Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for key, view in self.slices.items():
            view.fit(focus_ras)
            files[key] = view.render(out_dir / f"{prefix}{key}.png")
        bounds = [0.0] * 6
        background_node.GetRASBounds(bounds)
        self.threed.fit(bounds)
        axial = self.slices["axial"].logic.GetSliceModelDisplayNode()
        if axial is not None:  # the axial slice in the 3D view gives the relevance anatomical context
            axial.SetVisibility(True)
            axial.SetVisibility3D(True)
        files["3d"] = self.threed.render(out_dir / f"{prefix}3d.png")
        return files

    def close(self) -> None:
        for view in self.slices.values():
            view.close()
        self.threed.close()


def render_views(input_volume: Volume, result, out_dir: Path, size=(512, 512)) -> dict[str, Path]:
    """Render axial/coronal/sagittal slice views with the relevance overlay and a 3D volume rendering.

    Builds a real MRML scene, pushes ``result`` with the same scene bridge as the Slicer module, and writes
    ``view_axial.png``, ``view_coronal.png``, ``view_sagittal.png`` and ``view_3d.png`` into ``out_dir``.
    Slice planes pass through the centroid of the top 1% relevance when known. Returns {view: path}.
    """
    t0 = time.perf_counter()
    # The displayable manager factories are process-wide: a private runtime borrows them and hands them back
    # (a caller's own views left on a dead runtime's application logic crash the process when it exits).
    factories = (slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(),
                 slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance())
    owners = [f.GetMRMLApplicationLogic() for f in factories]
    runtime = SlicerRuntime()
    node = runtime.add_volume(input_volume)
    views = SceneViews(runtime, size)
    try:
        show_legend(push_results(runtime.scene, node, result, vr_logic=runtime.vr_logic).legend)
        focus = (result.summary or {}).get("top1pct_centroid_ras")
        files = views.render(out_dir, node, focus)
    finally:
        views.close()
        for factory, owner in zip(factories, owners):
            factory.SetMRMLApplicationLogic(owner)
    render_views.last_seconds = time.perf_counter() - t0
    render_views.research_use = RESEARCH_USE
    return files


SHEET_CAPTION_H = 44  # the two lines under the four views


def views_sheet(input_volume: Volume, result, path: Path, note: str = "", size=(400, 400)) -> Path:
    """The four views of :func:`render_views` as one PNG (axial, coronal / sagittal, 3D) with two lines under
    them: the prediction, what the relevance explains and ``note``; the research-use line and the model's notice.

    The README's picture (docs/images/slicer-views.png): made by Testing/integration/test_views.py and by
    scripts/assets/make_screenshot.py. Returns ``path``.
    """
    import tempfile

    from PIL import Image, ImageDraw

    with tempfile.TemporaryDirectory() as tmp:
        files = render_views(input_volume, result, Path(tmp), size=size)
        tiles = [Image.open(files[k]).convert("RGB") for k in ("axial", "coronal", "sagittal", "3d")]
    w, h = tiles[0].size
    sheet = Image.new("RGB", (2 * w, 2 * h + SHEET_CAPTION_H), (20, 20, 20))
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % 2) * w, (n // 2) * h))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 2 * h + 6), f"Predicted {result.predicted}; relevance of {result.target} ({result.method})"
              + (f"; {note}" if note else ""), fill=(235, 235, 235))
    draw.text((8, 2 * h + 24), RESEARCH_USE + (f"  {result.model_notice}" if result.model_notice else ""),
              fill=(255, 190, 90))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path
