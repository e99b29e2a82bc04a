"""Refinement of labels: saliency-guided (§4.3, eq. 2; iteration 1, single-tag images) and by a dense CRF
over a network's probabilities (PixelNet's masks before they become the next seeds, config `labels.crf`;
RegionNet's regions, config `labels.region_crf`).

Saliency-guided refinement:

    p(obj | v) = p(obj) p(v|obj) / (p(obj) p(v|obj) + p(bg) p(v|bg))

p(obj) is the saliency map, p(bg) = 1 - p(obj); p(v|obj) and p(v|bg) are colour histograms (RGB,
`bins`³ cells, lightly smoothed) of the RegionNet object region and of the background region: the
pixels that are neither in the object region nor salient (both cues agree), or, when there is no such
pixel, everything outside the object region. Taking "everything else" as background would put the
object's still-missing parts into p(v|bg), which are exactly the parts refinement must recover. The
posterior is binarised with a dense CRF; the refined region is the CRF's object plus the RegionNet
region it supplements (with `keep_posterior` > 0, only the part of that region whose posterior exceeds it:
config `labels.refine_posterior`; with `connected`, only the parts of the CRF's object that touch the region:
a salient distractor of the object's colour elsewhere in the image is not a missing part of it, config
`labels.refine_connected`).
"""

from __future__ import annotations

import numpy as np

from mcof_tf.vision.crf import dense_crf


def colour_likelihoods(
    image: np.ndarray,
    object_mask: np.ndarray,
    background_mask: np.ndarray | None = None,
    bins: int = 8,
    alpha: float = 0.1,
):
    """(p(v|obj), p(v|bg)) per pixel from colour histograms of the object and background regions
    (background: everything outside the object when not given)."""
    q = image.astype(np.int64) * bins // 256
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    n = bins**3
    background_mask = ~object_mask if background_mask is None else background_mask
    h_obj = np.bincount(cell[object_mask], minlength=n) + alpha
    h_bg = np.bincount(cell[background_mask], minlength=n) + alpha
    return (h_obj / h_obj.sum())[cell], (h_bg / h_bg.sum())[cell]


def object_posterior(saliency: np.ndarray, p_v_obj: np.ndarray, p_v_bg: np.ndarray) -> np.ndarray:
    """Eq. 2 with p(obj) = saliency in [0, 1]."""
    num = saliency * p_v_obj
    return num / np.maximum(num + (1.0 - saliency) * p_v_bg, 1e-12)


def refine_single_tag(
    image: np.ndarray,
    saliency: np.ndarray,
    region_labels: np.ndarray,
    tag: int,
    use_crf: bool = True,
    keep_posterior: float = 0.0,
    connected: bool = False,
) -> np.ndarray:
    """Refined pixel labels (uint8: `tag` or 0) of a single-tag image.

    image H×W×3 uint8; saliency H×W uint8; region_labels H×W (RegionNet's labels, tags enforced).
    An image whose RegionNet region is empty has nothing to learn colours from and is returned as is.
    keep_posterior: RegionNet's object pixels stay only where the posterior exceeds it (0: all of them,
    the paper's supplement); non-salient pixels of another colour than the object's leave the region.
    connected: only the parts of the refined region that touch RegionNet's object region stay.
    """
    obj = region_labels == tag
    if not obj.any() or obj.all():
        return region_labels.astype(np.uint8)
    sal = saliency.astype(np.float64) / 255.0
    background = ~obj & (sal < 0.5)
    p_obj, p_bg = colour_likelihoods(image, obj, background if background.any() else ~obj)
    post = object_posterior(sal, p_obj, p_bg)
    if use_crf:
        fg = dense_crf(image, np.stack([1.0 - post, post]).astype(np.float32)).argmax(0) == 1
    else:
        fg = post > 0.5
    kept = obj & (post > keep_posterior) if keep_posterior > 0 else obj
    refined = fg | kept
    if connected:  # the (4-)connected parts of the refined region that hold RegionNet's object pixels
        from scipy import ndimage

        parts, _ = ndimage.label(refined)
        touching = np.unique(parts[refined & obj])
        refined = np.isin(parts, touching[touching > 0])
    return np.where(refined, tag, 0).astype(np.uint8)


def softmax(scores: np.ndarray, tags=None) -> np.ndarray:
    """Softmax over the last axis; with `tags`, classes other than background and the tags get 0."""
    scores = np.asarray(scores, np.float64)
    if tags is not None:
        allowed = np.zeros(scores.shape[-1], bool)
        allowed[[0, *[int(t) for t in tags]]] = True
        scores = np.where(allowed, scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def crf_probabilities(image: np.ndarray, scores: np.ndarray, tags=None) -> np.ndarray:
    """A dense CRF's marginals (H×W×C) from a network's scores (H×W×C logits) on `image` (H×W×3 uint8):
    label edges move to colour edges. With `tags`, only background and the tagged classes compete."""
    q = dense_crf(image, np.moveaxis(softmax(scores, tags), -1, 0).astype(np.float32))
    q = np.moveaxis(q, 0, -1)
    if tags is not None:  # the CRF floors every class at 1e-5: keep untagged classes at 0
        q = softmax(np.log(np.maximum(q, 1e-12)), tags)
    return q


def crf_regions(image: np.ndarray, superpixels: np.ndarray, scores: np.ndarray, tags=None) -> np.ndarray:
    """A dense CRF's marginals (H×W×C) from per-superpixel scores (n×C logits, RegionNet's), each pixel
    starting from its superpixel's: a superpixel labelled as an object only because its pooled features
    saw the object next to it is pulled back to the colour it shares with the background (pixels of no
    superpixel, -1, start from superpixel 0's scores; callers leave them unlabelled)."""
    return crf_probabilities(image, np.asarray(scores)[np.maximum(superpixels, 0)], tags)
