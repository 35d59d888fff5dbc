"""Draw the ADDiagnosis icon (128x128 PNG) by code: a brain-like outline with a hot relevance spot.

Run: .venv/bin/python scripts/assets/make_icon.py  (writes ADDiagnosis/Resources/Icons/ADDiagnosis.png)
"""

from pathlib import Path

import numpy as np
from PIL import Image

N = 128
y, x = np.mgrid[0:N, 0:N].astype(np.float64)
cx, cy = N / 2, N / 2 + 4
r = np.sqrt(((x - cx) / 52) ** 2 + ((y - cy) / 44) ** 2)
gyri = 0.5 + 0.5 * np.sin(x / 5.0 + np.sin(y / 7.0) * 2.0) * np.cos(y / 6.0)
img = np.zeros((N, N, 4), np.float64)
inside = r < 1.0
grey = 0.35 + 0.45 * gyri
img[inside, :3] = grey[inside, None]
img[inside, 3] = 1.0
edge = (r >= 0.94) & (r < 1.0)
img[edge, :3] = 0.15
midline = inside & (np.abs(x - cx) < 1.2) & (y < cy - 8)
img[midline, :3] = 0.15
spot = np.exp(-(((x - 84) / 13) ** 2 + ((y - 70) / 11) ** 2))
hot = np.stack([np.ones_like(spot), np.clip(spot * 1.6 - 0.3, 0, 1), np.clip(spot * 2 - 1.4, 0, 1)], -1)
a = (np.clip(spot * 1.8 - 0.25, 0, 1) * inside)[..., None]
img[..., :3] = img[..., :3] * (1 - a) + hot * a
out = Path(__file__).resolve().parents[2] / "ADDiagnosis" / "Resources" / "Icons" / "ADDiagnosis.png"
Image.fromarray((img * 255).round().astype(np.uint8), "RGBA").save(out, optimize=True)
print(out)
