"""Checks of the extension's data files (the .ui XML, the extension metadata); the module's behaviour is
tested by running it against Slicer's own Python layer (test_module_slicer.py)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "ADDiagnosis" / "Resources" / "UI" / "ADDiagnosis.ui"


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget") if w.get("name")}


def test_ui_is_designer_xml_with_declared_custom_widgets():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.findtext("class") == "ADDiagnosis"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    qt = {c for c in used if c.startswith("Q")}
    assert used - qt <= declared


def test_extension_metadata():
    top = (ROOT / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                  "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({field} \"[^\"]+\"\)", top), field
    assert 'set(EXTENSION_CATEGORY "Neuroimaging")' in top and 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(ADDiagnosis)" in top
    entry = json.loads((ROOT / "ADDiagnosis.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}  # catalog entry schema v1.0.1: additionalProperties false
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["category"] == "Neuroimaging" and entry["build_dependencies"] == ["PyTorch"]


def test_cmake_selects_the_engine_and_the_data_the_module_needs():
    """What the CMake lists select (evaluated, globs expanded); test_module_slicer.py compares it with the files
    the module and its worker open while running."""
    from cmake_files import installed_files

    installed = installed_files(ROOT / "ADDiagnosis" / "CMakeLists.txt")
    logic = ROOT / "ADDiagnosis" / "Logic"
    engine = {f"Logic/{p.relative_to(logic).as_posix()}" for p in (logic / "addiagnosis").rglob("*.py")}
    assert "Logic/addiagnosis/io/volume.py" in engine  # the layer subpackages are there to be installed
    assert engine <= installed and "ADDiagnosis.py" in installed
    for p in (ROOT / "ADDiagnosis" / "Resources").rglob("*"):
        if p.is_file() and p.parts[-3] != "Icons" and ("Models" in p.parts or "SampleData" in p.parts):
            assert p.relative_to(ROOT / "ADDiagnosis").as_posix() in installed
    assert all((ROOT / "ADDiagnosis" / f).is_file() for f in installed)


@pytest.mark.parametrize("widget", ["diagnoseButton", "importButton", "loadExampleButton", "opacitySlider",
                                    "thresholdSlider", "modelSelector", "targetSelector", "deviceSelector",
                                    "inputSelector", "compareSelector", "compareTargetSelector",
                                    "compareMethodSelector", "compareRunButton", "keepMapsCheckBox",
                                    "differenceCheckBox", "compareButton", "leaveCompareButton"])
def test_widget_has_tooltip(widget):
    props = {p.get("name") for p in ui_widgets()[widget].findall("property")}
    assert "toolTip" in props
