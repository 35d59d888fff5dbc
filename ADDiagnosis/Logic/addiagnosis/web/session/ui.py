"""The page of one web session (trame, Vuetify 3): the side panel of controls and results, and the four views.

Built once per session from :class:`~addiagnosis.web.session.state.PageState`'s keys and the session's actions;
the styles are in ``static/addiagnosis-web.css``, the upload script in ``static/addiagnosis-web.js``.
"""

from __future__ import annotations

from addiagnosis.web.common import DOWNLOADS
from addiagnosis.web.session.compare_ui import compare_grid, compare_panel
from addiagnosis.web.session.state import VIEWS, slice_key
from addiagnosis.web.session.state import PageState as S

DOWNLOAD_ICONS = ("mdi-cube-outline", "mdi-code-json", "mdi-image")


def build_ui(server, session):
    """The page's layout, bound to ``session`` (a :class:`~addiagnosis.web.session.logic.Session`)."""
    from trame.ui.vuetify3 import VAppLayout
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    ctrl = server.controller
    ctrl.trigger("addiagnosis_upload_started")(session.upload_started)
    ctrl.trigger("addiagnosis_uploaded")(session.uploaded)
    ctrl.trigger("addiagnosis_upload_failed")(session.upload_failed)
    with VAppLayout(server, full_height=True, theme="dark") as layout:
        _app_bar()
        with v.VNavigationDrawer(permanent=True, width=360, border="e", classes="addiagnosis-panel"):
            with html.Div(classes="d-flex flex-column ga-2 pa-3"):
                _scan_controls(session)
                _result(session)
                _display_controls(session)
                _downloads()
                compare_panel(session)
        with v.VMain():
            _view_grid(session)
            compare_grid(session)
    return layout


def _app_bar() -> None:
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    with v.VAppBar(density="compact", flat=True, border="b"):
        v.VAppBarTitle("ADDiagnosis", classes="font-weight-bold")
        html.Div(f"{{{{ {S.research_use} }}}}", classes="text-caption text-amber-lighten-2 mr-4",
                 id="research-use-bar")


def _scan_controls(session) -> None:
    """Scan (example or upload), model, method, class explained, Diagnose and its progress."""
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    with html.Div(classes="addiagnosis-sources"):
        v.VBtn("Example scan", id="use-example", color="primary", variant="tonal", height="auto",
               prepend_icon="mdi-brain", click=session.use_example, disabled=(f"{S.busy}",))
        with html.Label(classes="addiagnosis-drop", id="drop-zone"):
            html.Input(type="file", accept=".nii,.gz,.zip", classes="addiagnosis-file", id="file-input")
            html.Div("Upload .nii / .nii.gz", classes="text-body-2 font-weight-medium")
            html.Div("click, or drop a file here", classes="text-caption text-medium-emphasis")
    html.Div(f"{{{{ {S.scan_name} }}}}", v_if=f"{S.has_scan}", id="scan-name", classes="text-body-2 font-weight-medium")
    html.Div(f"{{{{ {S.scan_info} }}}}", v_if=f"{S.has_scan}", id="scan-info",
             classes="text-caption text-medium-emphasis mt-n3")
    v.VSelect(label="Model", v_model=(f"{S.model}",), items=(f"{S.models}",), density="compact", hide_details=True,
              disabled=(f"{S.busy}",), id="model-select")
    with html.Div(classes="d-flex ga-2"):
        v.VSelect(label="Method", v_model=(f"{S.method}",), items=(f"{S.methods}",), density="compact",
                  hide_details=True, disabled=(f"{S.busy}",), id="method-select", style="flex: 5")
        v.VSelect(label="Explain", v_model=(f"{S.target}",), items=(f"{S.targets}",), density="compact",
                  hide_details=True, disabled=(f"{S.busy}",), id="target-select", style="flex: 4")
    v.VProgressLinear(v_if=f"{S.uploading}", indeterminate=True, color="primary", id="uploading")
    v.VBtn("Diagnose", id="diagnose", block=True, color="deep-orange", size="large",
           disabled=(f"{S.busy} || {S.uploading} || !{S.has_scan}",), loading=(f"{S.busy}",), click=session.diagnose)
    with html.Div(v_if=f"{S.busy}", id="progress"):
        v.VProgressLinear(model_value=(f"{S.progress}",), color="deep-orange", height=6, rounded=True)
        html.Div(f"{{{{ {S.stage} }}}}", classes="text-caption mt-1", id="stage")
    v.VAlert(text=(f"{S.message}",), v_if=f"{S.message}", type="error", density="compact", variant="tonal",
             id="message", classes="text-body-2")


