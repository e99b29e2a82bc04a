"""Felzenszwalb–Huttenlocher superpixels (skimage), with parameters scaled to the image size."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb


def scaled_params(
    height: int, width: int, scale: float, min_size: int, reference_side: int
) -> tuple[float, int]:
    """Felzenszwalb's `scale` and `min_size` for an image of this size.

    Both are given for an image whose longer side is `reference_side` and scale linearly with the
    longer side: measured on skimage's photographs resized from 150 to 1000 px, that keeps the
    number of superpixels within about 0.7-1.3x of the reference count (scaling by area instead
    gives 3x too many at 150 px).
    """
    factor = max(height, width) / float(reference_side)
    return max(scale * factor, 1.0), max(int(round(min_size * factor)), 1)


def superpixels(
    image: np.ndarray, scale: float = 100.0, sigma: float = 0.8, min_size: int = 20, reference_side: int = 500
) -> np.ndarray:
    """H×W×3 uint8 → H×W int32 superpixel ids 0..n-1, numbered in raster order of first appearance."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    s, m = scaled_params(image.shape[0], image.shape[1], scale, min_size, reference_side)
    seg = felzenszwalb(image, scale=s, sigma=sigma, min_size=m)
    return relabel_raster(seg)


def relabel_raster(seg: np.ndarray) -> np.ndarray:
    """Renumber labels 0..n-1 in the order they first appear in raster scan (deterministic ids)."""
    flat = seg.reshape(-1)
    _, first = np.unique(flat, return_index=True)
    order = np.argsort(first)  # labels sorted by first appearance
    lut = np.empty(order.size, np.int32)
    lut[order] = np.arange(order.size, dtype=np.int32)
    _, inverse = np.unique(flat, return_inverse=True)
    return lut[inverse].reshape(seg.shape)


def adjacent_pairs(seg: np.ndarray) -> np.ndarray:
    """Unique (i, j), i < j, pairs of 4-adjacent labels of a label map; shape (E, 2)."""
    pairs = np.concatenate(
        [
            np.stack([seg[:, :-1].ravel(), seg[:, 1:].ravel()], 1),
            np.stack([seg[:-1, :].ravel(), seg[1:, :].ravel()], 1),
        ]
    )
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1)
    return np.unique(pairs, axis=0)


def region_means(maps: np.ndarray, seg: np.ndarray, n: int | None = None) -> np.ndarray:
    """Mean of each channel of `maps` (H×W×K) inside each region of `seg` (ids 0..n-1) → (n, K)."""
    n = int(seg.max()) + 1 if n is None else n
    flat = seg.ravel()
    count = np.maximum(np.bincount(flat, minlength=n), 1).astype(np.float64)
    m = maps.reshape(len(flat), -1)
    return np.stack([np.bincount(flat, m[:, k], n) for k in range(m.shape[1])], 1) / count[:, None]
