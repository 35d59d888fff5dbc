"""Where the module's shipped resources are: the bundled model packages and the example scan.

The engine lives in ``ADDiagnosis/Logic/addiagnosis``; the resources beside the Slicer module in
``ADDiagnosis/Resources`` (installed there by the module's CMake as well).
"""

from __future__ import annotations

from pathlib import Path

from addiagnosis.errors import InputError

RESOURCES_DIR = Path(__file__).resolve().parents[2] / "Resources"
BUNDLED_MODELS_DIR = RESOURCES_DIR / "Models"
SAMPLE_DIR = RESOURCES_DIR / "SampleData"


def default_scan() -> Path:
    """The bundled example scan: what ``diagnose`` with no SCAN, the web app and the self-test use."""
    scans = sorted(SAMPLE_DIR.glob("*.nii.gz")) + sorted(SAMPLE_DIR.glob("*.nii"))
    if not scans:
        raise InputError("no SCAN given and no bundled example scan found", SAMPLE_DIR)
    return scans[0]
