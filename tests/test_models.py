"""Models by shape, parameter count, weight transfer, save/load round-trip and hand-checked pieces."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcof_tf.models import losses
from mcof_tf.models.backbones import copy_shared_layers, load_backbone_weights
from mcof_tf.models.cam import CLASSIFIER, build_cam, cam_extractor, class_activation_maps
from mcof_tf.models.deeplab import deeplab_largefov
from mcof_tf.models.regionnet import MaskedRoIPooling, build_regionnet, region_labels


def test_deeplab_largefov_matches_the_paper():
    m = deeplab_largefov(21)
    assert m.count_params() == 20_505_429
    out = m(np.zeros((1, 321, 321, 3), np.float32))
    assert tuple(out.shape) == (1, 41, 41, 21)
    assert m.get_layer("block4_pool").strides == (1, 1) and m.get_layer("block5_conv1").dilation_rate == (
        2,
        2,
    )
    assert m.get_layer("fc6").dilation_rate == (12, 12)


def test_vgg16_weights_transfer_from_a_local_file(tmp_path):
    src = keras.applications.VGG16(weights=None, include_top=False)
    path = str(tmp_path / "vgg16.weights.h5")
    src.save_weights(path)
    m = deeplab_largefov(5, weights=path)
    got, want = m.get_layer("block1_conv1").get_weights(), src.get_layer("block1_conv1").get_weights()
    np.testing.assert_array_equal(got[0], want[0][:, :, ::-1, :])  # BGR kernel turned to RGB input
    np.testing.assert_array_equal(got[1], want[1])
    for name in ("block3_conv2", "block5_conv3"):
        for a, b in zip(m.get_layer(name).get_weights(), src.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        deeplab_largefov(5, weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="no pretrained weights"):
        deeplab_largefov(5, backbone="vgg16_small", width=0.25, weights=path)


def test_hed_vgg16_weights_from_the_installed_package():
    import h5py

    from mcof_tf.models.backbones import hed_weights_file

    path = hed_weights_file()
    m = deeplab_largefov(5, weights="hed-vgg16")
    with h5py.File(path, "r") as f:
        first = f["block1/layers/conv2d/vars/0"][()]
        last = f["block5/layers/conv2d_2/vars/0"][()]
        bias = f["block3/layers/conv2d_1/vars/1"][()]
    np.testing.assert_array_equal(m.get_layer("block1_conv1").get_weights()[0], first[:, :, ::-1, :])
    np.testing.assert_array_equal(m.get_layer("block5_conv3").get_weights()[0], last)
    np.testing.assert_array_equal(m.get_layer("block3_conv2").get_weights()[1], bias)
    # batch-norm VGG16 (no conv bias) takes the kernels only
    bn = deeplab_largefov(5, weights="hed-vgg16", batch_norm=True)
    np.testing.assert_array_equal(bn.get_layer("block5_conv3").get_weights()[0], last)
    with pytest.raises(ValueError, match="model.backbone: vgg16"):
        deeplab_largefov(5, backbone="resnet101", weights="hed-vgg16")


def test_feature_norm_only_where_the_backbone_has_no_batch_norm():
    def names(m):
        return {layer.name for layer in m.layers}

    plain, normed = deeplab_largefov(21), deeplab_largefov(21, feature_norm=True)
    assert "feature_norm" not in names(plain) and "feature_norm" in names(normed)
    assert normed.count_params() == 20_505_429 + 4 * 512  # gamma, beta and two moving statistics
    small = dict(backbone="vgg16_small", width=0.125)
    assert "feature_norm" in names(build_cam(5, **small, feature_norm=True))
    assert "feature_norm" in names(build_regionnet(5, **small, max_regions=8, fc_units=8, feature_norm=True))
    # a backbone with batch norm of its own gets none more
    assert "feature_norm" not in names(deeplab_largefov(5, **small, batch_norm=True, feature_norm=True))


def test_feature_norm_lets_random_heads_learn_on_the_pretrained_vgg16():
    """The cause of hed-vgg16's "all background": its conv5 features are large (Caffe-range pixels), so
    SGD on the randomly initialised head diverges at the classifier's learning rate; normalised, the
    same two images are fitted."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (2, 64, 64, 3)).astype(np.float32)
    y = np.zeros((2, 64, 64), np.int32)
    x[0, 8:40, 8:40] += [120, -60, -60]
    y[0, 8:40, 8:40] = 1
    x[1, 24:56, 20:52] += [-60, -60, 120]
    y[1, 24:56, 20:52] = 2
    curves = {}
    for norm in (False, True):
        keras.utils.set_random_seed(0)
        m = deeplab_largefov(3, weights="hed-vgg16", fc6_dilation=4, feature_norm=norm)
        m.compile(keras.optimizers.SGD(0.01, momentum=0.9), losses.MaskedCrossEntropy(upsample=True))
        curves[norm] = np.asarray(m.fit(x, y, batch_size=2, epochs=8, verbose=0).history["loss"])
    diverged = curves[False]
    assert not np.all(np.isfinite(diverged)) or diverged.max() > 10 * diverged[0]
    fitted = curves[True]
    assert np.all(np.isfinite(fitted)) and fitted[-1] < 0.8 * fitted[0]


