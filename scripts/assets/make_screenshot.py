"""Make the README screenshot with the headless renderer: Slicer's own axial/coronal/sagittal/3D views.

Run: .venv/bin/python scripts/assets/make_screenshot.py [scan.nii.gz] [--model NAME_OR_FOLDER] [--out PNG]
Defaults: the bundled example scan and model when present; otherwise a synthetic AD-like subject
(addiagnosis.research.synth) and a random-weights model, and the caption says so. The picture is
addiagnosis.mrml.views.views_sheet's, the function Testing/integration/test_views.py checks and that remakes
docs/images/slicer-views.png with ``ADDIAGNOSIS_SCREENSHOTS=docs/images``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))

from addiagnosis.engine import diagnose  # noqa: E402
from addiagnosis.io.volume import read_nifti  # noqa: E402
from addiagnosis.mrml.views import views_sheet  # noqa: E402

RESOURCES = ROOT / "ADDiagnosis" / "Resources"


def bundled_example() -> Path | None:
    for path in sorted(RESOURCES.rglob("*.nii*")):
        if "Models" not in path.parts:
            return path
    return None


def fallback_case(tmp: Path):
    import torch

    from addiagnosis.models.network import ClassificationModel3D
    from addiagnosis.models.package import write_package
    from addiagnosis.research.synth import make_subject, subject_params

    vol, _, _ = make_subject(subject_params(0, 0, "AD"))
    torch.manual_seed(0)
    model = ClassificationModel3D((80, 88, 80), 5).eval()
    card = {"name": "random-demo", "version": "0", "class_names": ["CN", "EMCI", "MCI", "LMCI", "AD"],
            "input_grid": {"shape": [80, 88, 80], "spacing": [2, 2, 2], "orientation": "RAS"},
            "preprocessing": {"kind": "physical"}, "intended_use": "screenshot only",
            "training_data": "none (random weights)"}
    pkg = write_package(tmp / "random-demo", model.state_dict(), card)
    return vol, pkg, "synthetic subject, random-weights model (illustration only)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scan", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "slicer-views.png"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    scan = Path(args.scan) if args.scan else bundled_example()
    if scan is not None:
        vol, package, note = read_nifti(scan), args.model, f"{scan.name}"
        try:
            result = diagnose(vol, package)
        except Exception as exc:  # no bundled model yet
            print(f"bundled model not usable ({exc}); using a random-weights model", file=sys.stderr)
            _, package, _ = fallback_case(tmp)
            result, note = diagnose(vol, package), f"{scan.name}, random-weights model (illustration only)"
    else:
        vol, package, note = fallback_case(tmp)
        result = diagnose(vol, package)
    out = views_sheet(vol, result, Path(args.out), note)
    print(out)


if __name__ == "__main__":
    main()
