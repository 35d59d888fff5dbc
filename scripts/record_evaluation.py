"""Record evaluations of a model package in its card, one per test cohort (``evaluation.by_cohort``).

    PYTHONPATH=ADDiagnosis/Logic python scripts/record_evaluation.py PACKAGE_DIR NAME=metrics.json [...]

Each ``metrics.json`` is what ``addiagnosis evaluate`` (or ``scripts/cross_generator.py``) wrote; the card keeps
:func:`addiagnosis.research.evaluate.summary` of each, under the given cohort name. Other card fields stay as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))


def main(argv: list[str]) -> int:
    from cross_generator import name_value_pairs  # scripts/ is on sys.path when a script runs

    from addiagnosis.research.evaluate import summary

    if len(argv) < 2:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    card_path = Path(argv[0]) / "card.json"
    card = json.loads(card_path.read_text())
    by_cohort = {}
    for name, path in name_value_pairs(argv[1:], "record_evaluation.py").items():
        by_cohort[name] = summary(json.loads(Path(path).read_text()))
        by_cohort[name]["data"] = Path(by_cohort[name]["data"]).name  # the cohort folder, not this machine's path
    card["evaluation"] = {"by_cohort": by_cohort,
                          "command": "scripts/train_demo.sh step 4 (scripts/cross_generator.py, then this script)"}
    tmp = card_path.with_suffix(".json.part")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(card_path)
    print(f"{card_path}: evaluation recorded for {', '.join(by_cohort)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