def test_resnet101_is_dilated_to_output_stride_8(tmp_path):
    m = deeplab_largefov(4, backbone="resnet101")
    assert tuple(m(np.zeros((1, 64, 64, 3), np.float32)).shape) == (1, 8, 8, 4)
    app = keras.applications.ResNet101(include_top=False, weights=None)
    body = m.get_layer("resnet101_os8")
    assert body.count_params() == app.count_params()
    assert body.get_layer("conv4_block1_1_conv").strides == (1, 1)
    assert body.get_layer("conv4_block5_2_conv").dilation_rate == (2, 2)
    assert body.get_layer("conv5_block3_2_conv").dilation_rate == (4, 4)
    path = str(tmp_path / "r101.weights.h5")
    app.save_weights(path)
    assert load_backbone_weights(m, "resnet101", path) > 100
    np.testing.assert_array_equal(
        body.get_layer("conv5_block3_3_conv").get_weights()[0],
        app.get_layer("conv5_block3_3_conv").get_weights()[0],
    )


def test_cam_logits_are_the_average_of_the_maps():
    m = build_cam(4, "vgg16_small", width=0.125)
    x = np.random.default_rng(0).normal(0, 50, (2, 40, 48, 3)).astype(np.float32)
    ext = cam_extractor(m)
    feats, logits = ext(x)
    w, b = m.get_layer(CLASSIFIER).get_weights()
    # GAP then dense == dense then GAP: the linearity CAM relies on
    np.testing.assert_allclose(
        np.einsum("bhwk,kc->bhwc", feats, w).mean((1, 2)) + b, logits, rtol=1e-4, atol=1e-4
    )
    cams = class_activation_maps(ext, w, x).numpy()
    assert cams.shape == (2, 40, 48, 3)
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
    # flip: the average of the CAMs of the image and of its mirror image, mapped back
    mirrored = class_activation_maps(ext, w, x[:, :, ::-1]).numpy()[:, :, ::-1]
    np.testing.assert_allclose(
        class_activation_maps(ext, w, x, flip=True).numpy(), (cams + mirrored) / 2, atol=1e-5
    )
    # scales: each scale's CAMs are computed on the resized image and brought back to the image's size
    multi = class_activation_maps(ext, w, x, scales=(0.5, 1.0, 1.5)).numpy()
    assert multi.shape == cams.shape and multi.min() >= 0 and multi.max() <= 1 + 1e-6
    assert not np.allclose(multi, cams, atol=1e-3)


def _numpy_masked_roi(features, sp, r, k, s):
    """Reference: the same sampling written out with loops (TF crop_and_resize coordinate rules)."""
    b_, fh, fw, c = features.shape
    _, h, w = sp.shape
    size = k * s
    out = np.zeros((b_, r, k, k, c), np.float32)
    for b in range(b_):
        for reg in range(r):
            ys, xs = np.nonzero(sp[b] == reg)
            if ys.size == 0:
                continue
            y1, x1, y2, x2 = ys.min() / (h - 1), xs.min() / (w - 1), ys.max() / (h - 1), xs.max() / (w - 1)
            samples = np.zeros((size, size, c), np.float32)
            for i in range(size):
                for j in range(size):
                    fy = y1 * (fh - 1) + i * (y2 - y1) * (fh - 1) / (size - 1)
                    fx = x1 * (fw - 1) + j * (x2 - x1) * (fw - 1) / (size - 1)
                    y0, x0 = int(np.floor(fy)), int(np.floor(fx))
                    y1i, x1i = min(y0 + 1, fh - 1), min(x0 + 1, fw - 1)
                    dy, dx = fy - y0, fx - x0
                    v = (
                        features[b, y0, x0] * (1 - dy) * (1 - dx)
                        + features[b, y0, x1i] * (1 - dy) * dx
                        + features[b, y1i, x0] * dy * (1 - dx)
                        + features[b, y1i, x1i] * dy * dx
                    )
                    iy = int(round(y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size - 1)))
                    ix = int(round(x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size - 1)))
                    samples[i, j] = v if sp[b, iy, ix] == reg else 0.0
            out[b, reg] = samples.reshape(k, s, k, s, c).max(axis=(1, 3))
    return out


