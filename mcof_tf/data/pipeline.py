"""tf.data input pipelines over the project's TFRecords, with joint augmentation.

Every map that is aligned with the image (labels, ground truth, saliency, superpixels) goes through
exactly the same random scale, crop and flip as the image, so labels never drift off their pixels.
Randomness is stateless: shuffles are seeded per epoch and augmentation per example position, so a
seed fixes data order and augmentation, whatever iterators are made or resumed.

Padding values: image 0 (after mean subtraction, i.e. the mean colour), labels and ground truth 255
(ignored by the losses), saliency 0, superpixels -1 (no superpixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import tensorflow as tf

from mcof_tf.data import records
from mcof_tf import fileio

IGNORE_LABEL = records.IGNORE_LABEL
# (key, padding value, resize method) of every image-aligned map
_ALIGNED = (
    ("labels", IGNORE_LABEL, "nearest"),
    ("groundtruth", IGNORE_LABEL, "nearest"),
    ("superpixels", -1, "nearest"),
    ("saliency", 0, "bilinear"),
)


def plain(fn):
    """`fn` for tf.data's map/flat_map without AutoGraph's source conversion: the input functions here
    are TF ops with no Python control flow on tensors, and converting them cost about 2 s of every
    training stage's start-up (two pipelines per stage)."""
    return tf.autograph.experimental.do_not_convert(fn)


def list_files(pattern: str) -> list[str]:
    files = sorted(fileio.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")
    return files


def _to_float_maps(ex: dict, mean_rgb: Sequence[float]) -> dict:
    out = dict(ex)
    if "image" in ex:
        out["image"] = tf.cast(ex["image"], tf.float32) - tf.constant(mean_rgb, tf.float32)
    for key in ("labels", "groundtruth"):
        if key in ex:
            out[key] = tf.cast(ex[key], tf.int32)
    if "saliency" in ex:
        out["saliency"] = tf.cast(ex["saliency"], tf.float32) / 255.0
    return out


def augment(ex: dict, seed, crop_size: int, min_scale: float, max_scale: float, flip: bool) -> dict:
    """Random scale → pad to the crop → random crop → random horizontal flip, jointly on all maps.

    `ex` holds float `image` (H×W×3) and int/float H×W maps; `seed` is a shape-[2] int tensor.
    Returns maps of size crop_size × crop_size.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    h = tf.shape(ex["image"])[0]
    w = tf.shape(ex["image"])[1]
    scale = tf.random.stateless_uniform([], seeds[0], min_scale, max_scale)
    nh = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32), 1)
    nw = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32), 1)
    ph, pw = tf.maximum(nh, crop_size), tf.maximum(nw, crop_size)
    oy = tf.random.stateless_uniform([], seeds[1], 0, ph - crop_size + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], seeds[2], 0, pw - crop_size + 1, dtype=tf.int32)
    do_flip = flip & (tf.random.stateless_uniform([], seeds[3]) < 0.5)

    def transform(x, pad_value, method):
        squeeze = x.shape.rank == 2
        x3 = x[..., None] if squeeze else x
        dtype = x3.dtype  # nearest keeps integer maps exact; bilinear is only used on float maps
        x3 = tf.cast(tf.image.resize(x3, [nh, nw], method=method), dtype)
        # pad bottom/right up to the crop size with the map's "nothing here" value
        x3 = tf.pad(x3 - tf.cast(pad_value, dtype), [[0, ph - nh], [0, pw - nw], [0, 0]]) + tf.cast(
            pad_value, dtype
        )
        x3 = x3[oy : oy + crop_size, ox : ox + crop_size]
        x3 = tf.cond(do_flip, lambda: tf.reverse(x3, [1]), lambda: x3)
        x3 = tf.ensure_shape(x3, [crop_size, crop_size, x3.shape[-1]])
        return x3[..., 0] if squeeze else x3

    out = dict(ex)
    out["image"] = transform(ex["image"], 0.0, "bilinear")
    for key, pad, method in _ALIGNED:
        if key in ex:
            out[key] = transform(ex[key], pad, method)
    return out


def _no_autotune_model() -> tf.data.Options:
    """tf.data options without the autotuning model, inherited by every dataset built on these.

    Its optimisation thread (`Model::OptimizeLoop`) sometimes misses the iterator's cancellation, and
    deleting the iterator then waits out the thread's current optimisation period (it doubles up to
    60 s): in the loop, 3 of 9 training stages sat idle for 28-38 s at the end of Keras `fit` (gdb: the
    main thread in `~RootDataset::Iterator` waiting for that thread in a timed CondVar wait). Without
    the model, AUTOTUNE parallelism is fixed at the thread pool's size (one call per core here): the
    training stages ran as fast (PixelNet 10 epochs 19.0 / 18.9 s against 19.2 / 19.1 s with it)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


