"""Files in and out: NIfTI volumes and their checks, output sets, reports and figures. No torch."""