def test_a_regionnet_takes_the_backbone_of_a_pixelnet_and_keeps_its_head():
    """train.regionnet_backbone: pixelnet copies the shared backbone (13 convolutions + their batch
    norms of the narrow VGG16) and nothing else; networks on different backbones share nothing."""
    kw = {"backbone": "vgg16_small", "width": 0.125, "batch_norm": True}
    keras.utils.set_random_seed(0)
    pixelnet = deeplab_largefov(4, **kw)
    regionnet = build_regionnet(4, **kw, max_regions=8, pool_size=2, fc_units=8)
    head = [w.copy() for w in regionnet.get_layer("region_fc1").get_weights()]
    assert copy_shared_layers(regionnet, pixelnet) == 26
    for name in ("block1_conv1", "block3_conv2_bn", "block5_conv3"):
        for a, b in zip(regionnet.get_layer(name).get_weights(), pixelnet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(regionnet.get_layer("region_fc1").get_weights(), head):
        np.testing.assert_array_equal(a, b)
    full_width = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="share no layer"):  # the same names, other shapes
        copy_shared_layers(regionnet, full_width)


def test_masked_roi_pooling_matches_numpy_reference():
    rng = np.random.default_rng(1)
    features = rng.uniform(0, 1, (2, 5, 6, 3)).astype(np.float32)
    # superpixels: blocks with an L-shaped region, a hole (-1) and an id beyond max_regions
    sp = np.repeat(np.repeat(rng.integers(0, 5, (2, 4, 5)), 4, axis=1), 4, axis=2)[:, :17, :19].astype(
        np.int32
    )
    sp[0, :3, :3] = -1
    sp[1, 5:9, 5:9] = 9
    layer = MaskedRoIPooling(pool_size=2, max_regions=6, sampling_ratio=2)
    got = layer(tf.constant(features), tf.constant(sp)).numpy()
    want = _numpy_masked_roi(features, sp, 6, 2, 2)
    assert got.shape == (2, 6, 2, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not (sp == 5).any() and (got[:, 5] == 0).all()  # an absent region pools to zero


def test_masked_roi_pooling_gradients_and_config():
    layer = MaskedRoIPooling(pool_size=3, max_regions=4, sampling_ratio=1)
    features = tf.Variable(np.random.default_rng(2).uniform(0, 1, (1, 4, 4, 2)).astype(np.float32))
    sp = tf.constant(np.array([[[0, 0, 1, 1]] * 2 + [[2, 2, 3, 3]] * 2]).repeat(2, axis=1).astype(np.int32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(features, sp))
    g = tape.gradient(loss, features).numpy()
    assert np.isfinite(g).all() and (g != 0).any()
    clone = MaskedRoIPooling.from_config(layer.get_config())
    assert (clone.pool_size, clone.max_regions, clone.sampling_ratio) == (3, 4, 1)


def test_masked_roi_pooling_of_images_without_regions():
    """Only present regions are pooled: an image with none (all -1), or a batch with none, gives zeros."""
    layer = MaskedRoIPooling(pool_size=2, max_regions=3, sampling_ratio=2)
    features = tf.constant(np.random.default_rng(3).uniform(1, 2, (2, 4, 4, 2)).astype(np.float32))
    sp = np.full((2, 8, 8), -1, np.int32)
    sp[1, :, 4:] = 2
    got = layer(features, tf.constant(sp)).numpy()
    assert got.shape == (2, 3, 2, 2, 2)
    assert (got[0] == 0).all() and (got[1, :2] == 0).all() and (got[1, 2] > 0).any()
    none = layer(features, tf.constant(np.full((2, 8, 8), -1, np.int32))).numpy()
    assert none.shape == (2, 3, 2, 2, 2) and (none == 0).all()


def test_region_labels_majority_vote():
    labels = np.array([[[1, 1, 2, 255], [1, 2, 2, 2], [0, 0, 255, 255], [0, 3, 255, 255]]])
    sp = np.array([[[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]])
    got = region_labels(tf.constant(labels), tf.constant(sp), max_regions=5, num_classes=4).numpy()
    assert got.tolist() == [[1, 2, 0, 255, 255]]  # region 3 has no labelled pixel; region 4 is absent


def test_masked_cross_entropy_by_hand():
    logits = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]], np.float32))
    labels = np.array([[0, 255, 2]])
    loss = losses.MaskedCrossEntropy()(labels, logits).numpy()
    assert abs(loss - (-(np.log(0.7) + np.log(0.4)) / 2)) < 1e-5  # mean over the 2 labelled positions
    assert losses.MaskedCrossEntropy()(np.array([[255, 255, 255]]), logits).numpy() == 0.0


