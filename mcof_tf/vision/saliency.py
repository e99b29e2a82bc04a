"""Built-in unsupervised saliency and the usual saliency metrics (numpy in, numpy out).

The method is background-weighted contrast with boundary connectivity (Zhu et al., "Saliency
Optimization from Robust Background Detection", CVPR 2014): regions that connect to the image border
through similar colours are background, regions that contrast with background nearby are foreground,
and a small quadratic program smooths the two cues over the region graph. It needs no training and
handles objects that touch the border, which a plain "border = background" prior does not.
Replace it with external maps (e.g. DRFI, as in the paper) by putting them in `ROOT/Saliency/<id>.png`.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from skimage.color import rgb2lab
from skimage.segmentation import slic

from mcof_tf.vision.superpixels import adjacent_pairs

SIGMA_CLR = 10.0  # Lab distance scale
SIGMA_BNDCON = 1.0
SIGMA_SPA = 0.25  # in units of the image's longer side
MU = 0.1  # smoothness floor between neighbours


def robust_background_saliency(image: np.ndarray, n_segments: int = 200) -> np.ndarray:
    """H×W×3 uint8 → H×W uint8 saliency in [0, 255]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    h, w = image.shape[:2]
    seg = slic(image, n_segments=n_segments, compactness=10, start_label=0)
    n = int(seg.max()) + 1
    lab = rgb2lab(image).reshape(-1, 3)
    flat = seg.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    colour = np.stack([np.bincount(flat, lab[:, k], n) for k in range(3)], 1) / np.maximum(count, 1)[:, None]
    yy, xx = np.mgrid[0:h, 0:w]
    side = float(max(h, w))
    pos = np.stack([np.bincount(flat, yy.ravel(), n), np.bincount(flat, xx.ravel(), n)], 1)
    pos = pos / np.maximum(count, 1)[:, None] / side
    if n < 3:
        return np.zeros((h, w), np.uint8)

    edges = adjacent_pairs(seg)
    d_app_edge = np.linalg.norm(colour[edges[:, 0]] - colour[edges[:, 1]], axis=1)
    border = np.unique(np.concatenate([seg[0], seg[-1], seg[:, 0], seg[:, -1]]))
    # Border regions are linked to each other at no cost: the border acts as one background node.
    bpairs = np.array(
        [(a, b) for i, a in enumerate(border) for b in border[i + 1 :]], dtype=np.int64
    ).reshape(-1, 2)
    rows = np.concatenate([edges[:, 0], bpairs[:, 0]])
    cols = np.concatenate([edges[:, 1], bpairs[:, 1]])
    # csgraph treats explicit zeros as missing edges; a tiny weight keeps border links.
    vals = np.concatenate([np.maximum(d_app_edge, 1e-6), np.full(len(bpairs), 1e-6)])
    graph = coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    geo = shortest_path(graph, method="D", directed=False)

    sim = np.exp(-(geo**2) / (2 * SIGMA_CLR**2))
    area = sim @ count / count.sum() * n  # in units of an average region
    len_bnd = sim[:, border] @ (count[border] / count.sum() * n) ** 0.5
    bndcon = len_bnd / np.sqrt(np.maximum(area, 1e-12))
    w_bg = 1.0 - np.exp(-(bndcon**2) / (2 * SIGMA_BNDCON**2))

    d_app = np.linalg.norm(colour[:, None] - colour[None], axis=2)
    d_spa = np.linalg.norm(pos[:, None] - pos[None], axis=2)
    w_spa = np.exp(-(d_spa**2) / (2 * SIGMA_SPA**2))
    w_fg = (d_app * w_spa) @ w_bg
    w_fg = w_fg / max(w_fg.max(), 1e-12)

    # min  sum w_bg s^2 + sum w_fg (1-s)^2 + sum_ij w_ij (s_i - s_j)^2  →  (D_bg + D_fg + L) s = w_fg
    w_ij = np.exp(-(d_app_edge**2) / (2 * SIGMA_CLR**2)) + MU
    lap = np.zeros((n, n))
    np.add.at(lap, (edges[:, 0], edges[:, 1]), -w_ij)
    np.add.at(lap, (edges[:, 1], edges[:, 0]), -w_ij)
    lap[np.diag_indices(n)] = -lap.sum(1)
    s = np.linalg.solve(np.diag(w_bg + w_fg) + lap, w_fg)
    s = (s - s.min()) / max(s.max() - s.min(), 1e-12)
    return (s[seg] * 255 + 0.5).astype(np.uint8)


def saliency_mae(saliency: np.ndarray, foreground: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean absolute error between a saliency map (uint8 or [0, 1]) and a binary foreground mask."""
    s = saliency.astype(np.float64) / (255.0 if saliency.dtype == np.uint8 else 1.0)
    err = np.abs(s - foreground.astype(np.float64))
    return float(err[valid].mean() if valid is not None else err.mean())


def precision_recall(
    saliency: np.ndarray, foreground: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of `saliency >= t` for the 256 thresholds t = 0..255 (uint8 saliency)."""
    if valid is None:
        valid = np.ones(foreground.shape, bool)
    s = saliency[valid].astype(np.int64)
    fg = foreground[valid].astype(bool)
    # counts of pixels at each saliency level, then suffix sums: pixels with saliency >= t
    hit = np.cumsum(np.bincount(s[fg], minlength=256)[::-1])[::-1].astype(np.float64)
    all_ = np.cumsum(np.bincount(s, minlength=256)[::-1])[::-1].astype(np.float64)
    precision = np.where(all_ > 0, hit / np.maximum(all_, 1), 1.0)
    recall = hit / max(fg.sum(), 1)
    return precision, recall


def max_f_measure(precisions: np.ndarray, recalls: np.ndarray, beta2: float = 0.3) -> float:
    """Max over thresholds of F_beta of the precision/recall curves averaged over images.

    `precisions`, `recalls`: (num_images, 256) arrays from `precision_recall`; beta^2 = 0.3 as is
    customary in salient-object detection.
    """
    p = np.asarray(precisions).reshape(-1, 256).mean(0)
    r = np.asarray(recalls).reshape(-1, 256).mean(0)
    f = (1 + beta2) * p * r / np.maximum(beta2 * p + r, 1e-12)
    return float(f.max())
