"""Export a trained PixelNet as a SavedModel for TF Serving.

    python -m mcof_tf.export --checkpoint DIR|FILE.keras --out saved_models/<name> [--classes classes.txt]
                             [--max-side 1024] [--max-pixels 16777216]

writes `saved_models/<name>/<version>/` (the next integer version; TF Serving's layout) with:
  serving_default(images: string[B])       encoded JPEG/PNG/GIF/BMP images of any size →
      label_png_bytes: string[B]   class map of each image at its own resolution, as a PNG (the name
                                   ends in _bytes so TF Serving's REST API base64-encodes it)
      class_scores:    float[B, C] mean softmax probability of each class over the image
      class_names:     string[B, C] the class names (the export carries them; also classes.txt)
  predict_logits(images: float32[B, H, W, 3])  RGB 0..255 → logits float[B, H/8, W/8, C],
      probabilities at input resolution float[B, H, W, C]
Both endpoints' logits carry the export's prior correction (--prior-correction; the loop exports with
labels.prediction_correction): constant per-class offsets, recorded in logit_offsets.json.
Preprocessing (decode, grayscale/RGBA → RGB, resize, mean subtraction) is inside the graph; the
SavedModel needs TensorFlow only (no mcof_tf, no Keras code) to load and run.

Size bound: an encoded image whose declared size (JPEG/PNG header, read before decoding) or decoded
size exceeds `max_pixels` fails its request with InvalidArgument; the network sees the image scaled
so that its longer side is at most `max_side` and the label map is resized back to the input's size.
Bytes that are not an image fail the request with InvalidArgument ("Unknown image file format").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from mcof_tf import fileio
from mcof_tf import log as log_setup
from mcof_tf.data.voc import MAX_PIXELS  # larger images are refused
from mcof_tf.fileio import folder_lock, write_json_atomic

log = logging.getLogger(__name__)

MAX_SIDE = 1024  # the network's input is scaled down to this longer side
CLASSES_FILE = "classes.txt"  # the class names, one per line, next to saved_model.pb
# what the graph adds to the logits (the prior correction), for the record
OFFSETS_FILE = "logit_offsets.json"


def next_version_dir(base: str) -> str:
    fileio.makedirs(base)
    versions = [int(d) for d in fileio.listdir(base) if d.isdigit()]
    return os.path.join(base, str(max(versions, default=0) + 1))


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """[height, width] from a JPEG or PNG header without decoding the pixels; [0, 0] for other
    formats (checked after decoding). Guards against decompression bombs."""

    def png():
        b = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
        be32 = lambda v: ((v[0] * 256 + v[1]) * 256 + v[2]) * 256 + v[3]  # noqa: E731 (IHDR is big-endian)
        return tf.stack([be32(b[4:8]), be32(b[0:4])])

    is_png = tf.logical_and(
        tf.strings.length(data) >= 24, tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    )
    return tf.case(
        [
            (tf.io.is_jpeg(data), lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
            (is_png, png),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )


def _check_pixels(size, max_pixels: int, what: str):
    return tf.debugging.assert_less_equal(
        tf.reduce_prod(tf.cast(size, tf.int64)),
        tf.constant(max_pixels, tf.int64),
        message=f"image too large ({what}): the export accepts at most {max_pixels} pixels (height x width)",
    )


def export_saved_model(
    model_file: str,
    base_dir: str,
    classes: Sequence[str],
    mean_rgb: Sequence[float],
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    logit_offsets: Optional[Sequence[float]] = None,
) -> str:
    """Write the next version under `base_dir`; returns its path. `logit_offsets` (one per class) are
    added to the network's logits inside the graph: a prior correction (`training.recorded_prior_offsets`)
    that every endpoint's decisions then carry."""
    import keras

    from mcof_tf import training

    model = training.load_model(model_file)
    if model.output_shape[-1] != len(classes):
        raise ValueError(
            f"{model_file} predicts {model.output_shape[-1]} classes but {len(classes)} class names "
            "were given (pass the dataset's --classes)"
        )
    mean = tf.constant(list(mean_rgb), tf.float32)
    names = tf.constant(list(classes))
    num_classes = len(classes)
    if logit_offsets is not None and len(logit_offsets) != num_classes:
        raise ValueError(f"{len(logit_offsets)} logit offsets for {num_classes} classes")
    offsets = tf.constant(np.zeros(num_classes) if logit_offsets is None else logit_offsets, tf.float32)

    def logits_of(images):
        return tf.cast(model(images - mean, training=False), tf.float32) + offsets

    def one_image(data):
        with tf.control_dependencies([_check_pixels(declared_size(data), max_pixels, "header")]):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        size = tf.shape(image)[:2]
        with tf.control_dependencies([_check_pixels(size, max_pixels, "decoded")]):
            image = tf.cast(image, tf.float32)
        scale = tf.minimum(1.0, max_side / tf.cast(tf.reduce_max(size), tf.float32))
        small = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
        image = tf.cond(scale < 1.0, lambda: tf.image.resize(image, small, antialias=True), lambda: image)
        logits = logits_of(image[None])
        probs = tf.nn.softmax(tf.image.resize(logits, size, method="bilinear")[0], axis=-1)
        labels = tf.cast(tf.argmax(probs, axis=-1), tf.uint8)
        return tf.io.encode_png(labels[..., None]), tf.reduce_mean(probs, axis=[0, 1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(images):
        png, scores = tf.map_fn(
            one_image,
            images,
            fn_output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([num_classes], tf.float32)),
        )
        return {
            "label_png_bytes": png,
            "class_scores": scores,
            "class_names": tf.broadcast_to(names, [tf.shape(images)[0], num_classes]),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve_float(images):
        logits = logits_of(images)
        probs = tf.nn.softmax(tf.image.resize(logits, tf.shape(images)[1:3], method="bilinear"), axis=-1)
        return {"logits": logits, "probabilities": probs}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_encoded)
    archive.add_endpoint("predict_logits", serve_float)
    with folder_lock(base_dir):  # two exports at once would take the same version number
        out = next_version_dir(base_dir)
        tmp = out + ".tmp"
        archive.write_out(tmp, verbose=False)
        # for mcof_tf.predict; TF Serving ignores it
        fileio.write_text_atomic(os.path.join(tmp, CLASSES_FILE), "".join(f"{c}\n" for c in classes))
        write_json_atomic(os.path.join(tmp, OFFSETS_FILE), [float(o) for o in offsets.numpy()])
        # TF Serving polls the folder: it must never see a half-written version
        fileio.move_folder(tmp, out, last="saved_model.pb")
    log.info(f"exported {model_file} → {out}")
    return out


def main(argv=None) -> int:
    from mcof_tf.config import InputConfig
    from mcof_tf.data.voc import VOC_CLASSES, DatasetError, read_classes
    from mcof_tf.fileio import writable_dir
    from mcof_tf.training import model_file, recorded_prior_offsets

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="a training folder holding model.keras, or a .keras file"
    )
    p.add_argument("--out", required=True, help="saved_models/<name>: versions are numbered inside it")
    p.add_argument("--classes", default=None, help="classes.txt (default: the 21 VOC classes)")
    p.add_argument("--mean-rgb", default=",".join(str(v) for v in InputConfig().mean_rgb))
    p.add_argument("--max-side", type=int, default=MAX_SIDE)
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    p.add_argument(
        "--prior-correction",
        type=float,
        default=0.0,
        metavar="STRENGTH",
        help="undo this share (0..1) of the class-balanced loss's lean, from the train.json beside the "
        "checkpoint (the loop exports with labels.prediction_correction, 0.5); default 0: raw logits",
    )
    log_setup.add_verbose_flag(p)
    a = p.parse_args(argv)
    log_setup.setup(a.verbose)
    try:
        path = model_file(a.checkpoint)
        classes = read_classes(a.classes) if a.classes else list(VOC_CLASSES)
        mean = [float(x) for x in a.mean_rgb.split(",")]
        if len(mean) != 3:
            raise ValueError("--mean-rgb needs three values")
        offsets = recorded_prior_offsets(path, a.prior_correction) if a.prior_correction else None
        writable_dir(a.out)
        export_saved_model(path, a.out, classes, mean, a.max_side, a.max_pixels, offsets)
    except (DatasetError, ValueError, OSError) as e:  # FileNotFoundError: no model; ValueError: class count
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
