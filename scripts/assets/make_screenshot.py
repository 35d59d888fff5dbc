"""Make the README screenshot with the headless renderer: Slicer's own axial/coronal/sagittal/3D views.

Run: .venv/bin/python scripts/assets/make_screenshot.py [scan.nii.gz] [--model NAME_OR_FOLDER] [--out PNG]
Defaults: the bundled example scan and model when present; otherwise a synthetic AD-like subject
(addiagnosis.research.synth) and a random-weights model, and the caption says so.
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

from PIL import Image, ImageDraw  # noqa: E402

from addiagnosis import RESEARCH_USE  # noqa: E402
from addiagnosis.engine import diagnose  # noqa: E402
from addiagnosis.io.volume import read_nifti  # noqa: E402
from addiagnosis.mrml.views import render_views  # noqa: E402

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
    files = render_views(vol, result, tmp / "views", size=(400, 400))
    tiles = [Image.open(files[k]).convert("RGB") for k in ("axial", "coronal", "sagittal", "3d")]
    w, h = tiles[0].size
    sheet = Image.new("RGB", (2 * w, 2 * h + 44), (20, 20, 20))
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % 2) * w, (n // 2) * h))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 2 * h + 6), f"Predicted {result.predicted}; relevance of {result.target} ({result.method}); "
              f"{note}", fill=(235, 235, 235))
    draw.text((8, 2 * h + 24), RESEARCH_USE + (f"  {result.model_notice}" if result.model_notice else ""),
              fill=(255, 190, 90))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