def test_class_balance_weights_by_hand():
    # 6 labelled positions: 4 background, 2 of class 1; one void
    labels = np.array([[0, 0, 0, 0, 1, 1, 0]])
    valid = np.array([[True] * 6 + [False]])
    w = losses.balance_weights(labels, valid, 3, 1.0).numpy()
    # power 1: each present class weighs the same in total (4 * w0 == 2 * w1), average weight 1
    assert np.allclose(w[0, :4], 0.75) and np.allclose(w[0, 4:6], 1.5)
    w_half = losses.balance_weights(labels, valid, 3, 0.5).numpy()
    ratio = w_half[0, 4] / w_half[0, 0]
    assert abs(ratio - np.sqrt(2.0)) < 1e-5 and abs(w_half[0, :6].mean() - 1.0) < 1e-5


def test_class_balanced_cross_entropy_by_hand():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]], np.float32)
    logits = np.log(p)[None]
    labels = np.array([[0, 0, 0, 1]])
    plain = losses.MaskedCrossEntropy()(labels, logits).numpy()
    balanced = losses.MaskedCrossEntropy(class_balance=1.0)(labels, logits).numpy()
    assert abs(plain - (-(3 * np.log(0.9) + np.log(0.6)) / 4)) < 1e-5
    # weights 4/6 (3 background positions) and 2 (one object position): each class half the loss
    assert abs(balanced - (-(3 * (2 / 3) * np.log(0.9) + 2 * np.log(0.6)) / 4)) < 1e-5
    assert losses.MaskedCrossEntropy(class_balance=0.5).get_config()["class_balance"] == 0.5


def test_pixel_loss_and_miou_shrink_labels_to_the_logits():
    labels = np.zeros((1, 16, 16), np.int32)
    labels[:, :, 8:] = 1
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[..., 0, 0] = 5.0
    logits[..., 1, 1] = 5.0
    metric = losses.SegmentationMeanIoU(2)
    metric.update_state(labels, logits)
    assert abs(float(metric.result()) - 1.0) < 1e-6
    assert float(losses.MaskedCrossEntropy()(labels, logits)) < 0.01


@pytest.mark.parametrize("which", ["cam", "regionnet", "pixelnet"])
def test_save_load_round_trip_gives_the_same_outputs(which, tmp_path):
    from mcof_tf.training import load_model, save_model

    rng = np.random.default_rng(3)
    x = rng.normal(0, 40, (2, 32, 40, 3)).astype(np.float32)
    if which == "cam":
        m, inputs = build_cam(5, "vgg16_small", 0.125), x
    elif which == "pixelnet":
        m, inputs = deeplab_largefov(5, "vgg16_small", 0.125), x
    else:
        m = build_regionnet(5, "vgg16_small", 0.125, max_regions=12, fc_units=16)
        inputs = {"image": x, "superpixels": rng.integers(-1, 14, (2, 32, 40)).astype(np.int32)}
    path = str(tmp_path / "m.keras")
    save_model(m, path)
    back = load_model(path)
    np.testing.assert_allclose(m(inputs, training=False), back(inputs, training=False), rtol=1e-5, atol=1e-5)
    assert back.count_params() == m.count_params()


def test_tag_f1_is_zero_for_no_tags_and_one_for_the_right_ones():
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    none = losses.TagF1()
    none.update_state(y, np.full((2, 4), -3.0, np.float32))  # the all-negative classifier
    assert float(none.result()) == 0.0
    right = losses.TagF1()
    right.update_state(y, np.where(y > 0, 3.0, -3.0).astype(np.float32))
    assert abs(float(right.result()) - 1.0) < 1e-6
    half = losses.TagF1()
    half.update_state(y, np.array([[2, -1, -3, -1], [-1, -2, -3, -1]], np.float32))  # tp 1, fn 1
    assert abs(float(half.result()) - 2 / 3) < 1e-6


