"""The session's views: trame-slicer's axial, coronal, sagittal and 3D views of its scene, streamed to the page.

Renders happen when the session asks (:meth:`SessionViews.render`); inside :meth:`SessionViews.held` MRML events
schedule none (the scene is in batch mode and the views' renders are blocked), so a push costs one render per
view. One event loop draws, encodes and sends all four views; a block that moves slices can release them
``staged``: the page state first, then the slice views, then the 3D view (whose volume rendering, drawn first,
would hold up the slice views' frames). Only trame-slicer's public view API and Slicer's own logic classes are used.
"""

from __future__ import annotations

import asyncio
import contextlib

from addiagnosis.web.session.state import VIEWS

VIEW_COLOURS = {"axial": "#F34A33", "coronal": "#6DAD4A", "sagittal": "#EFD64D"}
# one JPEG quality for every frame: trame-rca draws a view again at its "still" quality (90) half a second after
# each frame of a lower interactive quality, and that second draw (a volume rendering in the 3D view) holds up
# whatever the page asks next
FRAME_QUALITY = 90
SLICES_AFTER_S = 0.002  # staged release: the page state (sent on the next loop turns) goes before the frames
THREED_AFTER_S = 0.05  # ... and the slice views' frames (encoded in a thread, then sent) before the 3D view draws


def single_sampled(view) -> None:
    """No multisampling in ``view``'s render window. VTK's default, 4 samples per pixel, made a slice view's frame
    2.3x as dear after a slice move (55 against 24 ms; 20 against 2 ms unchanged) and the 3D view's 1.9x, measured
    on Mesa's CPU renderer at load average 8; the slice views show images, which it does not smooth anyway."""
    view.render_window().SetMultiSamples(0)


def _no_gutter(*_args) -> None:
    """No per-view tool gutter: the page has its own controls."""


