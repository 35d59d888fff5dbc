"""Command line: ``addiagnosis diagnose | batch | models | import-checkpoint`` (+ synth/train/evaluate; batch,
merge, compare and labels come from :mod:`.cohort`).

User errors print one line on stderr (``addiagnosis: error: FILE: problem``) and exit with code 2;
nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from addiagnosis import RESEARCH_USE, __version__
from addiagnosis.errors import AddiagnosisError, display_name
from addiagnosis.files import sha256_file
from addiagnosis.models.card import AUTO_METHOD, DEFAULT_METHOD, METHOD_CHOICES
from addiagnosis.resources import default_scan

EXIT_USER_ERROR = 2
PLUGIN_COMMANDS = ("research.synth", "research.train", "research.evaluate", "web", "cli.cohort")


class StageLine:
    """Stage lines on stderr, shown when stderr is a terminal (or with --progress)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            sys.stderr.write(f"\r[{fraction * 100:3.0f}%] {elapsed:5.1f}s {stage:<48}")
            if fraction >= 1.0:
                sys.stderr.write("\n")
            sys.stderr.flush()


# ------------------------------------------------------------------------------------------ diagnose
def cmd_diagnose(args) -> int:
    from addiagnosis.engine import get_diagnoser
    from addiagnosis.io.outputs import RESULT_FILES, OutputSet

    progress = StageLine(args.progress or (sys.stderr.isatty() and not args.quiet))
    scan = Path(args.scan) if args.scan else default_scan()
    # the whole run is one staged result set: an unusable output folder fails before any expensive work, and
    # a failure (or Ctrl-C) anywhere leaves the folder as it was
    with OutputSet(args.out, replaces=RESULT_FILES) as out:
        t0 = time.perf_counter()
        progress("loading model", 0.0)
        diagnoser = get_diagnoser(args.model, args.device)
        if args.target:
            diagnoser.package.class_index(args.target)
        report, files = diagnose_scan(diagnoser, scan, out, args, progress, t0)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(summary_text(report, files))
    return 0


def diagnose_scan(diagnoser, scan: Path, out, args, progress, t0: float) -> tuple[dict, dict]:
    """Read one scan, diagnose it, write its outputs into ``out`` (a staged folder of an OutputSet)."""
    from addiagnosis.io.report import write_outputs
    from addiagnosis.io.volume import read_nifti

    timings = {"load_model": time.perf_counter() - t0}
    t = time.perf_counter()
    progress("reading scan", 0.05)
    volume = read_nifti(scan)
    volume.meta["sha256"] = sha256_file(scan)
    timings["read"] = time.perf_counter() - t

    result = diagnoser.run(volume, method=args.method, target=args.target, progress=progress)
    timings.update(result.timings)
    for warning in result.warnings:
        print(f"addiagnosis: warning: {display_name(scan)}: {' '.join(str(warning).split())}", file=sys.stderr)

    def views(staged):
        if not args.views:
            return {}
        from addiagnosis.mrml.views import render_views

        paths = render_views(volume, result, staged.folder)
        return {k: Path(p).name for k, p in paths.items()}

    t = time.perf_counter()
    progress("writing results", 0.9)

    def finalize(report):  # report.json is written once, with the complete timings (write included)
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}

    report = result.report(volume)
    files = write_outputs(out, volume, result, report, figures=not args.no_figures, extra=views, finalize=finalize)
    progress("done", 1.0)
    return report, files


def summary_text(report: dict, files: dict) -> str:
    probs = report["probabilities"]
    width = max(len(k) for k in probs)
    lines = [f"{display_name(report['input']['name'])}: predicted {report['predicted_class']} "
             f"(p={probs[report['predicted_class']]:.3f}) with model {report['model']['name']} "
             f"{report['model']['version']}"]
    for name, p in sorted(probs.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<{width}}  {p:6.3f}  {'#' * int(round(p * 30))}")
    shown = {k: display_name(v) for k, v in files.items()}
    lines.append(f"relevance ({report['method']}) for {report['target_class']} -> {shown['relevance']}")
    lines.append(f"report -> {shown['report']}" + (f", overview -> {shown['overview']}" if "overview" in shown else ""))
    lines.append(f"total {report['timings_s'].get('total', 0):.2f} s")
    if report["model"].get("notice"):
        lines.append(report["model"]["notice"])
    lines.append(RESEARCH_USE)
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- models
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


# ---------------------------------------------------------------------------------------------- main
METHOD_HELP = ("relevance method (default auto: the model card's recommended one, lrp-reference-alpha1beta0 for the "
               f"bundled model, else {DEFAULT_METHOD})")


def engine_options(p: argparse.ArgumentParser) -> None:
    """--model, --method and --device: what `diagnose` and `batch` hand to the engine."""
    p.add_argument("--model", help="model package name or folder (default: the bundled model)")
    p.add_argument("--method", default=AUTO_METHOD, choices=METHOD_CHOICES, help=METHOD_HELP)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="addiagnosis", description=(
        "Explainable Alzheimer's-disease classification of brain MRI (3D CNN + LRP). " + RESEARCH_USE))
    parser.add_argument("--version", action="version", version=f"addiagnosis {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("diagnose", help="classify one scan and explain the result with LRP")
    d.add_argument("scan", nargs="?", help="a .nii or .nii.gz T1 scan (default: the bundled example)")
    engine_options(d)
    d.add_argument("--target", help="class to explain (default: the predicted class)")
    d.add_argument("--out", default="addiagnosis-output", help="output folder (default ./addiagnosis-output)")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument("--views", action="store_true",
                   help="also render Slicer's slice and 3D views (needs the slicer-core runtime)")
    d.add_argument("--no-figures", action="store_true", help="skip overview.png")
    d.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=cmd_diagnose)

    m = sub.add_parser("models", help="list installed model packages (where each is, which is the default, "
                                      "which shadows which)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    i = sub.add_parser("import-checkpoint", help="turn a checkpoint into a model package")
    i.add_argument("file", help="a plain PyTorch state_dict (.pth)")
    i.add_argument("--preset", default="seed", choices=["seed"],
                   help="seed: the original Image_Recognition_WebGUI checkpoints")
    i.add_argument("--name", required=True, help="name of the new package")
    i.add_argument("--dest", help="folder to put the package in (default: the user model folder)")
    i.add_argument("--force", action="store_true",
                   help="replace an existing model package of that name (never a folder that is not one)")
    i.set_defaults(func=cmd_import)

    for name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(f"addiagnosis.{name}")
        except ImportError:
            continue
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        from addiagnosis.io.volume import quiet

        with quiet():  # nibabel/numpy warnings never reach stderr: problems are one-line errors
            parser = build_parser()
            args = parser.parse_args(argv)
            return int(args.func(args) or 0)
    except AddiagnosisError as exc:
        print(f"addiagnosis: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("addiagnosis: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("addiagnosis: error: out of memory", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
