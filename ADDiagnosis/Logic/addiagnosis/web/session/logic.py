"""The actions of one web session: load a scan, diagnose it, change what is shown.

Each action calls the engine (``read_nifti``'s checks, :func:`addiagnosis.engine.get_diagnoser`, the CLI's
:func:`~addiagnosis.io.report.write_outputs`) and the scene bridge (:func:`addiagnosis.mrml.scene.push_results`
and its live display controls); nothing here re-implements a step of either. The engine runs in a worker
thread, so the page (and every other session, each in its own process) stays live meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath

from addiagnosis.errors import AddiagnosisError
from addiagnosis.prep.qc import verdict_line
from addiagnosis.web.common import UPLOAD_ID, access_line, page_label, write_access
from addiagnosis.web.session.compare import Comparison
from addiagnosis.web.session.state import VIEWS, PageState, slice_key
from addiagnosis.web.session.views import SessionViews

log = logging.getLogger(__name__)


def without_server_paths(value):
    """``value`` (a report) with every absolute path reduced to its last part: the server's folders stay private."""
    if isinstance(value, dict):
        return {k: without_server_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_server_paths(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or PureWindowsPath(value).drive):
        return PureWindowsPath(value).name if PureWindowsPath(value).drive else PurePath(value).name
    return value


def one_line(text) -> str:
    return " ".join(str(text).split())[:300]


@dataclass
class SessionConfig:
    """What the gateway tells a session worker (its command line)."""

    folder: Path
    session_id: str
    access_log: str | None = None
    model: str | None = None
    device: str = "cpu"


class Session:
    """Scene, views, page state and actions of one browser session."""

    def __init__(self, server, config: SessionConfig):
        from addiagnosis.mrml.runtime import SlicerRuntime

        self.config = config
        self.page = PageState(server.state)
        self.uploads = config.folder / "uploads"
        self.results = config.folder / "results"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.runtime = SlicerRuntime()
        self.scene = self.runtime.scene
        self.jumping = False  # slices moving together (go_to_cluster): their positions go to the page at once
        self.views = SessionViews(server, self.runtime, self._slice_moved)
        self.input_node = self.volume = self.outputs = self.result = None
        self.request: tuple | None = None  # (model, method, target) of the result on show
        self.upload_path: Path | None = None
        self.tasks: list[asyncio.Future] = []  # asyncio keeps only weak references to tasks: hold them here
        self._engine_lock = threading.Lock()
        self._init_page()
        self.compare = Comparison(server, self)  # comparison with another map (web/session/compare.py)

    def _init_page(self) -> None:
        from addiagnosis.models.card import METHOD_CHOICES
        from addiagnosis.models.package import find_package, list_packages

        default = find_package(self.config.model)
        self.packages = {p.name: p for p in list_packages()}
        self.packages.setdefault(default.name, default)
        page = self.page
        page.reset()
        page.models = sorted(self.packages)
        page.model = default.name
        page.methods = list(METHOD_CHOICES)
        page.method = METHOD_CHOICES[0]
        self._set_targets(default.name)
        page.on_change(PageState.model, lambda model, **_: self._set_targets(model))
        page.on_change(PageState.opacity, lambda opacity, **_: self.set_opacity(opacity))
        page.on_change(PageState.top_percent, lambda top_percent, **_: self.set_top_percent(top_percent))
        for key in (PageState.model, PageState.method, PageState.target):
            page.on_change(key, lambda **_: self._mark_stale())
        for key, _ in VIEWS:
            page.on_change(slice_key(key), lambda key=key, **kw: self.set_slice(key, kw[slice_key(key)]))

    def _set_targets(self, model: str) -> None:
        names = self.packages[model].class_names if model in self.packages else []
        self.page.targets = ["predicted", *names]
        if self.page.target not in self.page.targets:
            self.page.target = "predicted"

    def _log(self, event: str, outcome: str, **fields) -> None:
        line = access_line(self.config.session_id, event, outcome, **fields)
        if self.config.access_log:
            write_access(self.config.access_log, line)
        else:  # the gateway hands the worker its own stderr as stdout
            print(line, flush=True)

    def _error(self, text: str) -> None:
        self.page.message = one_line(text)

    # ---------------------------------------------------------------------------------- loading
    def use_example(self) -> None:
        from addiagnosis.resources import default_scan

        try:
            self._load_file(default_scan(), page_label(default_scan().name), "example")
        except AddiagnosisError as exc:
            self._error(str(exc))

    def upload_started(self, name: str, size: float) -> None:
        with self.page as page:
            page.message = ""
            page.uploading = True

    def upload_failed(self, name: str, error: str) -> None:
        with self.page as page:
            page.uploading = False
            self._error(f"{page_label(name)}: {error}")
        self._log("upload", "refused")

    def uploaded(self, upload_id: str, name: str) -> None:
        with self.page as page:
            page.uploading = False
            if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
                self._error("upload failed: unknown upload")
                return
            path = self.uploads / upload_id
            try:
                self._load_file(path, page_label(name), "upload")
            except Exception as exc:
                self._refuse_upload(path, name, exc)
                return
            if self.upload_path is not None and self.upload_path != path:
                self.upload_path.unlink(missing_ok=True)  # keep only the scan on show
            self.upload_path = path

    def _refuse_upload(self, path: Path, name: str, exc: Exception) -> None:
        if not isinstance(exc, AddiagnosisError):
            log.exception("showing an upload failed")
            exc = AddiagnosisError(f"could not show this scan ({type(exc).__name__})")
        path.unlink(missing_ok=True)
        problem = str(getattr(exc, "problem", None) or exc)
        # the reader may quote the stored file: show the user's name, never the server's path
        problem = problem.replace(str(path), page_label(name)).replace(path.name, page_label(name))
        self._error(f"{page_label(name)}: {problem}")
        self._log("scan", "refused")

    def _load_file(self, path: Path, name: str, source: str) -> None:
        """Validate with the engine's reader, then show the scan (its previous scan and results go)."""
        from addiagnosis.io.volume import read_scan

        volume = read_scan(path, name=name)  # NIfTI or a zipped DICOM series; the engine's checks, before all else
        self._clear_scene()
        with self.views.held():
            self.input_node = self.runtime.add_volume(volume)
            self.views.show_scan(self.input_node)
        self.volume = volume
        page = self.page
        page.scan_name = name
        page.scan_info = "{} x {} x {} voxels, {:.2f} x {:.2f} x {:.2f} mm".format(*volume.shape, *volume.spacing)
        page.has_scan = True
        page.message = ""
        self._reset_result()
        self._sync_slices()
        self.views.render()
        self._log("scan", "ok", source=source)

    def _clear_scene(self) -> None:
        from addiagnosis.mrml.scene import output_nodes

        if self.input_node is None:
            return
        from addiagnosis.mrml.atlas import reading_nodes

        nodes = [*output_nodes(self.input_node).values(), *reading_nodes(self.input_node), self.input_node]
        with self.views.held():
            for node in nodes:
                if node is None or node.GetScene() is not self.scene:
                    continue
                if node.IsA("vtkMRMLDisplayableNode"):
                    for i in reversed(range(node.GetNumberOfDisplayNodes())):
                        disp = node.GetNthDisplayNode(i)
                        if disp is not None:
                            self.scene.RemoveNode(disp)
                self.scene.RemoveNode(node)
        self.input_node = self.outputs = self.volume = None

    def _reset_result(self) -> None:
        self.compare.clear(keep_followup=False)  # a new scan: no follow-up of it yet
        self.page.reset("result")
        self.result = self.request = None
        shutil.rmtree(self.results, ignore_errors=True)

    # -------------------------------------------------------------------------------- diagnosis
    def diagnose(self) -> None:
        if self.page.busy or self.volume is None:
            return
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(asyncio.ensure_future(self._diagnose()))

    async def _diagnose(self) -> None:
        page = self.page
        volume, node = self.volume, self.input_node
        model, method = page.model, page.method
        request = (model, method, page.target)
        target = None if page.target in ("", "predicted") else page.target
        t0 = time.perf_counter()
        self._set_busy(True)
        try:
            progress = self._progress_from_thread(asyncio.get_running_loop())
            result = await asyncio.to_thread(self._run_engine, volume, model, method, target, progress)
            if node is not self.input_node:  # another scan was loaded meanwhile
                return
            t_engine = time.perf_counter() - t0
            self._progress("showing the result", 0.95)
            self._show(node, result, t0)
            self.compare.result_shown()  # a comparison made with the previous map goes; its choices follow
            self.request = request
            self._mark_stale()
            self._log("diagnose", "ok", seconds=f"{time.perf_counter() - t0:.2f}", engine_s=f"{t_engine:.2f}")
            await asyncio.to_thread(self._write_downloads, volume, result)
            with page:
                page.downloads_ready = True
                page.download_stamp = int(time.time() * 1000)
        except AddiagnosisError as exc:
            with page:
                self._error(str(getattr(exc, "problem", None) or exc))
            self._log("diagnose", "refused")
        except Exception as exc:  # a failure of one diagnosis must not take the session down
            log.exception("diagnosis failed")
            with page:
                self._error(f"diagnosis failed: {type(exc).__name__}: {exc}")
            self._log("diagnose", "error")
        finally:
            self._set_busy(False)

    def _run_engine(self, volume, model: str, method: str, target: str | None, progress):
        from addiagnosis.engine import get_diagnoser

        with self._engine_lock:
            diagnoser = get_diagnoser(self.packages[model], self.config.device)
            return diagnoser.run(volume, method=method, target=target, progress=progress)

    def _set_busy(self, busy: bool) -> None:
        with self.page as page:
            page.busy = busy
            page.stage = "loading model" if busy else ""
            page.progress = 2 if busy else 0
            if busy:
                page.message = ""

    def _progress_from_thread(self, loop):
        def progress(stage: str, fraction: float) -> None:  # called in the engine's thread
            loop.call_soon_threadsafe(self._progress, stage, fraction)

        return progress

    def _progress(self, stage: str, fraction: float) -> None:
        with self.page as page:
            page.stage = stage
            page.progress = int(round(100 * max(0.0, min(1.0, fraction))))

    def _show(self, node, result, t0: float) -> None:
        """Push the result into the scene (as the Slicer module does) and onto the page."""
        from addiagnosis.mrml.scene import PushOptions, push_results

        first = self.result is None  # the first result of this scan: slices go to its relevance
        options = PushOptions(opacity=float(self.page.opacity), top_percent=float(self.page.top_percent))
        with self.views.held():
            self.outputs = push_results(self.scene, node, result, options, vr_logic=self.runtime.vr_logic)
            if first:
                self.views.reset(node, (result.summary or {}).get("top1pct_centroid_ras"))
            self._show_reading(node, result)
        self.views.show_legend(self.outputs.legend)
        self.result = result
        self._show_threshold(self.outputs.display_range.lower)
        self._sync_slices()
        self._show_result(result, time.perf_counter() - t0)
        self.views.render()

    def _show_result(self, result, seconds: float) -> None:
        probabilities = result.probabilities
        with self.page as page:
            page.has_result = True
            page.stale = False
            page.predicted = result.predicted
            page.predicted_p = f"{probabilities[result.predicted]:.3f}"
            page.probs = [{"name": c, "p": float(probabilities[c]), "text": f"{probabilities[c]:.3f}",
                           "width": f"{100.0 * probabilities[c]:.1f}%", "top": c == result.predicted}
                          for c in result.class_names]
            page.result_text = (f"relevance ({result.method}) for {result.target}; model {result.model_name} "
                                f"{result.model_version}")
            page.notice = result.model_notice or ""
            page.warnings = list(result.warnings)
            page.verdict, page.verdict_text = verdict_line(result.qc, result.warnings)
            page.prediction_set = (f"{100 * result.prediction_set_coverage:.0f} % set: "
                                   + ", ".join(result.prediction_set)) if result.prediction_set else ""
            page.seconds = f"{seconds:.1f} s"

    def _show_reading(self, node, result) -> None:
        """The atlas on the scan (for the cursor readout) and the clusters as rows of the page (issue 20)."""
        from addiagnosis.mrml.atlas import show_atlas
        from addiagnosis.prep import atlas as atlases

        if atlases.available() and atlases.mni_to_input(result.preprocessing) is not None:
            show_atlas(self.scene, node, result)
        rows = []
        for c in ((getattr(result, "reading", None) or {}).get("clusters") or [])[:12]:
            region = c.get("peak_region") or "outside the atlas regions"
            rows.append({"index": int(c["index"]), "ras": [float(v) for v in c["peak_ras"]], "region": region,
                         "text": f"{100 * c['share']:.1f} % · {c['volume_ml']:.1f} mL"})
        self.page.clusters = rows

    def go_to_cluster(self, index) -> None:
        """Every slice view through the peak of cluster ``index`` (a row of the page's cluster table)."""
        row = next((r for r in self.page.clusters or [] if r["index"] == index), None)
        if row is None or self.input_node is None:
            return
        # one render per view afterwards, staged: the page hears of the three new positions (one message) first,
        # then the slice views draw and are sent, then the 3D view (its axial slice moved too)
        self.jumping = True  # the positions go to the page together, not one message per slice view
        try:
            with self.views.held(staged=True):
                self.views.jump_to(row["ras"])
                positions = self.views.slice_positions()
        finally:
            self.jumping = False
        with self.page as page:
            for key, value in positions.items():
                page.trame[slice_key(key)] = value
            page.cluster_index = row["index"]
            page.cursor_text = self._readout_text(row["ras"])  # what the peak reads, till the pointer moves

    def cursor(self, key, fx, fy) -> None:
        """The readout under the pointer in slice view ``key`` (``fx``, ``fy``: fractions of the view from its
        top-left corner): position, the scan's intensity, the relevance and the atlas region there."""
        if self.input_node is None or key not in self.views.slices:
            return
        try:
            ras = self.views.ras_at(key, float(fx), float(fy))
        except (TypeError, ValueError):
            return
        self.page.cursor_text = self._readout_text(ras)

    def _readout_text(self, ras) -> str:
        """Region · position (RAS mm) · intensity · relevance at ``ras``, as the page shows it."""
        from addiagnosis.mrml.atlas import cursor_readout

        out = cursor_readout(self.input_node, ras)
        parts = [out["region"]] if out["region"] else []  # first: the part read most, never cut off
        parts.append("({:.1f}, {:.1f}, {:.1f}) mm RAS".format(*out["ras"]))
        if out["intensity"] is not None:
            parts.append(f"intensity {out['intensity']:.4g}")
        if out["relevance"] is not None:
            parts.append(f"relevance {out['relevance']:.3g}")
        return " · ".join(parts)

    def _write_downloads(self, volume, result) -> None:
        """The CLI's files (same writer); the report names the scan as the user did, no server folder."""
        from addiagnosis.io.report import write_outputs

        report = result.report(volume)
        report["source"] = "addiagnosis web"
        report.setdefault("input", {})["source"] = self.page.scan_name or volume.name
        write_outputs(self.results, volume, result, without_server_paths(report))

    # ---------------------------------------------------------------------------------- display
    def set_opacity(self, opacity) -> None:
        if self.outputs is None:
            return
        from addiagnosis.mrml.scene import set_overlay_opacity

        set_overlay_opacity(self.scene, self.outputs.relevance, float(opacity))
        self.views.render(slices_only=True)
        self.compare.restyle(float(opacity), float(self.page.top_percent))

    def set_top_percent(self, top_percent) -> None:
        if self.outputs is None:
            return
        from addiagnosis.mrml.scene import set_top_percent

        self._show_threshold(set_top_percent(self.outputs.relevance, float(top_percent)))
        self.views.render(slices_only=True)
        self.compare.restyle(float(self.page.opacity), float(top_percent))

    def _show_threshold(self, lower: float) -> None:
        """The threshold as a value and as what it shows: shares of the positive relevance and of the voxels."""
        from addiagnosis.mrml.scene import shown_shares

        relevance, voxels = shown_shares(self.outputs.relevance, lower)
        self.page.threshold_text = (f"relevance \u2265 {lower:.3g} shown: {100 * relevance:.0f} % of the positive "
                                    f"relevance, in {100 * voxels:.2f} % of the voxels")

    def _mark_stale(self) -> None:
        """A result made with another model, method or class than now selected is marked as such."""
        page = self.page
        stale = self.request is not None and self.request != (page.model, page.method, page.target)
        if bool(page.stale) != stale:
            page.stale = stale

    def reset_view(self) -> None:
        """Slices back through the relevance (or the scan's centre), fitted; the 3D view from front-left-above."""
        if self.input_node is None:
            return
        focus = (self.result.summary or {}).get("top1pct_centroid_ras") if self.result is not None else None
        with self.views.held():
            self.views.reset(self.input_node, focus)
        self._sync_slices()
        self.views.render()

    def set_slice(self, key: str, value) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        self.views.set_slice(key, value)

    def _slice_moved(self, key: str) -> None:
        if self.jumping:
            return
        value = self.views.slice_value(key)
        shown = self.page.slice_value(key)
        if shown is not None and abs(shown - value) > 1e-6:
            with self.page as page:
                page.trame[slice_key(key)] = value

    def _sync_slices(self) -> None:
        for key, (value, low, high, step) in self.views.slice_ranges().items():
            self.page.set_slice(key, value, low, high, step)

    # -------------------------------------------------------------------------------- lifecycle
    def warm_up(self) -> None:
        """Load the selected model and its reference input before the first Diagnose (in a thread)."""
        from addiagnosis.engine import get_diagnoser

        try:
            with self._engine_lock:
                get_diagnoser(self.packages[self.page.model], self.config.device).resolve_method(self.page.method)
        except Exception:  # a broken model shows its error when Diagnose is pressed
            pass

    def close(self) -> None:
        self._clear_scene()
