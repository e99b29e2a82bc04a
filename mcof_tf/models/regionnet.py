"""RegionNet (§4.2): classifies every superpixel of an image, mask-based Fast R-CNN style.

Each superpixel's bounding box is a RoI; `MaskedRoIPooling` pools the backbone features inside the
box to k×k with features outside the superpixel (inside the box) set to zero; fc layers classify the
pooled features into C+1 classes (background included). Trained with eq. 1 (cross-entropy over the
labelled superpixels).

Superpixels are given as the image-resolution id map (ids 0..n-1, -1 = none), and the model returns
logits for region ids 0..max_regions-1 of every image, so no ragged inputs are needed; ids that do not
occur in an image get a zero feature and must carry the ignore label.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from mcof_tf.data.voc import IGNORE_LABEL
from mcof_tf.models.backbones import _regularizer, backbone_features, load_backbone_weights

CLASSIFIER = "region_classifier"


@keras.saving.register_keras_serializable(package="mcof_tf")
class MaskedRoIPooling(layers.Layer):
    """(features (B, h, w, C), superpixels (B, H, W) int) → (B, R, k, k, C), R = max_regions.

    For region r of image b: its box is the bounding box of `superpixels[b] == r`; the features are
    sampled bilinearly on a (k·s)×(k·s) grid spanning the box (RoIAlign-style, `s` = sampling_ratio),
    samples whose position falls outside the superpixel are zeroed (the superpixel id map is sampled
    at image resolution, nearest), and each s×s group is max-pooled to one of the k×k bins.
    Box coordinates are normalised to [0, 1] over the image, which maps onto the feature grid because
    both span the same field of view. Vectorised over all regions; gradients flow to the features.
    """

    def __init__(self, pool_size: int = 7, max_regions: int = 256, sampling_ratio: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False  # tf.image.crop_and_resize has no XLA kernel
        self.pool_size = int(pool_size)
        self.max_regions = int(max_regions)
        self.sampling_ratio = int(sampling_ratio)

    def call(self, features, superpixels):
        sp = tf.cast(superpixels, tf.int32)
        b = tf.shape(sp)[0]
        h, w = tf.shape(sp)[1], tf.shape(sp)[2]
        r = self.max_regions
        # one segment per (image, region); everything else (-1 or ids >= R) goes to a dump segment
        valid = (sp >= 0) & (sp < r)
        seg = tf.where(valid, sp + tf.range(b)[:, None, None] * r, b * r)
        ys = tf.broadcast_to(tf.range(h)[None, :, None], tf.shape(sp))
        xs = tf.broadcast_to(tf.range(w)[None, None, :], tf.shape(sp))
        n = b * r + 1
        flat_seg = tf.reshape(seg, [-1])

        def seg_reduce(fn, v):
            return tf.cast(fn(tf.reshape(v, [-1]), flat_seg, n)[:-1], tf.float32)

        present = seg_reduce(tf.math.unsorted_segment_sum, tf.ones_like(sp)) > 0
        denom_y = tf.cast(tf.maximum(h - 1, 1), tf.float32)
        denom_x = tf.cast(tf.maximum(w - 1, 1), tf.float32)
        boxes = tf.stack(
            [
                seg_reduce(tf.math.unsorted_segment_min, ys) / denom_y,
                seg_reduce(tf.math.unsorted_segment_min, xs) / denom_x,
                seg_reduce(tf.math.unsorted_segment_max, ys) / denom_y,
                seg_reduce(tf.math.unsorted_segment_max, xs) / denom_x,
            ],
            axis=1,
        )
        # only the regions an image has (on the default data about half of max_regions, fewer in a
        # crop) are cropped, masked and pooled; the others are zeros scattered in at the end
        where = tf.cast(tf.where(present), tf.int32)
        boxes = tf.gather_nd(boxes, where)
        box_images = where[:, 0] // r
        size = self.pool_size * self.sampling_ratio
        # crop_and_resize has no bf16 kernel and returns float32: pool in float32, hand back the input's dtype
        crops = tf.image.crop_and_resize(
            tf.cast(features, tf.float32), boxes, box_images, [size, size], method="bilinear"
        )
        ids = tf.image.crop_and_resize(
            tf.cast(sp, tf.float32)[..., None], boxes, box_images, [size, size], method="nearest"
        )
        region_id = tf.cast(where[:, 0] % r, tf.float32)
        inside = ids[..., 0] == region_id[:, None, None]
        crops = crops * tf.cast(inside, crops.dtype)[..., None]
        pooled = tf.nn.max_pool2d(crops, self.sampling_ratio, self.sampling_ratio, "VALID")
        pooled = tf.scatter_nd(where, pooled, tf.concat([[n - 1], tf.shape(pooled)[1:]], 0))
        c = tf.shape(features)[-1]
        out = tf.reshape(tf.cast(pooled, features.dtype), [b, r, self.pool_size, self.pool_size, c])
        if features.shape[-1] is not None:
            out = tf.ensure_shape(out, [None, r, self.pool_size, self.pool_size, features.shape[-1]])
        return out

    def compute_output_shape(self, features_shape, superpixels_shape):
        return (features_shape[0], self.max_regions, self.pool_size, self.pool_size, features_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "max_regions": self.max_regions,
            "sampling_ratio": self.sampling_ratio,
        }


def build_regionnet(
    num_classes: int,
    backbone: str = "vgg16",
    width: float = 1.0,
    weights: str = "none",
    weight_decay: float = 0.0,
    max_regions: int = 256,
    pool_size: int = 7,
    sampling_ratio: int = 2,
    fc_units: int = 1024,
    dropout: float = 0.5,
    batch_norm: bool = False,
    feature_norm: bool = False,
    name: str = "regionnet",
) -> keras.Model:
    """{image (B, H, W, 3), superpixels (B, H, W)} → logits (B, max_regions, num_classes)."""
    image = keras.Input((None, None, 3), name="image")
    superpixels = keras.Input((None, None), dtype="int32", name="superpixels")
    x = backbone_features(image, backbone, width, weight_decay, batch_norm, feature_norm)
    x = MaskedRoIPooling(pool_size, max_regions, sampling_ratio, name="masked_roi_pool")(x, superpixels)
    x = layers.Reshape((max_regions, -1), name="flatten_rois")(x)
    reg = _regularizer(weight_decay)
    for i in (1, 2):
        x = layers.Dense(fc_units, activation="relu", kernel_regularizer=reg, name=f"region_fc{i}")(x)
        x = layers.Dropout(dropout, name=f"region_drop{i}")(x)
    logits = layers.Dense(
        num_classes,
        kernel_regularizer=reg,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        dtype="float32",  # float32 logits under any dtype policy (mcof_tf.precision)
        name=CLASSIFIER,
    )(x)
    model = keras.Model({"image": image, "superpixels": superpixels}, logits, name=name)
    load_backbone_weights(model, backbone, weights)
    return model


def region_labels(
    pixel_labels, superpixels, max_regions: int, num_classes: int, ignore_label: int = IGNORE_LABEL
):
    """Majority vote of the labelled pixels of each superpixel → (B, max_regions) int32, `ignore_label`
    for regions with no labelled pixel (or absent). How seeds, RegionNet targets and PixelNet masks
    (Algorithm 1, line 11) become per-superpixel labels."""
    lab = tf.cast(pixel_labels, tf.int32)
    sp = tf.cast(superpixels, tf.int32)
    b = tf.shape(sp)[0]
    ok = (sp >= 0) & (sp < max_regions) & (lab != ignore_label) & (lab >= 0) & (lab < num_classes)
    seg = tf.where(ok, sp + tf.range(b)[:, None, None] * max_regions, b * max_regions)
    votes = tf.math.unsorted_segment_sum(
        tf.one_hot(tf.where(ok, lab, 0), num_classes), tf.reshape(seg, tf.shape(lab)), b * max_regions + 1
    )[:-1]
    winner = tf.cast(tf.argmax(votes, axis=-1), tf.int32)
    winner = tf.where(tf.reduce_sum(votes, -1) > 0, winner, ignore_label)
    return tf.reshape(winner, [b, max_regions])
