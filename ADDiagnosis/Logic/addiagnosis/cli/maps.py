"""``addiagnosis compare-maps A B --out DIR``: two diagnoses' relevance maps on one grid, and their difference.

A and B are result folders of ``addiagnosis diagnose`` (``report.json`` and ``relevance.nii.gz``): two targets or
two methods of one scan are compared on its grid; a baseline and a follow-up scan on the MNI template grid, each
through its own registration (``--on a``: on the baseline's grid). See :mod:`addiagnosis.explain.comparison`.
Writes ``a.nii.gz``, ``b.nii.gz`` (share of positive relevance per mL), ``difference.nii.gz`` (B - A) and
``comparison.json``, all or nothing. No torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from addiagnosis import RESEARCH_USE
from addiagnosis.errors import InputError


def read_result(folder: str | Path, which: str):
    """(relevance Volume, report dict) of a diagnose result folder; one-line errors for anything else."""
    from addiagnosis.io.volume import read_nifti

    folder = Path(folder)
    report_path, rel_path = folder / "report.json", folder / "relevance.nii.gz"
    if not report_path.is_file() or not rel_path.is_file():
        raise InputError(f"map {which} is not a diagnose result folder (report.json and relevance.nii.gz)", folder)
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable report.json ({' '.join(str(exc).split())[:80]})", report_path) from None
    if not isinstance(report, dict):
        raise InputError("report.json holds no report", report_path)
    return read_nifti(rel_path, name=f"{which}: {report.get('target_class')} {report.get('method')}"), report


def describe(report: dict, folder) -> dict:
    inp = report.get("input") or {}
    return {"folder": str(folder), "input": inp.get("name"), "sha256": inp.get("sha256"),
            "target": report.get("target_class"), "method": report.get("method")}


def cmd_compare_maps(args) -> int:
    from addiagnosis.explain.comparison import compare_maps, write_comparison

    a, rep_a = read_result(args.a, "A")
    b, rep_b = read_result(args.b, "B")
    result = compare_maps(a, rep_a.get("preprocessing"), b, rep_b.get("preprocessing"), on=args.on)
    write_comparison(result, args.out, {"a": describe(rep_a, args.a), "b": describe(rep_b, args.b)})
    s = result.summary
    print(f"compared on the {s['space']} grid: correlation {fmt(s['correlation'])}, share moved "
          f"{fmt(s['share_moved'])}, Dice of the shown voxels {fmt(s['dice_shown'])} -> {args.out}")
    for row in (s.get("regions") or [])[:3]:
        print(f"    {row['region']}: {100 * row['a']:.1f} % -> {100 * row['b']:.1f} % of the relevance")
    print(RESEARCH_USE)
    return 0


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("compare-maps")
    p.add_argument("a", help="result folder of the first diagnosis (baseline; report.json, relevance.nii.gz)")
    p.add_argument("b", help="result folder of the second diagnosis (another target or method, or a follow-up)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--on", choices=("auto", "input", "template", "a"), default="auto",
                   help="grid: auto (the scan's for one scan, else the MNI template), input, template, a "
                        "(the first scan's)")
    p.set_defaults(func=cmd_compare_maps)
