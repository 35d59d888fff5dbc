"""Outputs of one diagnosis: relevance.nii.gz, report.json, overview.png, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import OutputError
from .volume import Volume, write_nifti


class AtomicOutputDir:
    """Collect files in a hidden temporary folder inside DIR, move them into DIR only on success.

    On failure nothing is left behind (and DIR itself is removed again if this run created it).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out = Path(out_dir)
        self.created = False
        self.tmp: Path | None = None

    def __enter__(self) -> AtomicOutputDir:
        try:
            if not self.out.exists():
                self.out.mkdir(parents=True)
                self.created = True
            elif not self.out.is_dir():
                raise OutputError("exists and is not a directory", self.out)
            self.tmp = Path(tempfile.mkdtemp(prefix=".addiagnosis-tmp-", dir=self.out))
        except OutputError:
            raise
        except OSError as exc:
            self._cleanup()
            raise OutputError(f"output directory is not writable ({exc.strerror or exc})", self.out) from None
        return self

    def path(self, name: str) -> Path:
        assert self.tmp is not None
        return self.tmp / name

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                for item in sorted(self.tmp.iterdir()):
                    os.replace(item, self.out / item.name)
            except OSError as err:
                self._cleanup()
                raise OutputError(f"cannot move results into place ({err.strerror or err})", self.out) from None
        self._cleanup()
        return False

    def _cleanup(self):
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.created and self.out.exists() and not any(self.out.iterdir()):
            self.out.rmdir()


def write_outputs(out_dir: str | os.PathLike, input_volume: Volume, result, report: dict,
                  figures: bool = True, extra: Callable[[AtomicOutputDir], dict] | None = None) -> dict:
    """Write relevance.nii.gz, report.json and overview.png into out_dir; returns {name: final path}."""
    with AtomicOutputDir(out_dir) as out:
        # gzip of the relevance map (zlib releases the GIL) runs beside the figure rendering
        with ThreadPoolExecutor(max_workers=1) as pool:
            nifti = pool.submit(write_nifti, result.relevance, out.path("relevance.nii.gz"),
                                f"ADDiagnosis {result.method} relevance for {result.target}")
            files = {"relevance": "relevance.nii.gz", "report": "report.json"}
            if figures:
                overview_png(input_volume, result, out.path("overview.png"))
                files["overview"] = "overview.png"
            if extra is not None:
                files.update(extra(out))
            nifti.result()
        report["files"] = files  # the caller's dict: it may rewrite the report with final timings
        out.path("report.json").write_text(json.dumps(report, indent=2) + "\n")
    return {k: out.out / v for k, v in files.items()}


# ------------------------------------------------------------------------------------- overview
def _canonical(volume: Volume, array: np.ndarray) -> np.ndarray:
    """The array reoriented to the closest RAS axes (display only)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(volume.ijk_to_ras)
    return nib.orientations.apply_orientation(array, ornt)


def overview_png(volume: Volume, result, path: str | os.PathLike, n_cols: int = 5) -> None:
    """Slice mosaic (axial, coronal, sagittal rows) of the scan with relevance overlaid and a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors

    scan = _canonical(volume, volume.array)
    rel = _canonical(volume, result.relevance.array)
    absr = np.abs(rel)
    nonzero = absr[absr > 0]
    vmax = float(np.percentile(nonzero[:: max(1, nonzero.size // 1_000_000)], 99.9)) if nonzero.size else 1.0
    vmax = vmax or 1.0
    has_neg = float(np.clip(-rel, 0, None).sum()) > 0.05 * float(absr.sum() or 1)
    cmap = plt.get_cmap("coolwarm" if has_neg else "hot")
    norm = colors.Normalize(-vmax if has_neg else 0.0, vmax)
    lo, hi = np.percentile(scan[:: 3, :: 3, :: 3], [1, 99.5])

    # slices spread over the head (where the scan is bright), not over empty background
    head = scan > lo + 0.1 * (hi - lo)
    extent = []
    for ax in range(3):  # slices holding a real share of the head (isolated bright noise voxels do not count)
        counts = head.sum(axis=tuple(a for a in range(3) if a != ax))
        extent.append(np.flatnonzero(counts > 0.05 * counts.max()))
    rows = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    fig, axes = plt.subplots(3, n_cols, figsize=(2.0 * n_cols, 6.6), facecolor="black")
    for r, (label, axis) in enumerate(rows):
        first, last = (extent[axis][0], extent[axis][-1]) if len(extent[axis]) else (0, scan.shape[axis] - 1)
        picks = np.unique(np.round(np.linspace(first, last, n_cols + 2)[1:-1]).astype(int))
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(picks):
                continue
            idx = [slice(None)] * 3
            idx[axis] = int(picks[c])
            s = scan[tuple(idx)].T  # basic slicing: a view (np.take copied the whole volume)
            rr = rel[tuple(idx)].T
            ax.imshow(s, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
            rgba = cmap(norm(rr))
            rgba[..., 3] = np.clip(np.abs(rr) / vmax, 0, 1) ** 0.5 * 0.85
            rgba[np.abs(rr) < 0.02 * vmax, 3] = 0
            ax.imshow(rgba, origin="lower", interpolation="nearest")
            ax.set_title(f"{label} {picks[c]}", color="white", fontsize=7)
    probs = "  ".join(f"{k} {v:.2f}" for k, v in result.probabilities.items())
    fig.suptitle(f"Predicted {result.predicted} (p={result.probabilities[result.predicted]:.2f}); "
                 f"relevance for {result.target}, {result.method}\n{probs}", color="white", fontsize=9)
    footer = result.research_use + (f"  {result.model_notice}" if getattr(result, "model_notice", None) else "")
    fig.text(0.5, 0.01, footer, ha="center", color="#ffcc66", fontsize=7)
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cax = fig.add_axes([0.92, 0.15, 0.015, 0.65])
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label("relevance", color="white", fontsize=7)
    cb.ax.tick_params(colors="white", labelsize=6)
    fig.subplots_adjust(left=0.01, right=0.9, top=0.88, bottom=0.05, wspace=0.03, hspace=0.15)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
