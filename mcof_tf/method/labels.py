"""Label rules shared by the stages: tags enforced, per-superpixel labels, majority votes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

import numpy as np

from mcof_tf.data.voc import IGNORE_LABEL


def drop_absent_classes(labels: np.ndarray, tags: Iterable[int]) -> np.ndarray:
    """Predictions of classes the image is not tagged with become background (§4.2); 255 stays 255."""
    keep = np.zeros(256, bool)
    keep[[0, IGNORE_LABEL, *tags]] = True
    return np.where(keep[labels], labels, 0).astype(labels.dtype)


def tag_argmax(
    scores: np.ndarray, tags: Optional[Iterable[int]], rule: str = "restrict", keep_tags: bool = False
) -> np.ndarray:
    """Class of highest score along the last axis, with the image's tags enforced.

    rule "restrict": only background and the tagged classes compete (a body that RegionNet finds
    closer to an untagged look-alike class still goes to the tagged class if it beats background).
    rule "background": the paper's literal wording (§4.2): take the argmax, then turn untagged
    classes into background. tags None: no tag rule (validation images).
    """
    scores = np.asarray(scores, np.float64)
    if tags is None:
        return scores.argmax(-1)
    if rule == "background":
        return drop_absent_classes(scores.argmax(-1).astype(np.uint8), tags).astype(np.int64)
    if rule != "restrict":
        raise ValueError(f"unknown tag rule {rule!r}")
    tags = sorted(set(int(t) for t in tags))
    allowed = np.zeros(scores.shape[-1], bool)
    allowed[[0, *tags]] = True
    masked = np.where(allowed, scores, -np.inf)
    labels = masked.argmax(-1)
    if not keep_tags:
        return labels
    probs = np.exp(masked - masked.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    best_object = np.where(np.arange(scores.shape[-1]) == 0, -1.0, probs).argmax(-1)
    for c in tags:
        if c == 0 or (labels == c).any():
            continue
        p = probs[..., c]
        labels = np.where((best_object == c) & (p >= 0.5 * p.max()), c, labels)
    return labels


def leave_unsure(labels: np.ndarray, probs: np.ndarray, min_confidence: float) -> np.ndarray:
    """Labels whose top probability is below `min_confidence` become unlabelled (255)."""
    if min_confidence <= 0:
        return labels
    return np.where(np.asarray(probs).max(-1) >= min_confidence, labels, IGNORE_LABEL).astype(labels.dtype)


def saliency_background(labels: np.ndarray, saliency: np.ndarray, threshold: float) -> np.ndarray:
    """Object labels on pixels whose saliency (uint8, 0..255) is below `threshold` (0..1) become
    background; background and unlabelled (255) stay. 0: the labels unchanged."""
    if threshold <= 0:
        return labels
    low = np.asarray(saliency, np.float32) < threshold * 255.0
    objects = (labels != 0) & (labels != IGNORE_LABEL)
    return np.where(low & objects, 0, labels).astype(labels.dtype)


def agreement(labels: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Pixel labels kept where they equal `previous` (same shape), unlabelled (255) where the two
    differ or either is unlabelled."""
    labels, previous = np.asarray(labels), np.asarray(previous)
    if labels.shape != previous.shape:
        raise ValueError(f"labels {labels.shape} and previous labels {previous.shape} differ in shape")
    return np.where(labels == previous, labels, IGNORE_LABEL).astype(np.uint8)


def paint(region_labels: np.ndarray, superpixels: np.ndarray) -> np.ndarray:
    """Per-superpixel labels → pixel labels (uint8); pixels of no superpixel (-1) get 255."""
    out = np.full(superpixels.shape, IGNORE_LABEL, np.uint8)
    inside = superpixels >= 0
    out[inside] = np.asarray(region_labels, np.uint8)[superpixels[inside]]
    return out
