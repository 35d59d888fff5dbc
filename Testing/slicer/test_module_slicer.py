"""ADDiagnosis.py run against Slicer's OWN Python layer (5.8.1 and 5.10.0) on real slicer-core MRML.

Each release tag runs in its own process (fresh ``sys.modules``):
``Testing/support/slicer_standins/module_scenarios.py``
with the tag's ``slicer.util``, ``ScriptedLoadableModule``, ``parameterNodeWrapper``, ``i18n`` and Sample Data
read in place from ``../shared/slicer-python/<tag>/`` (never copied here; skipped where absent). Only the
PythonQt widgets and ``slicer.app`` are stood in (Testing/support/slicer_standins/), and ``PythonSlicer`` is a
launcher stand-in with the real one's process structure (a parent that starts the real Python as its child and
waits), first on PATH where the module looks for it. The scenarios cover the warm worker (a second click reuses
it; model, method and device changes; Cancel then Diagnose), Cancel at start, in preprocessing, in the
explanation and on the time limit (no process of the job alive 1 s later), a killed Slicer (its worker leaves),
the idle time, failed starts and the self-test (nothing left in the temporary folder). The figures measured
there (click-to-overlay cold and warm, GIL free and held, Cancel to no process, worker memory) are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "Testing" / "support" / "slicer_standins"
sys.path.insert(0, str(STANDINS))
from launcher import make_launcher  # noqa: E402
from slicer_app import SLICER_PYTHON, available_tags  # noqa: E402

TAGS = available_tags()
NEWEST = max(TAGS, key=lambda t: tuple(int(x) for x in t.lstrip("v").split("."))) if TAGS else None
pytestmark = pytest.mark.skipif(not TAGS, reason=f"Slicer's Python layer not found in {SLICER_PYTHON}")


def run_tag(tag: str, tmp_path: Path, scenarios: Path = STANDINS / "module_scenarios.py") -> tuple[dict, list[str]]:
    """Run the ``scenarios`` file (pytest) against Slicer's Python layer of ``tag``, in a process of its own;
    returns the figures it measured and the files the module and its worker opened."""
    metrics, opened = tmp_path / "metrics.json", tmp_path / "opened.txt"
    launcher = make_launcher(tmp_path / "bin")  # PythonSlicer, found on PATH as in an installed Slicer
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ)
    env.update({"PATH": os.pathsep.join([str(launcher.parent), env.get("PATH", "")]), "TMPDIR": str(tmp_path / "tmp"),
                "ADDIAGNOSIS_SLICER_TAG": tag, "ADDIAGNOSIS_SLICER_METRICS": str(metrics),
                "ADDIAGNOSIS_OPEN_LOG": str(opened), "ADDIAGNOSIS_SLICER_DEPS": "1" if tag == NEWEST else "0",
                "ADDIAGNOSIS_HOME": str(tmp_path / "home"),
                "PYTHONPATH": os.pathsep.join([str(STANDINS / "blocker"), str(ROOT / "ADDiagnosis" / "Logic")])})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "--noconftest", "-p", "no:cacheprovider",
                           "-W", "ignore::DeprecationWarning", str(scenarios)],
                          cwd=str(STANDINS), env=env, capture_output=True, text=True, timeout=1500)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, f"Slicer {tag} scenarios failed:\n{tail}"
    figures = json.loads(metrics.read_text()) if metrics.exists() else {}
    return figures, opened.read_text().splitlines() if opened.exists() else []


OPENED: dict[str, list[str]] = {}


@pytest.mark.parametrize("tag", TAGS)
def test_module_against_slicer_python(tag, tmp_path):
    metrics, opened = run_tag(tag, tmp_path)
    OPENED[tag] = opened
    print(f"\nSlicer {tag}: " + json.dumps({k: v for k, v in metrics.items() if k != "probabilities"}))
    assert metrics["gil_ratio"] <= 1.5 and max(metrics["cancel_to_no_process_s"].values()) < 1.0
    assert set(metrics["cancel_to_no_process_s"]) == {"start", "preprocessing", "explaining", "time limit"}
    assert max(metrics["probabilities"], key=metrics["probabilities"].get) == "AD"


@pytest.mark.parametrize("tag", TAGS)
def test_compare_section_against_slicer_python(tag, tmp_path):
    """The panel's Compare section (issue 20 item 4), each tag in its own process: Testing/slicer/compare_scenarios.py
    (two Diagnoses, the compare layout with linked slices, the figures, the difference, the way back)."""
    run_tag(tag, tmp_path, Path(__file__).resolve().parent / "compare_scenarios.py")


def test_cmake_installs_every_file_the_module_opens(tmp_path):
    """The files opened at run time (module process and worker, all scenarios) are all installed by CMake."""
    from cmake_files import installed_files

    opened = OPENED.get(NEWEST) or run_tag(NEWEST, tmp_path)[1]
    module_dir = (ROOT / "ADDiagnosis").resolve()
    used = set()
    for line in opened:
        p = Path(line)
        if module_dir not in p.parents or not p.exists() and "__pycache__" not in p.parts:
            continue
        if any(part.endswith(".egg-info") for part in p.parts):  # pip's metadata of a development install
            continue
        if "__pycache__" in p.parts:  # compiled import: the source file is what is installed
            p = p.parent.parent / (p.name.split(".")[0] + ".py")
        used.add(p.relative_to(module_dir).as_posix())
    installed = installed_files(module_dir / "CMakeLists.txt")
    assert {"ADDiagnosis.py", "Resources/UI/ADDiagnosis.ui", "Logic/addiagnosis/worker/server.py",
            "Resources/SampleData/synthetic-AD-subject.nii.gz",
            "Resources/Models/addiagnosis-synthetic-demo/template-mni152-2mm.npz",
            "Resources/Models/addiagnosis-synthetic-demo/weights.pt"} <= used
    missing = sorted(used - installed)
    assert not missing, f"opened at run time but not installed by ADDiagnosis/CMakeLists.txt: {missing}"
