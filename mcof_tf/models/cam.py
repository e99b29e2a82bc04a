"""The CAM classifier (Zhou et al., CVPR 2016) that gives MCOF its initial seeds.

backbone → 3x3 conv → global average pooling → one logit per object class (multi-label sigmoid).
Because pooling and the classifier are both linear, CAM_c = ReLU(features · w_c) is the map whose
average is class c's logit (minus the bias); `class_activation_maps` computes it at image resolution.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from mcof_tf.models.backbones import _regularizer, backbone_features, load_backbone_weights

FEATURES = "cam_conv"
CLASSIFIER = "cam_classifier"


def build_cam(
    num_classes: int,
    backbone: str = "vgg16",
    width: float = 1.0,
    weights: str = "none",
    weight_decay: float = 0.0,
    batch_norm: bool = False,
    feature_norm: bool = False,
    name: str = "cam",
) -> keras.Model:
    """Image batch → logits over the `num_classes - 1` object classes (background has no tag)."""
    image = keras.Input((None, None, 3), name="image")
    x = backbone_features(image, backbone, width, weight_decay, batch_norm, feature_norm)
    channels = 512 if backbone != "vgg16_small" else max(int(round(512 * width)), 8)
    x = layers.Conv2D(
        channels,
        3,
        padding="same",
        activation="relu",
        kernel_regularizer=_regularizer(weight_decay),
        name=FEATURES,
    )(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    logits = layers.Dense(
        num_classes - 1, kernel_regularizer=_regularizer(weight_decay), dtype="float32", name=CLASSIFIER
    )(x)  # float32 logits under any dtype policy (mcof_tf.precision): losses and outputs stay exact
    model = keras.Model(image, logits, name=name)
    load_backbone_weights(model, backbone, weights)
    return model


def cam_extractor(model: keras.Model) -> keras.Model:
    """A model from images to (features at stride 8, logits) sharing `model`'s weights."""
    return keras.Model(model.input, [model.get_layer(FEATURES).output, model.output])


def class_activation_maps(
    extractor: keras.Model, classifier_kernel, images, scales=(1.0,), flip: bool = False
):
    """CAMs of every object class, each normalised to [0, 1] by its maximum, at the images' size.

    images: (B, H, W, 3) float (already mean-subtracted). Returns (B, H, W, C-1) float32.
    With several `scales` and/or `flip`, the normalised CAMs of the rescaled (and mirrored) images are
    averaged (multi-scale + flip inference, as IRN and psa compute their seeds' CAMs).
    """
    size = tf.shape(images)[1:3]
    maps = []
    for scale in scales:
        x = (
            images
            if scale == 1
            else tf.image.resize(
                images, tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), method="bilinear"
            )
        )
        for mirrored in (False, True) if flip else (False,):
            features, _ = extractor(x[:, :, ::-1] if mirrored else x, training=False)
            features = ops.cast(features, "float32")  # bf16/fp16 under a mixed dtype policy
            cams = ops.relu(ops.einsum("bhwk,kc->bhwc", features, classifier_kernel))
            cams = cams / ops.maximum(ops.max(cams, axis=(1, 2), keepdims=True), 1e-5)
            cams = cams[:, :, ::-1] if mirrored else cams
            # tf.image.resize takes a dynamic size; keras.ops.image.resize needs static ints, which fails
            # inside a tf.function traced for any image size (as the relabel job uses it)
            maps.append(tf.image.resize(cams, size, method="bilinear"))
    return maps[0] if len(maps) == 1 else tf.add_n(maps) / len(maps)
