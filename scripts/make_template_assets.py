"""Put the registration template into a template-preprocessed model package (default: the bundled one).

Writes ``template-mni152-2mm.npz`` (head template, brain mask, IJK->RAS: exactly what template alignment
uses, made from nilearn's MNI152 once, here) and lists it with its SHA-256 in the card
(``preprocessing.template_assets``), so the package runs without nilearn. Usage:

    PYTHONPATH=ADDiagnosis/Logic python scripts/make_template_assets.py [PACKAGE_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from addiagnosis.models.package import BUNDLED_DIR
from addiagnosis.prep.template import ASSETS_KEY, write_assets


def main(folder: Path) -> None:
    card_path = folder / "card.json"
    card = json.loads(card_path.read_text())
    if (card.get("preprocessing") or {}).get("kind") != "template":
        raise SystemExit(f"{folder}: not a template-preprocessed package")
    card["preprocessing"][ASSETS_KEY] = write_assets(folder)
    tmp = card_path.with_suffix(".json.part")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(card_path)
    print(f"{folder}: {card['preprocessing'][ASSETS_KEY]['file']} "
          f"({(folder / card['preprocessing'][ASSETS_KEY]['file']).stat().st_size / 1e6:.2f} MB) "
          f"sha256 {card['preprocessing'][ASSETS_KEY]['sha256'][:12]}...")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLED_DIR / "addiagnosis-synthetic-demo")