def test_tag_cross_entropy_plain_and_balanced_by_hand():
    y = np.array([[1, 0, 0, 0]], np.float32)
    logits = np.zeros((1, 4), np.float32)  # p = 0.5 everywhere: every term is log 2
    assert abs(float(losses.TagCrossEntropy()(y, logits)) - np.log(2)) < 1e-6
    assert (
        abs(float(losses.TagCrossEntropy(class_balance=1.0)(y, logits)) - np.log(2)) < 1e-6
    )  # weights average 1
    logits = np.array([[0.0, -2.0, -2.0, -2.0]], np.float32)
    neg, pos = np.log1p(np.exp(-2.0)), np.log(2)
    plain = float(losses.TagCrossEntropy()(y, logits))
    assert abs(plain - (pos + 3 * neg) / 4) < 1e-6
    # power 1: the one positive weighs as much as the three negatives (2 vs 2/3 each)
    assert (
        abs(float(losses.TagCrossEntropy(class_balance=1.0)(y, logits)) - (2 * pos + 3 * (2 / 3) * neg) / 4)
        < 1e-6
    )


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_fused_batch_norm_trains_like_keras_batch_norm(policy):
    from mcof_tf.models.backbones import FusedBatchNorm

    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 6, 5, 3)).astype(np.float32)
    n = 4 * 6 * 5
    ours, keras_bn = (
        FusedBatchNorm(momentum=0.5, dtype=policy),
        keras.layers.BatchNormalization(momentum=0.5, dtype=policy),
    )
    outs, grads = [], []
    for layer in (ours, keras_bn):
        layer.build(x.shape)
        layer.gamma.assign([1.0, 2.0, 0.5])
        layer.beta.assign([0.0, 1.0, -1.0])
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") ** 3)
        outs.append(tf.cast(y, "float32").numpy())
        grads.append([g.numpy() for g in tape.gradient(loss, [xt, layer.gamma, layer.beta])])
    tol = 1e-4 if policy == "float32" else 5e-2
    np.testing.assert_allclose(outs[0], outs[1], atol=tol * 10, rtol=tol)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max(), rtol=tol)
    np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=tol)
    # the unbiased batch variance in the moving average (as Keras 2's fused path)
    var = x.reshape(-1, 3).var(0)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.5 + 0.5 * var * n / (n - 1), rtol=tol)
    np.testing.assert_allclose(keras_bn.moving_variance.numpy(), 0.5 + 0.5 * var, rtol=tol)
    # inference is Keras' own code on the moving statistics
    ours.moving_variance.assign(keras_bn.moving_variance)
    np.testing.assert_allclose(
        tf.cast(ours(x, training=False), "float32").numpy(),
        tf.cast(keras_bn(x, training=False), "float32").numpy(),
        atol=tol,
    )


@pytest.mark.parametrize("dilation", [2, 12])
def test_dilated_conv2d_matches_keras_conv2d(dilation):
    """One Conv2D op with `dilations` (where this TensorFlow differentiates it) computes what Keras'
    space-to-batch rewrite computes: outputs, and the gradients of input, kernel and bias."""
    from mcof_tf.models.backbones import DilatedConv2D, native_dilation

    x = tf.constant(np.random.default_rng(1).normal(size=(2, 14, 11, 3)).astype(np.float32))
    kwargs = dict(filters=4, kernel_size=3, padding="same", dilation_rate=dilation, activation="relu")
    ours, theirs = DilatedConv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    assert native_dilation("float32") == bool(tf.config.list_physical_devices("GPU") or _onednn_on())
    results = []
    for layer in (ours, theirs):
        step = tf.function(lambda t, layer=layer: _value_and_grads(layer, t))
        results.append([v.numpy() for v in step(x)])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    # inference, eager: the same numbers
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-5)


def _onednn_on() -> bool:
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def _value_and_grads(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.range(1.0, 5.0))
    return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]


def test_dilated_conv2d_falls_back_where_gradients_are_not_native(monkeypatch):
    """Where the probe says no (the stock CPU kernels, or a dtype oneDNN lacks here), training takes
    Keras' rewrite (trainable everywhere); inference always takes the one op, which every kernel runs.
    Nothing is probed inside a trace (it would land in the traced graph): there the answer is no."""
    from mcof_tf.models import backbones

    monkeypatch.setattr(backbones, "_NATIVE_DILATION", {"float32": False})
    layer = backbones.DilatedConv2D(2, 3, padding="same", dilation_rate=4)
    x = tf.ones((1, 9, 9, 1))
    layer.build(x.shape)

    def ops_of(training):
        graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    assert "SpaceToBatchND" in ops_of(True)
    assert "SpaceToBatchND" not in ops_of(False) and "Conv2D" in ops_of(False)
    monkeypatch.setattr(backbones, "_NATIVE_DILATION", {})
    answers = []
    tf.function(lambda: answers.append(backbones.native_dilation("float32"))).get_concrete_function()
    assert answers == [False] and "float32" not in backbones._NATIVE_DILATION
