"""PixelNet = DeepLab-LargeFOV (Chen et al., ICLR 2015), as the paper uses it.

VGG16 conv1-5 (pool4/pool5 3x3 stride 1, conv5 dilation 2) → pool5a 3x3 average → fc6 3x3 dilation 12
×1024 → dropout → fc7 1x1 ×1024 → dropout → fc8 1x1 × (C+1). Output stride 8 (321 → 41).
With VGG16 and 21 classes: 20,505,429 parameters. On ResNet-101 the head is one 3x3 convolution
with dilation 12 to the classes (DeepLab v2's LargeFOV branch).
"""

from __future__ import annotations

import keras
from keras import layers

from mcof_tf.models.backbones import (
    DilatedConv2D,
    _regularizer,
    backbone_features,
    load_backbone_weights,
)

CLASSIFIER = "fc8"  # the layer that learns 10x faster (bias 20x)


def deeplab_largefov(
    num_classes: int,
    backbone: str = "vgg16",
    width: float = 1.0,
    weights: str = "none",
    weight_decay: float = 0.0,
    dropout: float = 0.5,
    batch_norm: bool = False,
    feature_norm: bool = False,
    fc6_dilation: int = 12,
    name: str = "pixelnet",
) -> keras.Model:
    """Image batch (mean-subtracted RGB, any size) → logits at 1/8 resolution, `num_classes` channels
    (background included)."""
    image = keras.Input((None, None, 3), name="image")
    x = backbone_features(image, backbone, width, weight_decay, batch_norm, feature_norm)
    reg = _regularizer(weight_decay)
    if backbone == "resnet101":
        logits = DilatedConv2D(
            num_classes,
            3,
            padding="same",
            dilation_rate=fc6_dilation,
            kernel_regularizer=reg,
            dtype="float32",  # float32 logits under any dtype policy (mcof_tf.precision)
            name=CLASSIFIER,
        )(x)
    else:
        fc = 1024 if backbone == "vgg16" else max(int(round(1024 * width)), 8)
        x = layers.AveragePooling2D(3, strides=1, padding="same", name="pool5a")(x)
        x = DilatedConv2D(
            fc,
            3,
            padding="same",
            dilation_rate=fc6_dilation,
            activation="relu",
            kernel_regularizer=reg,
            name="fc6",
        )(x)
        x = layers.Dropout(dropout, name="drop6")(x)
        x = layers.Conv2D(fc, 1, activation="relu", kernel_regularizer=reg, name="fc7")(x)
        x = layers.Dropout(dropout, name="drop7")(x)
        logits = layers.Conv2D(
            num_classes,
            1,
            kernel_regularizer=reg,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype="float32",  # float32 logits under any dtype policy (mcof_tf.precision)
            name=CLASSIFIER,
        )(x)
    model = keras.Model(image, logits, name=name)
    load_backbone_weights(model, backbone, weights)
    return model
