"""Comparing the map on show with another one in the web page: another class, another method, or the same
class in a follow-up scan of the same subject (issue 20 item 4).

The session's result is map A. Compare runs the engine for map B (:meth:`Session._run_engine`, the Diagnose path)
and hands both to the scene bridge as the Slicer module does: :func:`addiagnosis.mrml.compare.keep_result` keeps B
on its scan, :func:`~addiagnosis.mrml.compare.compare_nodes` computes the engine's figures
(:func:`addiagnosis.explain.comparison.compare_maps`: one scan on its grid, a follow-up through both registrations
to MNI onto the baseline) and shows A, B and B - A in three linked slice views (``Red``, ``CompareRed``,
``DifferenceRed``), which are trame-slicer views here. :func:`~addiagnosis.explain.comparison.write_comparison`
writes the CLI's ``compare-maps`` files for download. A new scan or a new Diagnose clears the comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from addiagnosis.errors import AddiagnosisError
from addiagnosis.web.common import COMPARE_DOWNLOADS, UPLOAD_ID, page_label
from addiagnosis.web.session.state import PageState, slice_key

log = logging.getLogger(__name__)
KINDS = [{"title": "another class", "value": "target"}, {"title": "another method", "value": "method"},
         {"title": "a follow-up scan", "value": "followup"}]
ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
CELLS = (("compare_a", "#F34A33"), ("compare_b", "#F34A33"), ("compare_diff", "#8fa7ff"))
DOWNLOADS = COMPARE_DOWNLOADS  # the files of addiagnosis compare-maps the page offers
STAGED = ("a.nii.gz", "b.nii.gz", *DOWNLOADS)  # what write_comparison writes (the maps stay on the server)
FIGURE_NAMES = {"correlation": "correlation", "share_moved": "share moved", "dice_shown": "Dice of the shown voxels"}


def figure_lines(summary: dict) -> list[str]:
    """The engine's figures as the panel shows them (one per line)."""
    out = []
    for key, name in FIGURE_NAMES.items():
        value = summary.get(key)
        out.append(f"{name}: {'n/a' if value is None else f'{value:.3f}'}")
    return out


