"""The page's compare controls (side panel) and compare views (they take the four views' place while shown).

Bound to a session's :class:`~addiagnosis.web.session.compare.Comparison` (``session.compare``).
"""

from __future__ import annotations

from addiagnosis.web.session.compare import CELLS, DOWNLOADS, KINDS, ORIENTATIONS
from addiagnosis.web.session.state import PageState as S
from addiagnosis.web.session.state import slice_key

KIND_ITEMS = "[" + ", ".join(f"{{title: '{k['title']}', value: '{k['value']}'}}" for k in KINDS) + "]"
DIFFERENCE_KEY = "the colour: red where B holds more of its relevance than A, blue where A holds more"


def compare_panel(session) -> None:
    """Compare with (another class, another method, a follow-up scan), the Compare button, the figures."""
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    compare, followup = session.compare, f"{S.compare_kind} === 'followup'"
    with html.Div(v_if=f"{S.has_result}", id="compare", classes="addiagnosis-compare d-flex flex-column ga-2"):
        html.Div("Compare this map with", classes="text-caption text-medium-emphasis")
        with html.Div(classes="d-flex ga-2"):
            v.VSelect(v_model=(f"{S.compare_kind}",), items=(KIND_ITEMS,), density="compact", hide_details=True,
                      disabled=(f"{S.busy}",), id="compare-kind", style="flex: 1")
            v.VSelect(v_if=f"!({followup})", v_model=(f"{S.compare_choice}",), items=(f"{S.compare_choices}",),
                      density="compact", hide_details=True, disabled=(f"{S.busy}",), id="compare-choice",
                      style="flex: 1")
        with html.Label(v_if=followup, classes="addiagnosis-drop", id="followup-drop"):
            html.Input(type="file", accept=".nii,.gz,.zip", classes="addiagnosis-file", id="followup-input",
                       data_trigger="addiagnosis_followup", __properties=[("data_trigger", "data-trigger")])
            html.Div(f"{{{{ {S.followup_name} || 'Upload the follow-up scan' }}}}", id="followup-name",
                     classes="text-body-2 font-weight-medium")
            html.Div(f"{{{{ {S.followup_info} || 'the same subject, later; .nii / .nii.gz' }}}}",
                     classes="text-caption text-medium-emphasis")
        v.VBtn("Compare", id="compare-run", block=True, color="indigo", variant="tonal", click=compare.start,
               prepend_icon="mdi-compare-horizontal", loading=(f"{S.busy}",),
               disabled=(f"{S.busy} || ({followup} ? !{S.followup_name} : !{S.compare_choice})",))
        with html.Div(v_if=f"{S.compare_text}.length", id="compare-figures", classes="d-flex flex-column"):
            html.Div(f"{{{{ {S.compare_title_a} }}}} vs {{{{ {S.compare_title_b} }}}}",
                     classes="text-caption font-weight-medium")
            html.Div("{{ line }}", v_for=f"line in {S.compare_text}", classes="text-caption addiagnosis-figure")
            html.Div(DIFFERENCE_KEY, classes="text-caption text-medium-emphasis")
            html.Div(f"{{{{ {S.research_use} }}}}", id="compare-research-use",
                     classes="text-caption text-amber-lighten-2")
            with html.Div(classes="d-flex flex-wrap ga-2 mt-1"):
                v.VBtn(f"{{{{ {S.compare_shown} ? 'Back to the four views' : 'Show the comparison' }}}}",
                       id="compare-toggle", size="small", variant="outlined",
                       click=f"{S.compare_shown} = !{S.compare_shown}")
                for name in DOWNLOADS:
                    with html.A(v_if=f"{S.compare_downloads}", href=(f"'download/{name}?t=' + {S.compare_downloads}",),
                                download=name, classes="addiagnosis-dl", id=f"download-{name.split('.')[0]}"):
                        html.Span(name)


def compare_grid(session) -> None:
    """A, B and B - A in three linked slice views, each with its slider; the orientation and the regions."""
    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v

    titles = {"compare_a": f"{S.compare_title_a}", "compare_b": f"{S.compare_title_b}",
              "compare_diff": "'B - A (share of relevance per mL)'"}
    with html.Div(v_show=f"{S.compare_shown}", classes="addiagnosis-grid", id="compare-grid"):
        for key, _ in CELLS:
            with html.Div(classes="addiagnosis-cell", id=f"view-{key}"):
                with html.Div(classes="addiagnosis-view"):
                    client.ServerTemplate(name=session.compare.template_names[key])
                    html.Div(f"{{{{ {titles[key]} }}}}", classes="addiagnosis-compare-title")
                with html.Div(classes="addiagnosis-cell-bar"):
                    with html.Div(classes="addiagnosis-slice", id=f"slice-{key}"):
                        v.VSlider(v_model=(slice_key(key),), min=(slice_key(key, "min"),),
                                  max=(slice_key(key, "max"),), step=(slice_key(key, "step"),), density="compact",
                                  hide_details=True, classes="mx-2")
                        html.Span(f"{{{{ Number({slice_key(key)}).toFixed(1) }}}} mm",
                                  classes="addiagnosis-slider-value", id=f"slice-{key}-value")
        with html.Div(classes="addiagnosis-cell addiagnosis-compare-info pa-2", id="view-compare-info"):
            with v.VBtnToggle(v_model=(f"{S.compare_orientation}",), mandatory=True, density="compact",
                              variant="outlined", divided=True, id="compare-orientation"):
                for orientation in ORIENTATIONS:
                    v.VBtn(orientation, value=orientation, size="small")
            html.Div("Regions whose share changed most (A \u2192 B, points)", classes="text-caption mt-2")
            with html.Div(v_for=f"r in {S.compare_regions}", key="r.region", classes="addiagnosis-compare-region"):
                html.Span("{{ r.region }}", classes="addiagnosis-cluster-region")
                html.Span("{{ r.text }} ({{ r.change }})", classes="addiagnosis-slider-value")
            html.Div(f"{{{{ {S.research_use} }}}}", classes="text-caption text-amber-lighten-2 mt-2")
