"""Evaluation, numpy in and out: confusion matrices, mIoU, precision / recall, and the label statistics
that need no ground truth. The run report that shows them is `mcof_tf.report`.

A prediction of 255 (a seed left unlabelled) counts as background; ground-truth 255 (void) is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from mcof_tf.data.voc import IGNORE_LABEL


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = ground truth, columns = prediction."""
    valid = gt != IGNORE_LABEL
    p = np.where(pred == IGNORE_LABEL, 0, pred)[valid].astype(np.int64)
    g = gt[valid].astype(np.int64)
    if g.size and (g.max() >= num_classes or p.max() >= num_classes):
        raise ValueError(f"labels outside the {num_classes} classes")
    return np.bincount(g * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both ground truth and prediction."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU in percent over the classes that occur (VOC convention), 0..100."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0


def object_precision_recall(conf: np.ndarray) -> tuple[float, float]:
    """(precision, recall) in percent of the object pixels (every class but background, index 0):
    of the pixels labelled as some object, the share labelled with the right one; of the ground-truth
    object pixels, the share found. Unlabelled (255) predictions count as background, so sparse but
    precise seeds have a high precision and a low recall (the paper's seeds)."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)[1:].sum()
    labelled, present = conf[:, 1:].sum(), conf[1:, :].sum()
    return (float(100 * tp / labelled) if labelled else 0.0), (float(100 * tp / present) if present else 0.0)


def precision_recall_per_class(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's precision (of the pixels labelled c, the share that are c) and recall (of the
    pixels that are c, the share labelled c), as fractions; NaN where nothing was labelled / present."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(conf.sum(0) > 0, tp / conf.sum(0), np.nan), np.where(
            conf.sum(1) > 0, tp / conf.sum(1), np.nan
        )


def metrics_entry(conf: np.ndarray, classes: Sequence[str]) -> dict:
    iou = iou_per_class(conf)
    precision, recall = object_precision_recall(conf)
    per_p, per_r = precision_recall_per_class(conf)

    def pct(values):
        return {c: (None if np.isnan(v) else round(float(v) * 100, 3)) for c, v in zip(classes, values)}

    return {
        "miou": round(mean_iou(conf), 3),
        "object_precision": round(precision, 3),
        "object_recall": round(recall, 3),
        "per_class": pct(iou),
        "per_class_precision": pct(per_p),
        "per_class_recall": pct(per_r),
    }


def label_stats(
    labels: np.ndarray,
    num_classes: int,
    tags=None,
    previous: Optional[np.ndarray] = None,
    confidence: Optional[np.ndarray] = None,
) -> np.ndarray:
    """What can be said of one image's labels without ground truth, as a vector to sum over images:
    [pixels of each class (C), unlabelled pixels, images, images with a tag that got no pixel,
    pixels whose label changed from `previous`, pixels labelled in both, summed confidence, pixels].
    tags: the image's tags (None: not checked); confidence: the network's top probability per pixel."""
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(
        np.where(labels == IGNORE_LABEL, num_classes, labels).ravel(), minlength=num_classes + 1
    )
    if counts.size > num_classes + 1:
        raise ValueError(f"labels outside the {num_classes} classes")
    missing = tags is not None and any(counts[int(t)] == 0 for t in tags)
    changed = compared = 0
    if previous is not None:
        both = (labels != IGNORE_LABEL) & (np.asarray(previous) != IGNORE_LABEL)
        compared, changed = int(both.sum()), int((both & (labels != previous)).sum())
    conf = (float(np.sum(confidence)), int(np.size(confidence))) if confidence is not None else (0.0, 0)
    return np.concatenate([counts, [1, int(missing), changed, compared, conf[0], conf[1]]]).astype(np.float64)


def stats_entry(summed: np.ndarray, classes: Sequence[str]) -> dict:
    """Summed `label_stats` vectors → shares in percent (None where nothing was measured)."""
    c = len(classes)
    counts, (images, missing, changed, compared, conf, conf_n) = summed[: c + 1], summed[c + 1 :]
    pixels = counts.sum()

    def pct(a, b):
        return round(float(100 * a / b), 3) if b else None

    return {
        "images": int(images),
        "labelled": pct(pixels - counts[c], pixels),
        "share": {name: pct(counts[i], pixels) for i, name in enumerate(classes)},
        "images_with_an_unlabelled_tag": int(missing),
        "changed": pct(changed, compared),
        "confidence": pct(conf, conf_n),
    }


# ---------------------------------------------------------------------------------------------- report

STAGE_ORDER = (
    "seeds",
    "regionnet",
    "regionnet_crf",
    "refined",
    "agreed",
    "pixelnet",
    "pixelnet_crf",
    "masks",
)
