"""Registration speed and field-of-view invariance on a 1 mm 256^3 scan: new code vs the code at a git ref.

    PYTHONPATH=ADDiagnosis/Logic python scripts/bench/bench_registration.py [--threads 2] [--repeat 3] [--old-ref main]

Makes one synthetic whole-head scan at 1 mm on a 256^3 grid (``addiagnosis.research.synth``), then times
``align.register_to_template`` on it (median of ``--repeat`` runs, after one warm-up that builds the template
cache) and on the same scan padded by 20 voxels; prints the time, the convergence, the landmark error against
the true pose and the mean displacement over the brain between the padded and unpadded registrations. When
``--old-ref`` names a git revision whose ``align.py`` differs, that version is loaded from git into a temporary
module and measured in the same run (ratio printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ADDiagnosis" / "Logic"))


def scan_256():
    from addiagnosis.io.volume import Volume
    from addiagnosis.research import synth

    p = {**synth.subject_params(3, 1, "MCI"), "participant_id": "bench", "spacing": [1.0, 1.0, 1.0],
         "fov_mm": [256.0, 256.0, 256.0], "orientation": "RAS", "fov_offset_mm": [0.0, 0.0, 0.0]}
    vol, _, pose = synth.make_subject(p)
    return Volume(vol.array.astype(np.float32), vol.ijk_to_ras, "bench-256"), pose


def pad(vol, n):
    from addiagnosis.io.volume import Volume

    shift = np.eye(4)
    shift[:3, 3] = -n
    return Volume(np.pad(vol.array, n), vol.ijk_to_ras @ shift, f"pad{n}")


def old_align(ref: str):
    """``align.py`` as of git ``ref``, imported as ``addiagnosis._align_old`` (None if unavailable or equal)."""
    text = None
    for where in ("prep/align.py", "align.py"):  # align.py moved into prep/ with the restructure (issue 16)
        try:
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:ADDiagnosis/Logic/addiagnosis/{where}"],
                                  capture_output=True, text=True, check=True).stdout
            break
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
    if text is None or text == (ROOT / "ADDiagnosis/Logic/addiagnosis/prep/align.py").read_text():
        return None
    import addiagnosis.prep.registry as pre

    saved = (dict(pre._REGISTRY), dict(pre._REFERENCES))  # the old module registers itself too: undo that
    path = Path(tempfile.mkdtemp()) / "_align_old.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("addiagnosis._align_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    pre._REGISTRY.clear()
    pre._REGISTRY.update(saved[0])
    pre._REFERENCES.clear()
    pre._REFERENCES.update(saved[1])
    return mod


def measure(mod, vol, padded, pose, repeat):
    from addiagnosis.prep import align

    mod.register_to_template(vol)  # warm-up: template cache
    times, m = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        m, info = mod.register_to_template(vol)
        times.append(time.perf_counter() - t)
    mp, info_p = mod.register_to_template(padded)
    disp = align.mean_displacement(m, mp)
    return {"seconds_median": round(float(np.median(times)), 3), "seconds": [round(t, 3) for t in times],
            "converged": info.get("converged"), "iterations": info.get("iterations"),
            "stop": info.get("stop"),
            "landmark_error_mm": round(align.landmark_error(m, pose["scanner_from_mni"]), 3),
            "pad20_mean_displacement_mm": round(disp[0], 3), "pad20_max_displacement_mm": round(disp[1], 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old-ref", default="main", help="git revision of the code to compare with ('' to skip)")
    args = ap.parse_args(argv)
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    from addiagnosis.prep import align

    t = time.perf_counter()
    vol, pose = scan_256()
    print(f"scan {vol.shape} at {vol.spacing} mm made in {time.perf_counter() - t:.1f} s", flush=True)
    padded = pad(vol, 20)
    out = {"threads": args.threads, "shape": list(vol.shape), "new": measure(align, vol, padded, pose, args.repeat)}
    old = old_align(args.old_ref) if args.old_ref else None
    if old is not None:
        out["old_ref"] = args.old_ref
        out["old"] = measure(old, vol, padded, pose, args.repeat)
        out["speedup_old_over_new"] = round(out["old"]["seconds_median"] / out["new"]["seconds_median"], 2)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
