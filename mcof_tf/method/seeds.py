"""Initial object seeds from CAMs (§4.1, Fig. 3).

Each tagged class's CAM is averaged inside every superpixel. A superpixel becomes a seed of class c if
its averaged score is a local maximum among its neighbours (and not negligible) or exceeds a
threshold; when several classes claim it, the higher score wins. Untagged classes never seed.
Superpixels where every tagged class scores low are background; the rest stay unlabelled (255).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mcof_tf.method.labels import IGNORE_LABEL
from mcof_tf.vision.superpixels import adjacent_pairs, region_means


def local_maxima(scores: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Regions whose score is >= every neighbour's (pairs: (E, 2) adjacency) → bool (n,)."""
    best_neighbour = np.full(len(scores), -np.inf)
    np.maximum.at(best_neighbour, pairs[:, 0], scores[pairs[:, 1]])
    np.maximum.at(best_neighbour, pairs[:, 1], scores[pairs[:, 0]])
    return scores >= best_neighbour


def cam_seeds(
    cams: np.ndarray,
    superpixels: np.ndarray,
    tags: Sequence[int],
    fg_threshold: float = 0.5,
    bg_threshold: float = 0.1,
    peak_min: float = 0.3,
) -> np.ndarray:
    """Per-superpixel seed labels (int64, n) from CAMs.

    cams: H×W×(C-1) in [0, 1], channel k for class k+1. superpixels: H×W ids 0..n-1. tags: class indices.
    A local maximum must score at least `peak_min` to count (flat zero areas are maxima too).
    """
    n = int(superpixels.max()) + 1
    labels = np.full(n, IGNORE_LABEL, np.int64)
    tags = sorted(set(int(t) for t in tags))
    if not tags:
        return labels
    means = region_means(cams[..., [t - 1 for t in tags]], superpixels, n)  # (n, T)
    pairs = adjacent_pairs(superpixels)
    claim = np.zeros_like(means, bool)
    for k in range(len(tags)):
        claim[:, k] = (local_maxima(means[:, k], pairs) & (means[:, k] >= peak_min)) | (
            means[:, k] >= fg_threshold
        )
    score = np.where(claim, means, -1.0)
    winner = score.argmax(1)
    seeded = claim.any(1)
    labels[seeded] = np.asarray(tags)[winner[seeded]]
    labels[~seeded & (means.max(1) < bg_threshold)] = 0
    return labels
