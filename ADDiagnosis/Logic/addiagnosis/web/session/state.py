"""The page state of one web session: every entry the page and the session share, named once.

trame keeps the page state as a dict of names; :class:`PageState` declares each name once, with its default
and its group (what is reset together), and gives typed attribute access to it (``page.busy = True``). In
templates a key is written as itself (``f"{S.busy} || !{S.has_scan}"``, ``S = PageState``), so a misspelt
name fails when the page is built, not silently in the browser.
"""

from __future__ import annotations

import copy

from addiagnosis import RESEARCH_USE

VIEWS = (("axial", "Axial"), ("coronal", "Coronal"), ("sagittal", "Sagittal"))
SLICE_PARTS = ("value", "min", "max", "step")


class Key:
    """One entry of the page state: its name, default and group; a descriptor on :class:`PageState`."""

    def __init__(self, default, group: str = "page", name: str | None = None):
        self.default = default
        self.group = group
        self.name = name or ""

    def __set_name__(self, owner, name: str) -> None:
        self.name = self.name or name

    def __get__(self, page, owner=None):
        return self if page is None else page.trame[self.name]

    def __set__(self, page, value) -> None:
        page.trame[self.name] = value

    def __str__(self) -> str:  # the name, as templates write it
        return self.name


def slice_key(view: str, part: str = "value") -> str:
    """Name of a slice slider's entry: ``slice_axial`` (position, mm), ``slice_axial_min``, ``_max``, ``_step``."""
    return f"slice_{view}" if part == "value" else f"slice_{view}_{part}"


class PageState:
    """Typed access to a trame state (``server.state``) with every entry declared here."""

    title = Key("ADDiagnosis", name="trame__title")
    research_use = Key(RESEARCH_USE)
    # model, method and the class explained
    models = Key([])
    model = Key("")
    methods = Key([])
    method = Key("")
    targets = Key(["predicted"])
    target = Key("predicted")
    # the scan on show
    scan_name = Key("", "scan")
    scan_info = Key("", "scan")
    has_scan = Key(False, "scan")
    # work in progress and its messages
    busy = Key(False)
    uploading = Key(False)
    progress = Key(0)
    stage = Key("")
    message = Key("")
    # the result on show
    has_result = Key(False, "result")
    stale = Key(False, "result")  # method or target changed since this result was made
    predicted = Key("", "result")
    predicted_p = Key("", "result")
    probs = Key([], "result")  # [{name, p, text, width, top}] one row per class
    result_text = Key("", "result")
    notice = Key("", "result")
    warnings = Key([], "result")
    verdict = Key("pass", "result")  # the input's quality control: pass / warn / fail (prep.qc)
    verdict_text = Key("", "result")  # "check: ..." (yellow) or "not interpretable: ..." (red)
    prediction_set = Key("", "result")  # "90 % set: LMCI, AD" (the card's conformal sets)
    seconds = Key("", "result")
    threshold_text = Key("", "result")  # the Top % threshold as a value and the shares it shows
    clusters = Key([], "result")  # [{index, text, ras}]: clusters above the threshold, largest share first
    cluster_index = Key(0, "result")  # the cluster row last clicked (the slices went to its peak); 0: none
    cursor_text = Key("", "result")  # what the pointer reads in a slice view: position, intensity, relevance, region
    downloads_ready = Key(False, "result")
    download_stamp = Key(0)
    # display controls
    opacity = Key(0.6)
    top_percent = Key(5.0)
    # comparison with another map (web/session/compare.py): what to compare with, then the comparison on show
    compare_kind = Key("target")  # "target", "method" or "followup"
    compare_choices = Key([])  # the classes or methods A can be compared with
    compare_choice = Key("")
    compare_orientation = Key("Axial")
    followup_name = Key("", "compare")  # the follow-up scan's label (its grid under it)
    followup_info = Key("", "compare")
    compare_shown = Key(False, "compare")  # the compare views replace the four views
    compare_title_a = Key("", "compare")
    compare_title_b = Key("", "compare")
    compare_figures = Key({}, "compare")  # the engine's figures (explain.comparison.summarise), as numbers
    compare_text = Key([], "compare")  # the same in lines for the panel
    compare_regions = Key([], "compare")  # [{region, a, b, change}] the regions whose share changed most
    compare_downloads = Key(0, "compare")  # stamp of comparison.json and difference.nii.gz (0: none yet)

    def __init__(self, trame_state):
        self.trame = trame_state

    @classmethod
    def keys(cls, *groups: str) -> list[Key]:
        """The declared keys (of these groups, when given)."""
        found = [v for v in vars(cls).values() if isinstance(v, Key)]
        return [k for k in found if not groups or k.group in groups]

    def reset(self, *groups: str) -> None:
        """Every key of these groups (all when none given) back to its default; slices too when asked or all."""
        for key in self.keys(*groups):
            self.trame[key.name] = copy.deepcopy(key.default)
        if not groups or "slices" in groups:
            for view, _ in VIEWS:
                self.set_slice(view, 0.0, 0.0, 1.0, 1.0)

    def on_change(self, key: Key | str, handler) -> None:
        """``handler(**state)`` when the entry changes (in the page or here)."""
        self.trame.change(str(key))(handler)

    def set_slice(self, view: str, value: float, low: float, high: float, step: float) -> None:
        for part, number in zip(SLICE_PARTS, (value, low, high, step)):
            self.trame[slice_key(view, part)] = float(number)

    def slice_value(self, view: str) -> float | None:
        value = self.trame[slice_key(view)]
        return None if value is None else float(value)

    def __enter__(self):  # a block of changes goes to the page as one update
        self.trame.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.trame.__exit__(*exc)
