"""Outputs of one diagnosis: relevance.nii.gz, report.json, overview.png, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from addiagnosis.io.intensity import head_mask, robust_range
from addiagnosis.io.outputs import OutputSet
from addiagnosis.io.volume import Volume, write_nifti


def write_outputs(out: str | os.PathLike | OutputSet, input_volume: Volume, result, report: dict,
                  figures: bool = True, extra: Callable[[OutputSet], dict] | None = None,
                  finalize: Callable[[dict], None] | None = None) -> dict:
    """Write relevance.nii.gz, overview.png (+ ``extra``'s files) and, last and once, report.json.

    ``out`` is a staged folder of an :class:`~addiagnosis.io.outputs.OutputSet` (committed by the caller), or a
    folder path (then this call is the whole result set, committed on return). ``finalize(report)`` runs just
    before report.json is written (e.g. to add the final timings). Returns {kind: final path}.
    """
    if not hasattr(out, "path"):
        with OutputSet(out) as staged:
            return write_outputs(staged, input_volume, result, report, figures, extra, finalize)
    # gzip of the relevance map (zlib releases the GIL) runs beside the figure rendering
    with ThreadPoolExecutor(max_workers=1) as pool:
        nifti = pool.submit(write_nifti, result.relevance, out.path("relevance.nii.gz"),
                            f"ADDiagnosis {result.method} relevance for {result.target}", input_volume)
        files = {"relevance": "relevance.nii.gz", "report": "report.json"}
        if figures:
            overview_png(input_volume, result, out.path("overview.png"))
            files["overview"] = "overview.png"
        if extra is not None:
            files.update(extra(out))
        nifti.result()
    report["files"] = files
    if finalize is not None:
        finalize(report)
    out.write_text("report.json", json.dumps(report, indent=2) + "\n")
    return {k: out.final / v for k, v in files.items()}


# ------------------------------------------------------------------------------------- overview
def cluster_line(clusters: list, n: int = 2) -> str:
    """The largest clusters in one line: "Clusters: 1. Left Hippocampus 12.3 % (4.5 mL); 2. ..."."""
    parts = [f"{c['index']}. {c.get('peak_region') or 'outside the atlas regions'} {100 * c['share']:.1f} % "
             f"({c['volume_ml']:.1f} mL)" for c in clusters[:n]]
    more = f"; {len(clusters) - n} more" if len(clusters) > n else ""
    return "Clusters (region at the peak, share, volume): " + "; ".join(parts) + more


def _font(size: int):
    """DejaVu Sans from matplotlib's data (always installed with it), else PIL's built-in font."""
    import matplotlib
    from PIL import ImageFont

    try:
        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except OSError:
        return ImageFont.load_default()


def overview_png(volume: Volume, result, path: str | os.PathLike, n_cols: int = 5, tile: int = 170) -> None:
    """Slice mosaic (axial, coronal, sagittal rows) of the scan with relevance overlaid and a colour bar.

    Composed with numpy and PIL (matplotlib only for its colour maps and font): about 4x faster than a
    matplotlib figure, which mattered because the overview is drawn on every diagnosis.
    """
    from PIL import Image, ImageDraw

    m = _mosaic_data(volume, result)
    qc = getattr(result, "qc", None) or {}
    qc_bad = qc.get("verdict") in ("warn", "fail")
    clusters = (getattr(result, "reading", None) or {}).get("clusters") or []  # engine's explain.clusters
    top, label_h, footer_h, bar_w = 70 if qc_bad else 52, 16, 44 if clusters else 26, 80
    canvas = Image.new("RGB", (n_cols * tile + bar_w, top + 3 * (tile + label_h) + footer_h), "black")
    draw = ImageDraw.Draw(canvas)
    small, normal = _font(11), _font(13)
    _draw_tiles(canvas, draw, m, (n_cols, tile, top, label_h), small)
    _draw_header(canvas, draw, result, qc, (normal, small), clusters)
    _draw_colour_bar(canvas, draw, m, (n_cols * tile + 14, top + label_h + 10, 3 * (tile + label_h) - 60), small)
    canvas.save(path, format="PNG")


def _mosaic_data(volume: Volume, result) -> dict:
    """What the mosaic shows: scan and relevance on the closest RAS axes, their display ranges and colours,
    and for each axis the slices holding a real share of the head."""
    import matplotlib
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.ijk_to_ras)
    scan = nib.orientations.apply_orientation(volume.array, ornt)  # closest RAS axes (display only)
    rel = nib.orientations.apply_orientation(result.relevance.array, ornt)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = volume.spacing
    absr = np.abs(rel)
    nonzero = absr[absr > 0]
    vmax = float(np.percentile(nonzero[:: max(1, nonzero.size // 1_000_000)], 99.9)) if nonzero.size else 1.0
    vmax = vmax or 1.0
    has_neg = float(np.clip(-rel, 0, None).sum()) > 0.05 * float(absr.sum() or 1)
    lut = (matplotlib.colormaps["coolwarm" if has_neg else "hot"](np.linspace(0, 1, 256))[:, :3] * 255)
    vmin = -vmax if has_neg else 0.0
    lo, hi = robust_range(scan)
    hi = hi if hi > lo else lo + 1.0
    # slices spread over the head (where the scan is bright), not over empty background
    head = head_mask(scan, (lo, hi))
    extent = []
    for ax in range(3):  # slices holding a real share of the head (isolated bright noise voxels do not count)
        counts = head.sum(axis=tuple(a for a in range(3) if a != ax))
        extent.append(np.flatnonzero(counts > 0.05 * counts.max()))
    return {"scan": scan, "rel": rel, "spacing": spacing, "lut": lut, "vmin": vmin, "vmax": vmax, "lo": lo,
            "hi": hi, "extent": extent}


def _tile_rgb(m: dict, axis: int, pick: int) -> np.ndarray:
    """One slice: the scan in grey with the relevance blended over it by its strength."""
    idx = [slice(None)] * 3
    idx[axis] = int(pick)
    s2 = m["scan"][tuple(idx)].T[::-1]  # rows: superior/anterior up; columns: patient's right to the right
    r2 = m["rel"][tuple(idx)].T[::-1]
    vmin, vmax = m["vmin"], m["vmax"]
    gray = np.clip((s2 - m["lo"]) / (m["hi"] - m["lo"]), 0, 1)[..., None] * 255.0
    colour = m["lut"][np.clip((r2 - vmin) / (vmax - vmin) * 255, 0, 255).astype(np.uint8)]
    alpha = np.clip(np.abs(r2) / vmax, 0, 1) ** 0.5 * 0.85
    alpha[np.abs(r2) < 0.02 * vmax] = 0
    return (gray * (1 - alpha[..., None]) + colour * alpha[..., None]).astype(np.uint8)


def _draw_tiles(canvas, draw, m: dict, layout, small) -> None:
    from PIL import Image

    n_cols, tile, top, label_h = layout
    scan, spacing, extent = m["scan"], m["spacing"], m["extent"]
    rows = [("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2))]
    for r, (label, axis, (ax_x, ax_y)) in enumerate(rows):
        first, last = (extent[axis][0], extent[axis][-1]) if len(extent[axis]) else (0, scan.shape[axis] - 1)
        picks = np.unique(np.round(np.linspace(first, last, n_cols + 2)[1:-1]).astype(int))
        for c, pick in enumerate(picks[:n_cols]):
            rgb = _tile_rgb(m, axis, pick)
            w_mm, h_mm = rgb.shape[1] * spacing[ax_x], rgb.shape[0] * spacing[ax_y]
            scale = (tile - 6) / max(w_mm, h_mm)
            size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
            img = Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BILINEAR)
            x0 = c * tile + (tile - size[0]) // 2
            y0 = top + r * (tile + label_h) + label_h + (tile - size[1]) // 2
            canvas.paste(img, (x0, y0))
            draw.text((c * tile + tile // 2, top + r * (tile + label_h)), f"{label} {pick}", fill="white",
                      font=small, anchor="mt")


def _draw_header(canvas, draw, result, qc: dict, fonts, clusters) -> None:
    """Prediction and probabilities (greyed for a failed scan), the QC line, the research-use footer, clusters."""
    normal, small = fonts
    probs = "  ".join(f"{k} {v:.2f}" for k, v in result.probabilities.items())
    if getattr(result, "prediction_set", None):  # split-conformal set of the model card (issue 19)
        probs += f"    {result.prediction_set_coverage:.0%} set: {', '.join(result.prediction_set)}"
    width = canvas.size[0]
    failed = qc.get("verdict") == "fail"  # a failed scan's probabilities must not read like a good result
    draw.text((width // 2, 6), ("NOT INTERPRETABLE - " if failed else "") +
              f"Predicted {result.predicted} (p={result.probabilities[result.predicted]:.2f}); "
              f"relevance for {result.target}, {result.method}", fill="white", font=normal, anchor="mt")
    draw.text((width // 2, 26), probs, fill="#888888" if failed else "white", font=normal, anchor="mt")
    if qc.get("verdict") in ("warn", "fail"):
        first = next(r for r in qc.get("reasons", []) if r.get("verdict") == qc["verdict"])
        text = ("not interpretable: " if failed else "check the input: ") + f"{first['check']}: {first['detail']}"
        draw.text((width // 2, 46), text[:150], fill="#ff5050" if failed else "#ffb000", font=normal, anchor="mt")
    footer = result.research_use + (f"  {result.model_notice}" if getattr(result, "model_notice", None) else "")
    draw.text((width // 2, canvas.size[1] - 18), footer, fill="#ffcc66", font=small, anchor="mt")
    if clusters:
        draw.text((width // 2, canvas.size[1] - 38), cluster_line(clusters)[:150], fill="white", font=small,
                  anchor="mt")


def _draw_colour_bar(canvas, draw, m: dict, box, small) -> None:
    """The colour ramp, top = vmax, with three values."""
    from PIL import Image

    bar_x, bar_y, bar_h = box
    vmin, vmax = m["vmin"], m["vmax"]
    ramp = m["lut"][np.linspace(255, 0, bar_h).astype(int)][:, None, :].repeat(14, axis=1).astype(np.uint8)
    canvas.paste(Image.fromarray(ramp), (bar_x, bar_y))
    for frac, value in ((0.0, vmax), (0.5, (vmax + vmin) / 2), (1.0, vmin)):
        y = bar_y + round(frac * (bar_h - 1))
        draw.line([(bar_x + 14, y), (bar_x + 18, y)], fill="white")
        draw.text((bar_x + 21, y), f"{value:.2g}", fill="white", font=small, anchor="lm")
    draw.text((bar_x, bar_y + bar_h + 8), "relevance", fill="white", font=small)
