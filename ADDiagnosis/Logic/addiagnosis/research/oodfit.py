"""Fit a package's out-of-distribution model (:mod:`addiagnosis.models.ood`) and write it into the package.

``train`` calls :func:`attach` at the end of training with its training and validation inputs; for an existing
package (the bundled demo model) ``scripts/experiments/ood_bundled.py`` regenerates its synthetic subjects and
calls it too. The fit goes in through :func:`addiagnosis.research.packaging.rewrite_card`: the package must be
intact, the new card valid, and every checksum holds afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

from addiagnosis.models import ood
from addiagnosis.research.packaging import rewrite_card


def attach(folder: str | os.PathLike, model, X_train, X_val, percentile: float = ood.DEFAULT_PERCENTILE) -> dict:
    """Fit on the features of ``X_train`` (N,1,D,H,W), threshold on ``X_val``'s; write ``ood.npz`` and the card's
    ``ood`` entry into the package at ``folder``. Returns the entry."""
    fit = ood.fit(ood.features(model, X_train), ood.features(model, X_val),
                  ood.features_sha256(model.state_dict()), percentile)
    entry = {}

    def change(card: dict, staging: Path) -> None:
        entry.update(ood.save(fit, staging))
        card[ood.OOD_KEY] = dict(entry)

    rewrite_card(folder, change)
    return entry