NO_AUTOTUNE_MODEL = _no_autotune_model()


def make_dataset(
    pattern: str,
    num_classes: int,
    *,
    batch_size: int,
    training: bool,
    crop_size: int = 321,
    min_scale: float = 0.7,
    max_scale: float = 1.3,
    flip: bool = True,
    mean_rgb: Sequence[float] = (123.68, 116.779, 103.939),
    shuffle_buffer: int = 512,
    seed: int = 0,
    repeat: Optional[bool] = None,
    shard: tuple[int, int] = (1, 0),
    maps: Optional[Sequence[str]] = None,
) -> tf.data.Dataset:
    """Batches of dicts (image, tags, labels, groundtruth, saliency, superpixels, id, ...).

    training=True: shuffled (files and examples), augmented to crop_size², repeated, fixed-size batches.
    training=False: file order, full-size images, padded batches (image 0, labels 255, superpixels -1).
    shard: (count, index): this reader takes every count-th example from index (multi-worker input).
    maps: the per-pixel maps to decode (records.MAPS, "image" always among them; default all).
    """
    maps = records.MAPS if maps is None else tuple(dict.fromkeys(("image", *maps)))
    files = list_files(pattern)

    def examples(epoch):
        """One pass over the records; in training, files and blocks of `shuffle_buffer` examples are
        shuffled with seeds derived from (seed, epoch, block)."""
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
        names = tf.constant(files)
        if training:
            names = tf.random.experimental.stateless_shuffle(names, seed=epoch_seed)
        ds = tf.data.Dataset.from_tensor_slices(names).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if shard[0] > 1:
            ds = ds.shard(*shard)
        if training:
            ds = tf.data.Dataset.zip((ds.batch(shuffle_buffer), tf.data.Dataset.counter())).flat_map(
                plain(
                    lambda block, i: tf.data.Dataset.from_tensor_slices(
                        tf.random.experimental.stateless_shuffle(
                            block, seed=tf.random.experimental.stateless_fold_in(epoch_seed, i)
                        )
                    )
                )
            )
        return ds

    # Every random choice is a function of (seed, epoch, position), never of iterator state: a new
    # iterator (Keras makes them as it sees fit) or a resumed run reproduces the same stream. Seeded
    # shuffles with reshuffle_each_iteration gave different orders between runs under Keras fit (and a
    # shuffle buffer cannot take a per-epoch seed tensor): blocks are shuffled statelessly instead.
    repeated = repeat if repeat is not None else training
    epochs = tf.data.Dataset.counter() if repeated else tf.data.Dataset.range(1)
    ds = epochs.flat_map(plain(examples))
    ds = ds.map(
        plain(lambda s: _to_float_maps(records.decode_example(s, num_classes, maps), mean_rgb)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if training:
        position = tf.data.Dataset.counter().map(plain(lambda i: tf.stack([tf.cast(seed, tf.int64), i])))
        ds = tf.data.Dataset.zip((ds, position)).map(
            plain(lambda ex, s: augment(ex, s, crop_size, min_scale, max_scale, flip)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        padding = {
            "id": "",
            "image": 0.0,
            "tags": 0.0,
            "superpixels": -1,
            "saliency": 0.0,
            "groundtruth": IGNORE_LABEL,
            "has_groundtruth": False,
            "labels": IGNORE_LABEL,
            "has_labels": False,
        }
        ds = ds.padded_batch(
            batch_size, padding_values={k: v for k, v in padding.items() if k in ds.element_spec}
        )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(NO_AUTOTUNE_MODEL)


def dataset_from_config(
    pattern: str,
    num_classes: int,
    input_cfg,
    *,
    training: bool,
    batch_size: int,
    seed: int = 0,
    repeat: Optional[bool] = None,
    shard: tuple[int, int] = (1, 0),
    maps: Optional[Sequence[str]] = None,
) -> tf.data.Dataset:
    """`make_dataset` with the settings of a config's `input:` section."""
    return make_dataset(
        pattern,
        num_classes,
        batch_size=batch_size,
        training=training,
        crop_size=input_cfg.crop_size,
        min_scale=input_cfg.min_scale,
        max_scale=input_cfg.max_scale,
        flip=input_cfg.flip,
        mean_rgb=input_cfg.mean_rgb,
        shuffle_buffer=input_cfg.shuffle_buffer,
        seed=seed,
        repeat=repeat,
        shard=shard,
        maps=maps,
    )
