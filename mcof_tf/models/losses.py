"""Losses and metrics of the three networks (keras.losses / keras.metrics underneath).

- CAM: multi-label sigmoid cross-entropy over the object tags (optionally class-balanced).
- RegionNet, eq. 1: cross-entropy over the labelled superpixels (255 = unlabelled/absent, ignored).
- PixelNet, eq. 3: cross-entropy over the labelled pixels, averaged over them (255 ignored). Labels are
  shrunk (nearest) to the logits' 1/8 resolution, as DeepLab's Caffe `Interp` layer does.
"""

from __future__ import annotations

import keras
from keras import ops

from mcof_tf.data.voc import IGNORE_LABEL


def _shrink(labels, logits):
    """(B, H, W) int labels → the logits' spatial size by nearest sampling."""
    size = ops.shape(logits)[1:3]
    lab = ops.image.resize(ops.cast(labels, "float32")[..., None], size, interpolation="nearest")
    return ops.cast(lab[..., 0], "int32")


def balance_weights(labels, valid, num_classes: int, power: float):
    """Per-position weights f_c ** -power, f_c = the batch's share of labelled positions of class c,
    scaled so that they average 1 over the labelled positions (the loss keeps its scale).

    power 0: plain cross-entropy; 1: every class present in the batch weighs the same in total.
    """
    onehot = ops.one_hot(labels, num_classes) * ops.cast(valid, "float32")[..., None]
    counts = ops.sum(ops.reshape(onehot, (-1, num_classes)), axis=0)
    share = counts / ops.maximum(ops.sum(counts), 1.0)
    w = ops.where(counts > 0, ops.power(ops.maximum(share, 1e-12), -power), 0.0)
    w = w / ops.maximum(ops.sum(share * w), 1e-12)
    return ops.take(w, labels)


@keras.saving.register_keras_serializable(package="mcof_tf")
class MaskedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy ignoring `ignore_class`, averaged over the labelled positions only.

    Works for region logits (B, R, C) with labels (B, R) and for pixel logits (B, h, w, C) with labels
    (B, H, W), which are shrunk to (h, w) first.

    `class_balance` (the power of `balance_weights`): with objects a few percent of the pixels, plain
    cross-entropy is minimised early by predicting background everywhere, and a from-scratch network
    can stay on that plateau for its whole schedule; weighting rare classes up gives them a gradient.
    """

    def __init__(
        self,
        ignore_class: int = IGNORE_LABEL,
        class_balance: float = 0.0,
        upsample: bool = False,
        name: str = "masked_ce",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.ignore_class = ignore_class
        self.class_balance = float(class_balance)
        self.upsample = bool(upsample)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        if len(y_pred.shape) == 4:
            if (
                self.upsample
            ):  # logits up to the labels (DeepLab v3+, TF Model Garden): every labelled pixel counts
                y_pred = ops.image.resize(y_pred, ops.shape(y_true)[1:3], interpolation="bilinear")
            else:  # labels down to the logits (DeepLab-LargeFOV's Caffe Interp layer)
                y_true = _shrink(y_true, y_pred)
        valid = ops.not_equal(y_true, self.ignore_class)
        safe = ops.where(valid, y_true, 0)
        ce = keras.losses.sparse_categorical_crossentropy(safe, y_pred, from_logits=True)
        mask = ops.cast(valid, ce.dtype)
        if self.class_balance:
            mask = mask * ops.cast(
                balance_weights(safe, valid, y_pred.shape[-1], self.class_balance), ce.dtype
            )
        # eq. 3: 1 / (number of labelled positions) * sum over them; per image here, then the usual batch mean
        axes = tuple(range(1, len(ce.shape)))
        return ops.sum(ce * mask, axis=axes) / ops.maximum(ops.sum(ops.cast(valid, ce.dtype), axis=axes), 1.0)

    def get_config(self):
        return {
            **super().get_config(),
            "ignore_class": self.ignore_class,
            "class_balance": self.class_balance,
            "upsample": self.upsample,
        }


@keras.saving.register_keras_serializable(package="mcof_tf")
class SegmentationMeanIoU(keras.metrics.MeanIoU):
    """keras.metrics.MeanIoU from logits, with labels shrunk to the logits' size and 255 ignored."""

    def __init__(self, num_classes: int, name: str = "miou", **kwargs):
        kwargs.pop("ignore_class", None)
        kwargs.pop("sparse_y_pred", None)
        super().__init__(
            num_classes=num_classes, name=name, ignore_class=IGNORE_LABEL, sparse_y_pred=True, **kwargs
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        if len(y_pred.shape) == 4:
            y_true = _shrink(y_true, y_pred)
        return super().update_state(y_true, ops.argmax(y_pred, axis=-1), sample_weight)


@keras.saving.register_keras_serializable(package="mcof_tf")
class TagCrossEntropy(keras.losses.Loss):
    """Multi-label sigmoid cross-entropy of the CAM classifier, with the same `class_balance` as the
    segmentation losses: positives and negatives weighted by (their share in the batch) ** -power,
    scaled to average 1. With 1.4 tags of 10 classes per image, 86 % of the targets are negatives and
    plain cross-entropy is first minimised by answering "no tag" everywhere."""

    def __init__(self, class_balance: float = 0.0, name: str = "tag_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_balance = float(class_balance)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        ce = ops.binary_crossentropy(y_true, y_pred, from_logits=True)
        if self.class_balance:
            w = balance_weights(
                ops.cast(y_true, "int32"), ops.ones_like(y_true, dtype="bool"), 2, self.class_balance
            )
            ce = ce * ops.cast(w, ce.dtype)
        return ops.mean(ce, axis=-1)

    def get_config(self):
        return {**super().get_config(), "class_balance": self.class_balance}


@keras.saving.register_keras_serializable(package="mcof_tf")
class TagF1(keras.metrics.F1Score):
    """Micro-averaged F1 of the multi-label tag predictions from logits (probability > 0.5).

    Binary accuracy flatters a classifier when tags are sparse (with 1.4 tags of 10 classes per image,
    predicting no tag at all scores 0.86); F1 is 0 for that and 1 only for the right tags."""

    def __init__(self, name: str = "tag_f1", num_classes: int | None = None, **kwargs):
        kwargs.pop("average", None)
        kwargs.pop("threshold", None)
        super().__init__(average="micro", threshold=0.5, name=name, **kwargs)
        if num_classes:  # its counts made now, not inside the first traced training step (see
            self._build((None, num_classes), (None, num_classes))  # training.compiled_network)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(
            ops.cast(y_true, "float32"), ops.sigmoid(ops.cast(y_pred, "float32")), sample_weight
        )