def _result(session) -> None:
    """Predicted class, a bar per class, what was explained, the research-use line and the model's notice."""
    from trame.widgets import html

    html.Div("Method or class changed since this result: Diagnose again to update it.", v_if=f"{S.stale}",
             id="stale", classes="text-caption text-orange")
    html.Div(f"{{{{ {S.verdict_text} }}}}", v_if=f"{S.has_result} && {S.verdict_text}", id="verdict",
             classes=(f"'addiagnosis-verdict ' + {S.verdict}",))
    with html.Div(v_if=f"{S.has_result}", id="result",
                  classes=(f"'d-flex flex-column ga-1' + ({S.stale} ? ' addiagnosis-stale' : '')"
                           f" + ({S.verdict} === 'fail' ? ' addiagnosis-failed' : '')",)):
        with html.Div(classes="text-h6"):
            html.Span(f"{{{{ {S.verdict} === 'fail' ? 'For reference only: ' : 'Predicted ' }}}}")
            html.Span(f"{{{{ {S.predicted} }}}}", id="predicted", classes="text-deep-orange-lighten-1")
            html.Span(f" (p={{{{ {S.predicted_p} }}}})", classes="text-body-2 text-medium-emphasis")
        html.Div(f"{{{{ {S.prediction_set} }}}}", v_if=f"{S.prediction_set}", id="prediction-set",
                 classes="text-body-2")
        with html.Div(v_for=f"row in {S.probs}", key="row.name", classes="addiagnosis-bar-row"):
            html.Span("{{ row.name }}", classes="addiagnosis-bar-name")
            with html.Div(classes="addiagnosis-bar-track"):
                html.Div(classes=("row.top ? 'addiagnosis-bar top' : 'addiagnosis-bar'",),
                         style=("{ width: row.width }",))
            html.Span("{{ row.text }}", classes="addiagnosis-prob", data_class=("row.name",), data_p=("row.p",),
                      __properties=[("data_class", "data-class"), ("data_p", "data-p")])
        html.Div(f"{{{{ {S.result_text} }}}} · {{{{ {S.seconds} }}}}", classes="text-caption text-medium-emphasis")
        html.Div(f"{{{{ {S.research_use} }}}}", id="research-use", classes="text-caption text-amber-lighten-2")
        html.Div(f"{{{{ {S.notice} }}}}", v_if=f"{S.notice}", id="notice", classes="text-caption text-amber-lighten-2")
        html.Div("{{ w }}", v_for=f"w in {S.warnings}", classes="text-caption text-orange")


def _display_controls(session) -> None:
    """Opacity and Top % of the overlay, each with its value; the threshold they give; reset of the views."""
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    with html.Div(v_if=f"{S.has_result}", classes="d-flex flex-column"):
        _slider_row("Opacity", S.opacity, (0, 1, 0.05), f"Number({S.opacity}).toFixed(2)", "opacity")
        _slider_row("Top %", S.top_percent, (0.5, 50, 0.5), f"Number({S.top_percent}).toFixed(1) + ' %'", "threshold")
        html.Div(f"{{{{ {S.threshold_text} }}}}", id="threshold-text", classes="text-caption text-medium-emphasis")
        _clusters(session)
    v.VBtn("Reset views", id="reset-view", v_if=f"{S.has_scan}", size="small", variant="outlined",
           prepend_icon="mdi-image-filter-center-focus", click=session.reset_view, classes="align-self-start")


