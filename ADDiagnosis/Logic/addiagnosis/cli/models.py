"""``addiagnosis models | import-checkpoint | package ...``: list, import and finish model packages.

Listing reads only the cards (no torch); importing a checkpoint and the ``package`` tools load what they need.
"""

from __future__ import annotations

import json

from addiagnosis.cli.options import name_value
from addiagnosis.errors import AddiagnosisError


def cmd_models(args) -> int:
    """Every usable package, where it was found, which one a plain `diagnose` runs and what shadows what."""
    from addiagnosis.models.discovery import default_package, scan_packages, search_path

    packages = scan_packages()  # bad packages: one warning line each on stderr, the others are listed
    try:
        default = default_package(packages).path
    except AddiagnosisError:
        default = None
    if args.json:
        print(json.dumps([{"name": p.name, "version": p.version, "path": str(p.path), "origin": p.origin,
                           "default": p.path == default, "shadows": [str(s) for s in p.shadows],
                           "shadowed_by": None if p.shadowed_by is None else str(p.shadowed_by),
                           "card": p.card.to_dict()} for p in packages], indent=2))
        return 0
    places = ", ".join(f"{d} ({o})" for d, o in search_path())
    if not packages:
        print(f"no model packages installed; searched: {places}")
        return 0
    for p in packages:
        flags = [f for f, on in (("default", p.path == default), (p.origin, True)) if on]
        print(f"{p.summary()} [{', '.join(flags)}]\n    {p.path}")
        for s in p.shadows:
            print(f"    shadows {s} (same name: --model {p.name} picks the one above)")
        if p.shadowed_by is not None:
            print(f"    shadowed by {p.shadowed_by}" + (" (a plain diagnose still runs this one)"
                                                         if p.path == default else ""))
    print(f"search order for --model NAME: {places}; a plain diagnose runs the bundled default")
    return 0


def cmd_import(args) -> int:
    from addiagnosis.models.package import import_checkpoint

    pkg = import_checkpoint(args.file, name=args.name, preset=args.preset, dest_root=args.dest,
                            overwrite=args.force)
    print(f"imported {args.file} as model '{pkg.name}' -> {pkg.path}")
    return 0


def cmd_record_evaluation(args) -> int:
    from addiagnosis.research.packaging import record_evaluations

    names = record_evaluations(args.package, dict(args.metrics), command=args.note)
    print(f"{args.package}: evaluation recorded for {', '.join(names)} (checksums verified)")
    return 0


def cmd_add_template(args) -> int:
    from addiagnosis.research.packaging import add_template

    entry = add_template(args.package)
    print(f"{args.package}: {entry['file']} sha256 {entry['sha256'][:12]}... listed in the card (checksums verified)")
    return 0


def register_cli(subparsers) -> None:
    m = subparsers.add_parser("models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    i = subparsers.add_parser("import-checkpoint")
    i.add_argument("file", help="a plain PyTorch state_dict (.pth)")
    i.add_argument("--preset", default="seed", choices=["seed"],
                   help="seed: the original Image_Recognition_WebGUI checkpoints")
    i.add_argument("--name", required=True, help="name of the new package")
    i.add_argument("--dest", help="folder to put the package in (default: the user model folder)")
    i.add_argument("--force", action="store_true",
                   help="replace an existing model package of that name (never a folder that is not one)")
    i.set_defaults(func=cmd_import)

    p = subparsers.add_parser("package")
    tools = p.add_subparsers(dest="tool", required=True, metavar="TOOL")
    r = tools.add_parser("record-evaluation", help="store evaluate's summary of each test cohort in the card "
                                                   "(evaluation.by_cohort; replaces the card's evaluation)")
    r.add_argument("package", help="model package folder")
    r.add_argument("metrics", nargs="+", type=name_value, metavar="NAME=METRICS_JSON",
                   help="a cohort name and the metrics.json that `addiagnosis evaluate` wrote for it")
    r.add_argument("--note", default="addiagnosis package record-evaluation",
                   help="how the figures were made (the card's evaluation.command)")
    r.set_defaults(func=cmd_record_evaluation)
    t = tools.add_parser("add-template", help="put the registration template into a template-preprocessed "
                                              "package (so it runs without nilearn) and list it in the card")
    t.add_argument("package", help="model package folder")
    t.set_defaults(func=cmd_add_template)