class Comparison:
    """The compare views, the page's compare controls and the comparison on show, of one session."""

    def __init__(self, server, session):
        from addiagnosis.mrml import compare as scene_compare

        self.session = session
        self.page = session.page
        self.scene = session.scene
        # named as the Slicer compare layout's views (compare_nodes shows the maps in them and links them)
        self.names = dict(zip((key for key, _ in CELLS), (scene_compare.LEFT[0], scene_compare.RIGHT[0],
                                                          scene_compare.DIFFERENCE[0])))
        self.template_names = {key: server.translator.translate_key(name) for key, name in self.names.items()}
        self.views = {}  # made at the first Compare (about 1 s and 40 MB that a session that never compares saves)
        self.nodes = []  # the scene nodes a comparison added (the follow-up scan, map B, B - A)
        self.map_b = None  # map B's node while a comparison is shown (Top % and Opacity follow the page)
        self.followup = self.followup_path = None
        page = self.page
        for key, _ in CELLS:
            page.set_slice(key, 0.0, 0.0, 1.0, 1.0)
            page.on_change(slice_key(key), lambda key=key, **kw: self.set_slice(key, kw[slice_key(key)]))
        for key in (PageState.compare_kind, PageState.target, PageState.targets, PageState.methods):
            page.on_change(key, lambda **_: self._set_choices())
        page.on_change(PageState.compare_orientation, lambda compare_orientation, **_: self._orient(
            compare_orientation))
        page.on_change(PageState.compare_shown, lambda compare_shown, **_: self._toggled(compare_shown))
        ctrl = server.controller
        ctrl.trigger("addiagnosis_followup_upload_started")(lambda *_a: setattr(self.page, "message", ""))
        ctrl.trigger("addiagnosis_followup_uploaded")(self.followup_uploaded)
        ctrl.trigger("addiagnosis_followup_upload_failed")(self.followup_failed)

    # ------------------------------------------------------------------------------------- choices
    def _set_choices(self) -> None:
        """The classes (or methods) map A can be compared with: all but its own."""
        page, result = self.page, self.session.result
        if page.compare_kind == "method":
            own = result.method if result is not None else page.method
            choices = [m for m in page.methods if m not in ("auto", own)]
        elif page.compare_kind == "target":
            own = result.target if result is not None else page.target
            choices = [t for t in page.targets if t not in ("predicted", own)]
        else:
            choices = []
        page.compare_choices = choices
        if page.compare_choice not in choices:
            page.compare_choice = choices[0] if choices else ""

    def result_shown(self) -> None:
        """A new result of the session (map A): the choices follow it; a comparison made with the old A goes."""
        self.clear(keep_followup=True)
        self._set_choices()

    # ------------------------------------------------------------------------------------ follow-up
    def followup_uploaded(self, upload_id: str, name: str) -> None:
        from addiagnosis.io.volume import read_scan

        if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
            self.page.message = "upload failed: unknown upload"
            return
        path = self.session.uploads / upload_id
        try:
            volume = read_scan(path, name=page_label(name))  # the engine's checks, before all else
        except Exception as exc:
            self.session._refuse_upload(path, name, exc)  # the same one line as for a scan, no server path
            return
        self.clear(keep_followup=False)
        self.followup, self.followup_path = volume, path
        with self.page as page:
            page.followup_name = page_label(name)
            page.followup_info = "{} x {} x {} voxels, {:.2f} x {:.2f} x {:.2f} mm".format(*volume.shape,
                                                                                         *volume.spacing)
            page.compare_kind = "followup"
            page.message = ""

    def followup_failed(self, name: str, error: str) -> None:
        self.session.upload_failed(name, error)

    # --------------------------------------------------------------------------------------- compare
    def start(self) -> None:
        """The page's Compare button."""
        session = self.session
        if self.page.busy or session.result is None or session.outputs is None:
            return
        session.tasks = [t for t in session.tasks if not t.done()]
        session.tasks.append(asyncio.ensure_future(self._compare()))

    def _request(self):
        """(scan Volume, scan node or None for the follow-up, model, method, target) of map B."""
        page, session, result = self.page, self.session, self.session.result
        model, method, target = session.request[0], result.method, result.target
        if page.compare_kind == "followup":
            if self.followup is None:
                raise AddiagnosisError("upload the follow-up scan first")
            return self.followup, None, model, method, target
        if not page.compare_choice:
            raise AddiagnosisError(f"choose the {'method' if page.compare_kind == 'method' else 'class'} to compare")
        if page.compare_kind == "method":
            method = page.compare_choice
        else:
            target = page.compare_choice
        return session.volume, session.input_node, model, method, target

    async def _compare(self) -> None:
        session, page = self.session, self.page
        a_result, node = session.result, session.input_node
        t0 = time.perf_counter()
        session._set_busy(True)
        try:
            volume, scan_node, model, method, target = self._request()
            progress = session._progress_from_thread(asyncio.get_running_loop())
            result = await asyncio.to_thread(session._run_engine, volume, model, method, target, progress)
            if session.result is not a_result or session.input_node is not node:  # A changed meanwhile
                return
            t_engine = time.perf_counter() - t0
            session._progress("comparing the maps", 0.95)
            shown = self._show(scan_node, result)
            session._log("compare", "ok", seconds=f"{time.perf_counter() - t0:.2f}", engine_s=f"{t_engine:.2f}")
            await asyncio.to_thread(self._write_downloads, shown.comparison, a_result, result)
            page.compare_downloads = int(time.time() * 1000)
        except AddiagnosisError as exc:
            with page:
                session._error(str(getattr(exc, "problem", None) or exc))
            session._log("compare", "refused")
        except Exception as exc:  # a failed comparison must not take the session down
            log.exception("comparison failed")
            with page:
                session._error(f"comparison failed: {type(exc).__name__}: {exc}")
            session._log("compare", "error")
        finally:
            session._set_busy(False)

    def _show(self, scan_node, result):
        """Map B kept on its scan, the engine's comparison shown in the compare views, its figures on the page."""
        self.clear(keep_followup=True, main=False)
        try:
            shown = self._push(scan_node, result)
        except Exception:  # nothing half-shown: the scene as before Compare, the four views back
            self.clear(keep_followup=True)
            raise
        self._show_figures(self.session.result, result, shown.summary)
        self._sync_slices()
        self._render()
        return shown

    def _make_views(self) -> None:
        """The three compare views (trame-slicer slice views of the session's scene; their page templates are named
        in advance), held until a comparison is shown."""
        from trame_slicer.views import ViewLayoutDefinition

        from addiagnosis.web.session.views import single_sampled

        for key, colour in CELLS:
            if key in self.views:
                continue
            definition = ViewLayoutDefinition.slice_view("Axial", label=self.names[key], color=colour)
            view = self.session.views.manager.create_view(definition)
            view.set_render_blocked(True)
            single_sampled(view)  # as the main slice views: no multisampling (2.3x a frame on Mesa's CPU renderer)
            view.get_view_node().AddObserver("ModifiedEvent", lambda *_a, key=key: self._moved(key))
            self.views[key] = view

    def _push(self, scan_node, result):
        """Map B and B - A into the scene (the Slicer module's calls), shown in the compare views."""
        from addiagnosis.mrml import compare as scene_compare
        from addiagnosis.mrml.compare_views import DIFFERENCE_TITLE, same_colours
        from addiagnosis.mrml.scene import color_legend

        session, page = self.session, self.page
        map_a = session.outputs.relevance
        self._make_views()
        with self._held():
            if scan_node is None:
                scan_node = session.runtime.add_volume(self.followup)
                self.nodes.append(scan_node)
            scene_compare.remember_registration(map_a, session.result.preprocessing)
            map_b = scene_compare.keep_result(self.scene, scan_node, result, float(page.top_percent))
            self.nodes.append(map_b)
            self.map_b = map_b
            same_colours(map_b, map_a)
            shown = scene_compare.compare_nodes(self.scene, map_a, map_b, float(page.opacity), difference=True,
                                                top_percent=float(page.top_percent))
            self.nodes.append(shown.difference)
            legends = [color_legend(self.scene, map_b, f"LRP relevance ({result.target})", "%.2e"),
                       color_legend(self.scene, shown.difference, DIFFERENCE_TITLE, "%.1e")]
            self._orient(page.compare_orientation, render=False)
        for legend in legends:
            session.views.show_legend(legend)
        return shown

    def _show_figures(self, a, b, summary: dict) -> None:
        from addiagnosis.mrml.compare import SPACES

        followup = self.page.compare_kind == "followup"
        with self.page as page:
            page.compare_title_a = f"A: {a.target}, {a.method}" + (" (baseline)" if followup else "")
            page.compare_title_b = f"B: {b.target}, {b.method}" + (f" ({page.followup_name})" if followup else "")
            page.compare_figures = {k: summary.get(k) for k in (*FIGURE_NAMES, "space", "top_percent")}
            page.compare_text = [*figure_lines(summary), f"compared {SPACES.get(summary['space'], summary['space'])}"]
            page.compare_regions = [{"region": r["region"], "text": f"{100 * r['a']:.1f} % \u2192 {100 * r['b']:.1f} %",
                                     "change": f"{100 * r['change']:+.1f}"} for r in (summary.get("regions") or [])[:8]]
            page.compare_shown = True

    def _write_downloads(self, comparison, a, b) -> None:
        """The CLI's compare-maps files (same writer); the maps named by class and method, no server folder."""
        from addiagnosis.explain.comparison import write_comparison

        label = self.page.scan_name
        write_comparison(comparison, self.session.results, {
            "a": {"input": label, "target": a.target, "method": a.method},
            "b": {"input": self.page.followup_name or label, "target": b.target, "method": b.method}})

    # ------------------------------------------------------------------------------------- the views
    @contextlib.contextmanager
    def _held(self):
        """MRML events schedule no render inside (the scene in batch mode, every view blocked); the four views stay
        blocked while the compare views are shown (hidden, they need no frames)."""
        self._show_main(False)
        for view in self.views.values():
            view.set_render_blocked(True)
        self.scene.StartState(self.scene.BatchProcessState)
        try:
            yield
        finally:
            self.scene.EndState(self.scene.BatchProcessState)

    def _show_main(self, shown: bool) -> None:
        """The four views drawn again (one render each) or held while the compare views take their place."""
        views = self.session.views
        for view in [*views.slices.values(), views.threed]:
            if view.is_render_blocked == shown:
                view.set_render_blocked(not shown)

    def restyle(self, opacity: float, top_percent: float) -> None:
        """The page's Opacity and Top % on map B as well (map A is the session's own relevance node, which the
        session restyles; the figures keep the Top % they were computed at, as they say)."""
        if self.map_b is None:
            return
        from addiagnosis.mrml.scene import set_overlay_opacity, set_top_percent

        set_overlay_opacity(self.scene, self.map_b, opacity)
        set_top_percent(self.map_b, top_percent)
        if self.page.compare_shown:
            self._render()

    def _render(self) -> None:
        for view in self.views.values():
            view.set_render_blocked(False)
            view.schedule_render()

    def _orient(self, orientation: str, render: bool = True) -> None:
        """Every compare view in ``orientation`` (the link logic pairs views of one orientation), fitted."""
        if orientation not in ORIENTATIONS or (render and not self.page.compare_shown):
            return
        for view in self.views.values():
            view.set_orientation(orientation)
            view.fit_view_to_content()
        if render:
            self._sync_slices()
            self._render()

    def set_slice(self, key: str, value) -> None:
        """A compare view's slider: moved as a user's drag moves it, so the linked views follow."""
        from addiagnosis.mrml.compare_views import move_linked

        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        view = self.views.get(key)
        if view is not None and abs(view.get_slice_value() - value) > 1e-6:
            move_linked(view.get_view_node(), value)
            if self.page.compare_shown:
                self._render()

    def _moved(self, key: str) -> None:
        value = float(self.views[key].get_slice_value())
        shown = self.page.trame[slice_key(key)]
        if shown is None or abs(float(shown) - value) > 1e-6:
            self.page.trame[slice_key(key)] = value

    def _sync_slices(self) -> None:
        for key, view in self.views.items():
            low, high = view.get_slice_range()
            self.page.set_slice(key, view.get_slice_value(), low, high, view.get_slice_step() or 1.0)

    # ------------------------------------------------------------------------------------- clearing
    def clear(self, keep_followup: bool = True, main: bool = True) -> None:
        """The comparison goes (its nodes, figures, files); the follow-up scan too unless ``keep_followup``; the four
        views are drawn again unless not ``main``."""
        from addiagnosis.mrml.compare_views import remove_nodes

        if main:
            self._show_main(True)
        for view in self.views.values():
            view.set_render_blocked(True)
            view.set_background_volume_id(None)
            view.set_foreground_volume_id(None)
        remove_nodes(self.scene, reversed(self.nodes))
        self.nodes, self.map_b = [], None
        for name in STAGED:
            (self.session.results / name).unlink(missing_ok=True)
        if not keep_followup:
            if self.followup_path is not None:
                self.followup_path.unlink(missing_ok=True)
            self.followup = self.followup_path = None
        followup = (self.page.followup_name, self.page.followup_info) if keep_followup else ("", "")
        self.page.reset("compare")
        self.page.followup_name, self.page.followup_info = followup

    def _toggled(self, shown) -> None:
        """The page's 'Back to the four views' / 'Show the comparison' (the comparison stays until cleared)."""
        if shown and self.nodes:
            self._show_main(False)
            self._sync_slices()
            self._render()
        else:
            for view in self.views.values():
                view.set_render_blocked(True)
            self._show_main(True)