def _clusters(session) -> None:
    """The clusters above the threshold, largest share first: a click moves every slice view to the peak."""
    from trame.widgets import html

    with html.Div(v_if=f"{S.clusters}.length", id="clusters", classes="addiagnosis-clusters mt-2"):
        html.Div("Clusters (region at the peak): click to go there", classes="text-caption text-medium-emphasis")
        with html.Div(v_for=f"c in {S.clusters}", key="c.index",
                      classes=(f"'addiagnosis-cluster' + (c.index === {S.cluster_index} ? ' selected' : '')",),
                      click=(session.go_to_cluster, "[c.index]"), data_index=("c.index",),
                      __properties=[("data_index", "data-index")]):
            html.Span("{{ c.index }}. {{ c.region }}", classes="addiagnosis-cluster-region")
            html.Span("{{ c.text }}", classes="addiagnosis-slider-value")


def _slider_row(label: str, key, limits, value_text: str, row_id: str) -> None:
    """A labelled slider with its value written beside it (the row carries the id: Vuetify puts a slider's own
    id on two elements)."""
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    low, high, step = limits
    with html.Div(classes="addiagnosis-slider-row", id=row_id):
        html.Span(label, classes="addiagnosis-slider-label")
        v.VSlider(v_model=(f"{key}",), min=low, max=high, step=step, density="compact", hide_details=True)
        html.Span(f"{{{{ {value_text} }}}}", classes="addiagnosis-slider-value", id=f"{row_id}-value")


def _downloads() -> None:
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    with html.Div(v_if=f"{S.downloads_ready}", classes="d-flex flex-wrap ga-2", id="downloads"):
        for name, icon in zip(DOWNLOADS, DOWNLOAD_ICONS):
            # a plain link with the download attribute: the page never navigates (its websocket stays)
            with html.A(href=(f"'download/{name}?t=' + {S.download_stamp}",), download=name,
                        classes="addiagnosis-dl", id=f"download-{name.split('.')[0]}"):
                v.VIcon(icon, size="small", classes="mr-1")
                html.Span(name)


def _view_grid(session) -> None:
    """Axial, coronal, sagittal and 3D views, each with a bar under it (a slice slider for the slice views)."""
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v

    with html.Div(classes="addiagnosis-grid", v_show=f"!{S.compare_shown}"):
        for key, title in (*VIEWS, ("threed", "3D")):
            with html.Div(classes="addiagnosis-cell", id=f"view-{key}"):
                pointer = ("[" + repr(key) + ", ($event.clientX - $event.currentTarget.getBoundingClientRect().left)"
                           " / $event.currentTarget.clientWidth, ($event.clientY - $event.currentTarget"
                           ".getBoundingClientRect().top) / $event.currentTarget.clientHeight]")
                events = {} if key == "threed" else {"mousemove": (session.cursor, pointer)}
                with html.Div(classes="addiagnosis-view", **events):
                    client.ServerTemplate(name=session.views.template_names[key])
                with html.Div(classes="addiagnosis-cell-bar"):
                    html.Span(title, classes=f"addiagnosis-label {key}")
                    if key == "threed":
                        html.Span("volume rendering of the top relevance", v_if=f"{S.has_result} && !{S.cursor_text}",
                                  classes="text-caption text-medium-emphasis ml-2")
                        html.Span(f"{{{{ {S.cursor_text} }}}}", id="cursor-readout",
                                  classes="addiagnosis-readout text-caption ml-2")
                        continue
                    with html.Div(classes="addiagnosis-slice", id=f"slice-{key}"):
                        v.VSlider(v_model=(slice_key(key),), min=(slice_key(key, "min"),),
                                  max=(slice_key(key, "max"),), step=(slice_key(key, "step"),), density="compact",
                                  hide_details=True, disabled=(f"!{S.has_scan}",), classes="mx-2")
                        html.Span(f"{{{{ Number({slice_key(key)}).toFixed(1) }}}} mm", v_if=f"{S.has_scan}",
                                  classes="addiagnosis-slider-value", id=f"slice-{key}-value")