class SessionViews:
    """Three slice views and a 3D view of one :class:`~addiagnosis.mrml.runtime.SlicerRuntime` scene."""

    def __init__(self, server, runtime, on_slice_moved):
        from trame_slicer.core import ViewManager
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import ViewLayoutDefinition

        self.runtime = runtime
        self.scene = runtime.scene
        self.staged: asyncio.Task | None = None  # the staged release of held views (see held)
        self.manager = manager = ViewManager(self.scene, runtime.app_logic)  # the compare views are made with it too
        register_rca_factories(manager, server, slice_view_ui_f=_no_gutter, three_d_view_ui_f=_no_gutter,
                               rca_encoder="jpeg", interactive_quality=FRAME_QUALITY)
        self.slices = {}
        for key, orientation in VIEWS:
            definition = ViewLayoutDefinition.slice_view(orientation, label=key, color=VIEW_COLOURS[key])
            self.slices[key] = manager.create_view(definition)
            self.slices[key].get_view_node().AddObserver("ModifiedEvent", lambda *_a, key=key: on_slice_moved(key))
        self.threed = manager.create_view(ViewLayoutDefinition.threed_view(name="threed", background_color="#000000"))
        for view in [*self.slices.values(), self.threed]:
            single_sampled(view)
        self.template_names = {key: server.translator.translate_key(view.get_singleton_tag())
                               for key, view in [*self.slices.items(), ("threed", self.threed)]}

    @contextlib.contextmanager
    def held(self, staged: bool = False):
        """MRML events schedule no render inside this block; every view held renders once afterwards (at once,
        or ``staged``: see :meth:`_release_staged`)."""
        views = [*self.slices.values(), self.threed]
        blocked = [v for v in views if not v.is_render_blocked]
        for v in blocked:
            v.set_render_blocked(True)
        self.scene.StartState(self.scene.BatchProcessState)
        try:
            yield
        finally:
            self.scene.EndState(self.scene.BatchProcessState)
            if staged:
                self._release_staged(blocked)
            else:
                for v in blocked:
                    v.set_render_blocked(False)

    def _release_staged(self, views) -> None:
        """Release held views in the order the page wants them after the slices moved: the state changes made
        meanwhile are sent first, then the slice views draw, then (once their frames are out) the 3D view."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (called outside the server): all at once
            for v in views:
                v.set_render_blocked(False)
            return
        slices = [v for v in views if v is not self.threed]

        async def release() -> None:
            await asyncio.sleep(SLICES_AFTER_S)
            for v in slices:
                v.set_render_blocked(False)  # their draws are queued before this task's next step
            await asyncio.sleep(0)
            await asyncio.sleep(THREED_AFTER_S)
            if self.threed in views:
                self.threed.set_render_blocked(False)

        self.staged = loop.create_task(release())  # held here: asyncio keeps only weak references to tasks

    def render(self, slices_only: bool = False) -> None:
        for view in [*self.slices.values()] + ([] if slices_only else [self.threed]):
            view.schedule_render()

    def show_scan(self, node) -> None:
        """The scan as background of every slice view, no overlay, fitted."""
        for view in self.slices.values():
            view.set_background_volume_id(node.GetID())
            view.set_foreground_volume_id(None)
            view.fit_view_to_content()

    def jump_to(self, ras) -> None:
        """Every slice view through ``ras`` (snapped to the nearest voxel plane, as Slicer's views do)."""
        for view in self.slices.values():
            view.get_view_node().JumpSliceByOffsetting(*[float(v) for v in ras])
            self.runtime.app_logic.GetSliceLogic(view.get_view_node()).SnapSliceOffsetToIJK()

    def reset(self, node, focus_ras=None) -> None:
        """Slice views fitted to the scan (through ``focus_ras`` when given), the 3D camera front-left-above."""
        from addiagnosis.mrml.views import point_camera

        for view in self.slices.values():
            view.fit_view_to_content()
        if focus_ras is not None:
            self.jump_to(focus_ras)
        self.slices["axial"].set_visible_in_3d(True)  # the axial slice gives the 3D view context
        camera = self.threed.get_camera_node()
        if camera is not None:
            bounds = [0.0] * 6
            node.GetRASBounds(bounds)
            point_camera(camera, bounds, "oblique")

    def ras_at(self, key: str, fx: float, fy: float) -> list[float]:
        """World RAS (mm) under a point of a slice view given as fractions of its width and height from the
        top-left corner (the page's pointer), through the view's own XY-to-RAS."""
        node = self.slices[key].get_view_node()
        width, height = node.GetDimensions()[:2]
        m = node.GetXYToRAS()
        xy = (float(fx) * width, (1.0 - float(fy)) * height, 0.0, 1.0)
        return [sum(m.GetElement(r, c) * xy[c] for c in range(4)) for r in range(3)]

    def slice_positions(self) -> dict[str, float]:
        return {key: float(view.get_slice_value()) for key, view in self.slices.items()}

    def restore_slices(self, positions: dict[str, float]) -> None:
        for key, value in positions.items():
            self.slices[key].set_slice_value(value)

    def slice_ranges(self):
        """{view: (value, low, high, step)} of the slice sliders."""
        out = {}
        for key, view in self.slices.items():
            low, high = view.get_slice_range()
            out[key] = (float(view.get_slice_value()), float(low), float(high), float(view.get_slice_step() or 1.0))
        return out

    def set_slice(self, key: str, value: float) -> None:
        view = self.slices[key]
        if abs(view.get_slice_value() - value) > 1e-6:
            view.set_slice_value(value)
            view.schedule_render()

    def slice_value(self, key: str) -> float:
        return float(self.slices[key].get_slice_value())

    def show_legend(self, legend) -> None:
        """The colour legend in every view from the first push, fitted into the small web views
        (:func:`addiagnosis.mrml.views.show_legend`)."""
        from addiagnosis.mrml.views import show_legend

        show_legend(legend)
