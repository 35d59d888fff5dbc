"""``addiagnosis synth | train | evaluate | compare``: the research tools' command line.

The engine modules (:mod:`addiagnosis.research`) hold no argparse; each command's function turns the parsed
options into the engine call. torch is imported only when ``train`` or ``evaluate`` runs.
"""

from __future__ import annotations

import json
import time

from addiagnosis import RESEARCH_USE
from addiagnosis.research.synth import ATROPHY_MODELS


# --------------------------------------------------------------------------------------------- synth
def cmd_synth(args) -> int:
    from addiagnosis.research.synth import generate, generator_options

    t0 = time.time()
    options = generator_options(args.atrophy, args.variety)
    metas = generate(args.n, args.out, args.seed, args.workers, options=options, prefix=args.prefix)
    print(f"synth: wrote {len(metas)} subjects to {args.out} in {time.time() - t0:.0f} s "
          f"(participants.tsv, scans/, masks/, meta/)")
    return 0


def register_synth(subparsers) -> None:
    p = subparsers.add_parser("synth", description="Generate synthetic T1-like scans (from the MNI152 template) "
                                                   "with graded Alzheimer-like atrophy and its ground-truth masks.")
    p.add_argument("--n", type=int, default=100, help="number of subjects (balanced over 5 classes)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.add_argument("--prefix", default="sub", help="subject id prefix")
    p.add_argument("--atrophy", choices=ATROPHY_MODELS, default="default",
                   help="atrophy model: default (medial temporal lobe fades, ventricles widen), erode "
                        "(hippocampus and amygdala eroded from all sides, ventricles and temporal horns dilated; "
                        "its own mask rule) or mixed (each subject one of the two)")
    p.add_argument("--variety", choices=["default", "wide"], default="default",
                   help="wide: stronger deformation, head size, contrast and bias, lower SNR, 1 mm to thick slices")
    p.set_defaults(func=cmd_synth)


# --------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from addiagnosis.research.train import DEFAULT_PREPROCESSING, PHYSICAL_PREPROCESSING, TrainConfig, train

    pre = DEFAULT_PREPROCESSING if args.preprocessing == "template" else PHYSICAL_PREPROCESSING
    cfg = TrainConfig(seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      patience=args.patience, max_minutes=args.max_minutes, grid_shape=args.grid,
                      spacing=args.spacing, preprocessing=pre, cache=args.cache, workers=args.workers,
                      threads=args.threads, name=args.name, default=args.default)
    train(args.data, args.out, cfg, log=lambda m: print(m, flush=True))
    return 0


def register_train(subparsers) -> None:
    p = subparsers.add_parser("train", description="Train the 3D CNN on a folder of class sub-folders, a folder "
                                                   "with participants.tsv, or a TSV/CSV table; writes a model "
                                                   "package.")
    p.add_argument("data", help="class-folder tree, synth output folder, or TSV/CSV table")
    p.add_argument("--out", required=True, help="model package folder to write")
    p.add_argument("--name", default=None, help="package name (default: folder name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs)")
    p.add_argument("--max-minutes", type=float, default=None, help="time box for the training loop")
    p.add_argument("--grid", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                   help="model grid shape (default 80 96 80)")
    p.add_argument("--spacing", type=float, default=None, help="model grid spacing in mm (default 2)")
    p.add_argument("--preprocessing", default="template", choices=["template", "physical"])
    p.add_argument("--cache", default=None, help="folder for preprocessed arrays")
    p.add_argument("--workers", type=int, default=2, help="preprocessing processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--default", action="store_true", help="mark the package as the default model")
    p.set_defaults(func=cmd_train)


# ------------------------------------------------------------------------------------------ evaluate
def cmd_evaluate(args) -> int:
    from addiagnosis.models.package import find_package
    from addiagnosis.research.evaluate import EvaluateOptions, evaluate, summary
    from addiagnosis.research.packaging import record_summary

    pkg = find_package(args.package)
    out = args.out or f"evaluation-{pkg.name}"
    options = EvaluateOptions(method=args.method, target=args.target, limit=args.limit,
                              randomisation_n=args.randomisation_n, threads=args.threads, stability_n=args.stability,
                              faithfulness_n=args.faithfulness)
    result = evaluate(pkg, args.data, out, options, log=lambda m: print(m, flush=True))
    s = summary(result)
    print(json.dumps(s, indent=1))
    if args.record_in_card:
        record_summary(pkg.path, s)
        print(f"evaluate: recorded the summary in {pkg.path / 'card.json'}")
    return 0


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", description="Score a model package on a dataset (class folders, synth "
                                                      "output or table); with ground-truth masks also its "
                                                      "explanations.")
    p.add_argument("package", help="model package name or folder")
    p.add_argument("data", help="class-folder tree, synth output folder, or TSV/CSV table")
    p.add_argument("--out", default=None, help="report folder (default: evaluation-<package>)")
    p.add_argument("--method", default="auto",
                   help="relevance method (default auto: the model card's recommended one)")
    p.add_argument("--target", choices=["true", "predicted"], default="true",
                   help="class whose relevance is scored (default: the subject's true class)")
    p.add_argument("--limit", type=int, default=None, help="only the first N scans")
    p.add_argument("--randomisation-n", type=int, default=10, help="scans used for the randomisation check")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stability", type=int, default=0, metavar="N",
                   help="also measure map stability (stored flipped/padded/resampled, 1 %% and 2 %% input noise) "
                        "and input randomisation on the first N scans")
    p.add_argument("--faithfulness", type=int, default=0, metavar="N",
                   help="also measure deletion/insertion curves against random regions on the first N scans that "
                        "are not of the first class")
    p.add_argument("--record-in-card", action="store_true",
                   help="store the summary in the package's card.json under 'evaluation'")
    p.set_defaults(func=cmd_evaluate)


# ------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from addiagnosis.research.compare import compare

    doc = compare(args.results, by=args.by, measure=args.measure, case=args.case, control=args.control,
                  n_boot=args.bootstrap, seed=args.seed, out=args.out)
    for g in doc["gain"]:
        print(f"{g['region']:<20} gain {g['case']}/{g['control']} {g['gain']:.3g} "
              f"[{g['ci_low']:.3g}, {g['ci_high']:.3g}]")
    if doc["note"]:
        print(doc["note"])
    print(f"-> {doc['out']} (regions_by_group.tsv, gain.tsv, compare.png, report.html)")
    print(RESEARCH_USE)
    return 0


def register_compare(subparsers) -> None:
    p = subparsers.add_parser("compare")
    p.add_argument("results", help="a batch output folder (or its results.tsv) made with --labels")
    p.add_argument("--by", default="group", help="column to group by (default: group)")
    p.add_argument("--measure", default="density", choices=["density", "sum"])
    p.add_argument("--case", default="AD", help="group whose gain is reported (default AD)")
    p.add_argument("--control", default="CN", help="reference group (default CN)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: RESULTS/compare)")
    p.set_defaults(func=cmd_compare)


def register_cli(subparsers) -> None:
    for register in (register_synth, register_train, register_evaluate, register_compare):
        register(subparsers)
