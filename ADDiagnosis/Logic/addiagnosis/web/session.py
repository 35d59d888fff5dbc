"""One browser session of the web app: its own scene, views, uploads and diagnosis (a worker process).

Started by the gateway as ``python -m addiagnosis.web.session --port P --folder DIR ...`` on a loopback
port; the gateway proxies the page to it. The scene is a slicer-core :class:`SlicerRuntime` and results go
into it through :func:`addiagnosis.mrml.scene.push_results`: the same nodes, colour node, thresholds and volume
rendering as the Slicer module. trame-slicer streams Slicer's slice and 3D views of that scene to the
page. Views render when this code asks (after a load, a diagnosis, a slider move) and on mouse interaction;
MRML events during a push are held back so a push costs one render per view.
"""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from addiagnosis import RESEARCH_USE  # noqa: E402
from addiagnosis.errors import AddiagnosisError  # noqa: E402
from addiagnosis.web.common import DOWNLOADS, STATIC_DIR, access_line, write_access  # noqa: E402

UPLOAD_ID = re.compile(r"^[0-9a-f]{32}\.nii(\.gz)?$")
VIEW_KEYS = (("axial", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal"))


def page_label(name: str) -> str:
    """A user's file name reduced to a safe label for the page (never used as a path)."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"\.nii(\.gz)?$", "", base, flags=re.IGNORECASE)
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip() or "scan"
    return base[:64]


class Session:
    """State, scene and handlers of one browser session."""

    def __init__(self, server, folder: Path, session_id: str, access_log: str | None, model: str | None,
                 device: str):
        from trame_slicer.core import ViewManager
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import ViewLayoutDefinition

        from addiagnosis.mrml.runtime import SlicerRuntime

        self.server = server
        self.state = server.state
        self.folder = folder
        self.uploads = folder / "uploads"
        self.results = folder / "results"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.session_id = session_id
        self.access_log = access_log
        self.device = device
        self.runtime = SlicerRuntime()
        self.scene = self.runtime.scene
        self.view_manager = ViewManager(self.scene, self.runtime.app_logic)
        register_rca_factories(self.view_manager, server, slice_view_ui_f=_no_gutter, three_d_view_ui_f=_no_gutter,
                               rca_encoder="jpeg", interactive_quality=80)
        self.slice_views = {}
        for key, orientation in VIEW_KEYS:
            definition = ViewLayoutDefinition.slice_view(orientation, label=key,
                                                         color={"axial": "#F34A33", "coronal": "#6DAD4A",
                                                                "sagittal": "#EFD64D"}[key])
            self.slice_views[key] = self.view_manager.create_view(definition)
        self.threed = self.view_manager.create_view(ViewLayoutDefinition.threed_view(name="threed",
                                                                                      background_color="#000000"))
        for key, view in self.slice_views.items():
            view.get_view_node().AddObserver("ModifiedEvent", lambda *_a, key=key: self._slice_moved(key))
        self.view_ids = {key: server.translator.translate_key(view.get_singleton_tag())
                         for key, view in [*self.slice_views.items(), ("threed", self.threed)]}
        self.input_node = None
        self.volume = None
        self.outputs = None
        self.result = None
        self.upload_path: Path | None = None
        self._task = None
        self._engine_lock = threading.Lock()
        self._init_state(model)

    # -------------------------------------------------------------------------------------- state
    def _init_state(self, model: str | None) -> None:
        from addiagnosis.engine import METHOD_CHOICES
        from addiagnosis.models.package import find_package, list_packages

        packages = list_packages()
        default = find_package(model)
        self.packages = {p.name: p for p in packages}
        self.packages.setdefault(default.name, default)
        s = self.state
        s.trame__title = "ADDiagnosis"
        s.research_use = RESEARCH_USE
        s.models = sorted(self.packages)
        s.model = default.name
        s.methods = list(METHOD_CHOICES)
        s.method = METHOD_CHOICES[0]
        s.targets = []
        s.target = "predicted"
        s.scan_name = ""
        s.scan_info = ""
        s.has_scan = False
        s.busy = False
        s.uploading = False
        s.progress = 0
        s.stage = ""
        s.message = ""
        self._reset_result()
        s.download_stamp = 0
        s.opacity = 0.6
        s.top_percent = 5.0
        for key, _ in VIEW_KEYS:
            s[f"slice_{key}"] = 0.0
            s[f"slice_{key}_min"] = 0.0
            s[f"slice_{key}_max"] = 1.0
            s[f"slice_{key}_step"] = 1.0
        self._set_targets(default.name)
        s.change("model")(self._on_model)
        s.change("opacity")(self._on_opacity)
        s.change("top_percent")(self._on_top_percent)
        for key, _ in VIEW_KEYS:
            s.change(f"slice_{key}")(lambda key=key, **kw: self._on_slice(key, kw[f"slice_{key}"]))

    def _set_targets(self, model: str) -> None:
        names = self.packages[model].class_names if model in self.packages else []
        self.state.targets = ["predicted", *names]
        if self.state.target not in self.state.targets:
            self.state.target = "predicted"

    def _log(self, event: str, outcome: str, **fields) -> None:
        line = access_line(self.session_id, event, outcome, **fields)
        if self.access_log:
            write_access(self.access_log, line)
        else:  # the gateway hands the worker its own stderr as stdout
            print(line, flush=True)

    def _error(self, text: str) -> None:
        self.state.message = " ".join(str(text).split())[:300]  # one line

    # ---------------------------------------------------------------------------------- loading
    def use_example(self) -> None:
        from addiagnosis.resources import default_scan

        try:
            self._load_file(default_scan(), page_label(default_scan().name), "example")
        except AddiagnosisError as exc:
            self._error(str(exc))

    def upload_started(self, name: str, size: float) -> None:
        with self.state:
            self.state.message = ""
            self.state.uploading = True

    def upload_failed(self, name: str, error: str) -> None:
        with self.state:
            self.state.uploading = False
            self._error(f"{page_label(name)}: {error}")
        self._log("upload", "refused")

    def uploaded(self, upload_id: str, name: str) -> None:
        with self.state:
            self.state.uploading = False
            if not isinstance(upload_id, str) or not UPLOAD_ID.match(upload_id):
                self._error("upload failed: unknown upload")
                return
            path = self.uploads / upload_id
            try:
                self._load_file(path, page_label(name), "upload")
            except Exception as exc:
                if not isinstance(exc, AddiagnosisError):
                    logging.getLogger(__name__).exception("showing an upload failed")
                    exc = AddiagnosisError(f"could not show this scan ({type(exc).__name__})")
                path.unlink(missing_ok=True)
                problem = str(getattr(exc, "problem", None) or exc)
                # the reader may quote the stored file: show the user's name, never the server's path
                problem = problem.replace(str(path), page_label(name)).replace(path.name, page_label(name))
                self._error(f"{page_label(name)}: {problem}")
                self._log("scan", "refused")
                return
            if self.upload_path is not None and self.upload_path != path:
                self.upload_path.unlink(missing_ok=True)  # keep only the scan on show
            self.upload_path = path

    def _load_file(self, path: Path, name: str, source: str) -> None:
        """Validate with the engine's reader, then show the scan (its previous scan and results go)."""
        from addiagnosis.io.volume import read_nifti

        volume = read_nifti(path, name=name)  # the engine's checks, before anything else runs
        self._clear_scene()
        with self._renders_held():
            self.input_node = self.runtime.add_volume(volume)
            for view in self.slice_views.values():
                view.set_background_volume_id(self.input_node.GetID())
                view.set_foreground_volume_id(None)
                view.fit_view_to_content()
        self.volume = volume
        s = self.state
        s.scan_name = name
        s.scan_info = ("{} x {} x {} voxels, {:.2g} x {:.2g} x {:.2g} mm".format(*volume.shape, *volume.spacing))
        s.has_scan = True
        s.message = ""
        self._reset_result()
        self._sync_slices()
        self._render()
        self._log("scan", "ok", source=source)

    def _clear_scene(self) -> None:
        from addiagnosis.mrml.scene import output_nodes

        if self.input_node is None:
            return
        nodes = list(output_nodes(self.input_node).values()) + [self.input_node]
        with self._renders_held():
            for node in nodes:
                if node is None or node.GetScene() is not self.scene:
                    continue
                if node.IsA("vtkMRMLDisplayableNode"):
                    for i in reversed(range(node.GetNumberOfDisplayNodes())):
                        disp = node.GetNthDisplayNode(i)
                        if disp is not None:
                            self.scene.RemoveNode(disp)
                self.scene.RemoveNode(node)
        self.input_node = None
        self.outputs = None
        self.volume = None

    def _reset_result(self) -> None:
        s = self.state
        s.has_result = False
        s.predicted = s.predicted_p = s.result_text = s.notice = s.seconds = ""
        s.probs = []
        s.warnings = []
        s.downloads_ready = False
        self.result = None
        import shutil

        shutil.rmtree(self.results, ignore_errors=True)

    # -------------------------------------------------------------------------------- diagnosis
    def diagnose(self) -> None:
        if self.state.busy or self.volume is None:
            return
        self._task = asyncio.ensure_future(self._diagnose())

    async def _diagnose(self) -> None:
        from addiagnosis.engine import get_diagnoser
        from addiagnosis.io.report import write_outputs

        s = self.state
        loop = asyncio.get_running_loop()
        volume, node = self.volume, self.input_node
        model, method = s.model, s.method
        target = None if s.target in ("", "predicted") else s.target
        t0 = time.perf_counter()

        def progress(stage: str, fraction: float) -> None:  # called in the worker thread
            loop.call_soon_threadsafe(self._progress, stage, fraction)

        with s:
            s.busy = True
            s.message = ""
            s.progress = 2
            s.stage = "loading model"
        try:
            def run():
                with self._engine_lock:
                    diagnoser = get_diagnoser(self.packages[model], self.device)
                    return diagnoser.run(volume, method=method, target=target, progress=progress)

            result = await asyncio.to_thread(run)  # the engine works in a thread: the page stays live
            if node is not self.input_node:  # another scan was loaded meanwhile
                return
            t_engine = time.perf_counter() - t0
            self._progress("showing the result", 0.95)
            self.outputs = self._push(node, result)
            self.result = result
            self._show_result(result, time.perf_counter() - t0)
            self._render()
            self._log("diagnose", "ok", seconds=f"{time.perf_counter() - t0:.2f}", engine_s=f"{t_engine:.2f}")
            report = result.report(volume)
            report["source"] = "addiagnosis web"
            await asyncio.to_thread(write_outputs, self.results, volume, result, report)
            with s:
                s.downloads_ready = True
                s.download_stamp = int(time.time() * 1000)
        except AddiagnosisError as exc:
            with s:
                self._error(str(getattr(exc, "problem", None) or exc))
            self._log("diagnose", "refused")
        except Exception as exc:  # a failure of one diagnosis must not take the session down
            logging.getLogger(__name__).exception("diagnosis failed")
            with s:
                self._error(f"diagnosis failed: {type(exc).__name__}: {exc}")
            self._log("diagnose", "error")
        finally:
            with s:
                s.busy = False
                s.stage = ""
                s.progress = 0

    def _progress(self, stage: str, fraction: float) -> None:
        with self.state:
            self.state.stage = stage
            self.state.progress = int(round(100 * max(0.0, min(1.0, fraction))))

    def _push(self, node, result):
        from addiagnosis.mrml.scene import push_results

        with self._renders_held():
            outputs = push_results(self.scene, node, result, vr_logic=self.runtime.vr_logic,
                                   opacity=float(self.state.opacity), top_percent=float(self.state.top_percent))
            focus = (result.summary or {}).get("top1pct_centroid_ras")
            for view in self.slice_views.values():
                view.fit_view_to_content()
                if focus is not None:
                    view.get_view_node().JumpSliceByOffsetting(*[float(v) for v in focus])
                    view._logic.SnapSliceOffsetToIJK()
            self.slice_views["axial"].set_visible_in_3d(True)  # the axial slice gives the 3D view context
            self._oblique_camera(node)
        self._sync_slices()
        return outputs

    def _oblique_camera(self, node) -> None:
        """Look at the scan from front-left-above (as addiagnosis.mrml.views does), so the axial slice shows."""
        bounds = [0.0] * 6
        node.GetRASBounds(bounds)
        centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
        radius = max(bounds[2 * i + 1] - bounds[2 * i] for i in range(3))
        camera = self.threed.get_camera_node()
        if camera is None:
            return
        camera.SetFocalPoint(*centre)
        camera.SetPosition(*[centre[i] + 1.7 * radius * d for i, d in enumerate((-0.62, 0.62, 0.48))])
        camera.SetViewUp(0, 0, 1)
        camera.ResetClippingRange()

    def _show_result(self, result, seconds: float) -> None:
        s = self.state
        with s:
            s.has_result = True
            s.predicted = result.predicted
            s.predicted_p = f"{result.probabilities[result.predicted]:.3f}"
            s.probs = [{"name": c, "p": float(result.probabilities[c]), "text": f"{result.probabilities[c]:.3f}",
                        "width": f"{100.0 * result.probabilities[c]:.1f}%", "top": c == result.predicted}
                       for c in result.class_names]
            s.result_text = (f"relevance ({result.method}) for {result.target}; model {result.model_name} "
                             f"{result.model_version}")
            s.notice = result.model_notice or ""
            s.warnings = list(result.warnings)
            s.seconds = f"{seconds:.1f} s"

    # ---------------------------------------------------------------------------------- display
    def _on_model(self, model, **_):
        self._set_targets(model)

    def _on_opacity(self, opacity, **_):
        if self.outputs is None:
            return
        from addiagnosis.mrml.scene import set_overlay_opacity

        set_overlay_opacity(self.scene, self.outputs.relevance, float(opacity))
        self._render(slices_only=True)

    def _on_top_percent(self, top_percent, **_):
        if self.outputs is None:
            return
        from addiagnosis.mrml.scene import set_top_percent

        set_top_percent(self.outputs.relevance, float(top_percent))
        self._render(slices_only=True)

    def _on_slice(self, key: str, value) -> None:
        view = self.slice_views[key]
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        if abs(view.get_slice_value() - value) > 1e-6:
            view.set_slice_value(value)
            view.schedule_render()

    def _slice_moved(self, key: str) -> None:
        value = float(self.slice_views[key].get_slice_value())
        if self.state[f"slice_{key}"] is not None and abs(float(self.state[f"slice_{key}"]) - value) > 1e-6:
            with self.state:
                self.state[f"slice_{key}"] = value

    def _sync_slices(self) -> None:
        s = self.state
        for key, view in self.slice_views.items():
            lo, hi = view.get_slice_range()
            s[f"slice_{key}_min"] = float(lo)
            s[f"slice_{key}_max"] = float(hi)
            s[f"slice_{key}_step"] = float(view.get_slice_step() or 1.0)
            s[f"slice_{key}"] = float(view.get_slice_value())

    @contextlib.contextmanager
    def _renders_held(self):
        """MRML events schedule no render inside this block; the caller renders once afterwards."""
        views = [*self.slice_views.values(), self.threed]
        blocked = [v for v in views if not v.is_render_blocked]
        for v in blocked:
            v.set_render_blocked(True)
        self.scene.StartState(self.scene.BatchProcessState)
        try:
            yield
        finally:
            self.scene.EndState(self.scene.BatchProcessState)
            for v in blocked:
                v.set_render_blocked(False)

    def _render(self, slices_only: bool = False) -> None:
        views = [*self.slice_views.values()] + ([] if slices_only else [self.threed])
        for view in views:
            view.schedule_render()

    def warm_up(self) -> None:
        """Load the selected model and its reference input before the first Diagnose (in a thread)."""
        from addiagnosis.engine import get_diagnoser

        try:
            with self._engine_lock:
                get_diagnoser(self.packages[self.state.model], self.device).resolve_method(self.state.method)
        except Exception:  # a broken model shows its error when Diagnose is pressed
            pass

    def close(self) -> None:
        self._clear_scene()


async def _watch_parent(parent: int) -> None:
    """A worker whose gateway is gone exits (its folder is the gateway's to delete, or the OS's temp)."""
    while True:
        await asyncio.sleep(2.0)
        if os.getppid() != parent:
            os._exit(0)


def _no_gutter(*_args) -> None:
    """No per-view tool gutter: the page has its own controls."""


def build_ui(server, session: Session) -> None:
    from trame.ui.vuetify3 import VAppLayout
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v

    ctrl = server.controller
    ctrl.trigger("addiagnosis_upload_started")(session.upload_started)
    ctrl.trigger("addiagnosis_uploaded")(session.uploaded)
    ctrl.trigger("addiagnosis_upload_failed")(session.upload_failed)

    with VAppLayout(server, full_height=True, theme="dark") as layout:
        client.Style(CSS)
        with v.VAppBar(density="compact", flat=True, border="b"):
            v.VAppBarTitle("ADDiagnosis", classes="font-weight-bold")
            html.Div("{{ research_use }}", classes="text-caption text-amber-lighten-2 mr-4", id="research-use-bar")
        with v.VNavigationDrawer(permanent=True, width=360, border="e", classes="pa-3"):
            with html.Div(classes="d-flex flex-column ga-3"):
                v.VBtn("Use the example scan", id="use-example", block=True, color="primary", variant="tonal",
                       prepend_icon="mdi-brain", click=session.use_example, disabled=("busy",))
                with html.Label(classes="addiagnosis-drop", id="drop-zone"):
                    html.Input(type="file", accept=".nii,.gz", classes="addiagnosis-file", id="file-input")
                    html.Div("Upload .nii / .nii.gz", classes="text-body-2 font-weight-medium")
                    html.Div("click to choose, or drop a file here", classes="text-caption text-medium-emphasis")
                html.Div("{{ scan_name }}", v_if="has_scan", id="scan-name", classes="text-body-2 font-weight-medium")
                html.Div("{{ scan_info }}", v_if="has_scan", classes="text-caption text-medium-emphasis mt-n3")
                v.VSelect(label="Model", v_model=("model",), items=("models",), density="compact", hide_details=True,
                          disabled=("busy",), id="model-select")
                with html.Div(classes="d-flex ga-2"):
                    v.VSelect(label="Method", v_model=("method",), items=("methods",), density="compact",
                              hide_details=True, disabled=("busy",), id="method-select", style="flex: 3")
                    v.VSelect(label="Explain", v_model=("target",), items=("targets",), density="compact",
                              hide_details=True, disabled=("busy",), id="target-select", style="flex: 2")
                v.VProgressLinear(v_if="uploading", indeterminate=True, color="primary", id="uploading")
                v.VBtn("Diagnose", id="diagnose", block=True, color="deep-orange", size="large",
                       disabled=("busy || uploading || !has_scan",), loading=("busy",), click=session.diagnose)
                with html.Div(v_if="busy", id="progress"):
                    v.VProgressLinear(model_value=("progress",), color="deep-orange", height=6, rounded=True)
                    html.Div("{{ stage }}", classes="text-caption mt-1", id="stage")
                v.VAlert(text=("message",), v_if="message", type="error", density="compact", variant="tonal",
                         id="message", classes="text-body-2")
                with html.Div(v_if="has_result", id="result", classes="d-flex flex-column ga-1"):
                    with html.Div(classes="text-h6"):
                        html.Span("Predicted ")
                        html.Span("{{ predicted }}", id="predicted", classes="text-deep-orange-lighten-1")
                        html.Span(" (p={{ predicted_p }})", classes="text-body-2 text-medium-emphasis")
                    with html.Div(v_for="row in probs", key="row.name", classes="addiagnosis-bar-row"):
                        html.Span("{{ row.name }}", classes="addiagnosis-bar-name")
                        with html.Div(classes="addiagnosis-bar-track"):
                            html.Div(classes=("row.top ? 'addiagnosis-bar top' : 'addiagnosis-bar'",),
                                     style=("{ width: row.width }",))
                        html.Span("{{ row.text }}", classes="addiagnosis-prob", data_class=("row.name",),
                                  data_p=("row.p",), __properties=[("data_class", "data-class"), ("data_p", "data-p")])
                    html.Div("{{ result_text }} · {{ seconds }}", classes="text-caption text-medium-emphasis")
                    html.Div("{{ research_use }}", id="research-use", classes="text-caption text-amber-lighten-2")
                    html.Div("{{ notice }}", v_if="notice", id="notice", classes="text-caption text-amber-lighten-2")
                    html.Div("{{ w }}", v_for="w in warnings", classes="text-caption text-orange")
                with html.Div(v_if="has_result", classes="d-flex flex-column"):
                    v.VSlider(label="Opacity", v_model=("opacity",), min=0, max=1, step=0.05, density="compact",
                              hide_details=True, id="opacity", thumb_label=True)
                    v.VSlider(label="Top %", v_model=("top_percent",), min=0.5, max=50, step=0.5, density="compact",
                              hide_details=True, id="threshold", thumb_label=True)
                with html.Div(v_if="downloads_ready", classes="d-flex flex-wrap ga-2", id="downloads"):
                    for name, icon in zip(DOWNLOADS, ("mdi-cube-outline", "mdi-code-json", "mdi-image")):
                        # a plain link with the download attribute: the page never navigates (its websocket stays)
                        with html.A(href=(f"'download/{name}?t=' + download_stamp",), download=name,
                                    classes="addiagnosis-dl", id=f"download-{name.split('.')[0]}"):
                            v.VIcon(icon, size="small", classes="mr-1")
                            html.Span(name)
        with v.VMain():
            with html.Div(classes="addiagnosis-grid"):
                for key, title in (("axial", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal"),
                                   ("threed", "3D")):
                    with html.Div(classes="addiagnosis-cell", id=f"view-{key}"):
                        with html.Div(classes="addiagnosis-view"):
                            client.ServerTemplate(name=session.view_ids[key])
                        with html.Div(classes="addiagnosis-cell-bar"):
                            html.Span(title, classes=f"addiagnosis-label {key}")
                            if key != "threed":
                                v.VSlider(v_model=(f"slice_{key}",), min=(f"slice_{key}_min",),
                                          max=(f"slice_{key}_max",), step=(f"slice_{key}_step",),
                                          density="compact", hide_details=True, disabled=("!has_scan",),
                                          id=f"slice-{key}", classes="mx-2")
                            else:
                                html.Span("volume rendering of the top relevance", v_if="has_result",
                                          classes="text-caption text-medium-emphasis ml-2")
    return layout


CSS = """
html { overflow: hidden; }
.addiagnosis-drop { display: block; border: 1.5px dashed rgba(255,255,255,.35); border-radius: 8px; padding: 10px;
  text-align: center; cursor: pointer; }
.addiagnosis-drop:hover, body.addiagnosis-dragging .addiagnosis-drop { border-color: #ff7043;
  background: rgba(255,112,67,.08); }
.addiagnosis-drop input { display: none; }
.addiagnosis-grid { display: grid; grid-template-columns: 1fr 1fr; grid-template-rows: 1fr 1fr; gap: 4px;
  height: calc(100vh - 48px); padding: 4px; background: #111; }
.addiagnosis-cell { display: flex; flex-direction: column; min-height: 0; min-width: 0; background: #000;
  border-radius: 4px; overflow: hidden; }
.addiagnosis-view { flex: 1; min-height: 0; position: relative; }
.addiagnosis-cell-bar { display: flex; align-items: center; height: 30px; padding: 0 8px; background: #1c1c1c; }
.addiagnosis-label { font-size: 12px; font-weight: 600; min-width: 64px; }
.addiagnosis-label.axial { color: #F34A33; } .addiagnosis-label.coronal { color: #6DAD4A; }
.addiagnosis-label.sagittal { color: #EFD64D; } .addiagnosis-label.threed { color: #8fa7ff; }
.addiagnosis-bar-row { display: grid; grid-template-columns: 48px 1fr 48px; align-items: center; gap: 6px;
  font-size: 13px; }
.addiagnosis-bar-track { height: 12px; background: rgba(255,255,255,.08); border-radius: 3px; overflow: hidden; }
.addiagnosis-bar { height: 100%; background: #8d6e63; }
.addiagnosis-bar.top { background: #ff7043; }
.addiagnosis-prob { text-align: right; font-variant-numeric: tabular-nums; }
.addiagnosis-dl { display: inline-flex; align-items: center; padding: 3px 10px; border: 1px solid rgba(255,255,255,.4);
  border-radius: 4px; color: inherit; text-decoration: none; font-size: 12px; }
.addiagnosis-dl:hover { border-color: #ff7043; color: #ff8a65; }
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="addiagnosis.web.session")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--session-id", required=True)
    parser.add_argument("--access-log")
    parser.add_argument("--model")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("aiohttp.access", "wslink", "trame_server", "trame_client"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from trame.app import get_server
    from trame_slicer import module as trame_slicer_module

    server = get_server(f"addiagnosis-{args.session_id}", client_type="vue3")
    server.enable_module(trame_slicer_module)
    server.enable_module({"serve": {"addiagnosis": str(STATIC_DIR)}, "scripts": ["addiagnosis/addiagnosis-web.js"]})
    session = Session(server, Path(args.folder), args.session_id, args.access_log, args.model, args.device)
    build_ui(server, session)
    parent = os.getppid()

    @server.controller.add("on_server_ready")
    def _ready(**_):
        # asyncio keeps only weak references to tasks: hold them for the session's life
        session.tasks = [asyncio.ensure_future(asyncio.to_thread(session.warm_up)),
                         asyncio.ensure_future(_watch_parent(parent))]

    try:
        server.start(host="127.0.0.1", port=args.port, open_browser=False, show_connection_info=False, timeout=0,
                     disable_logging=True)
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
