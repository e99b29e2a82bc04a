"""Export a trained PixelNet as a SavedModel for TF Serving.

    python -m mcof_tf.export --checkpoint DIR|FILE.keras --out saved_models/<name> [--classes classes.txt]

writes `saved_models/<name>/<version>/` (the next integer version; TF Serving's layout) with:
  serving_default(images: string[B])       encoded JPEG/PNG images of any size →
      label_png_bytes: string[B]   class map of each image at its own resolution, as a PNG
      class_scores:    float[B, C] mean softmax probability of each class over the image
      class_names:     string[C]   the class names (the export carries them)
  predict_logits(images: float32[B, H, W, 3])  RGB 0..255 → logits float[B, H/8, W/8, C],
      probabilities at input resolution float[B, H, W, C]
Preprocessing (decode, RGB, mean subtraction) is inside the graph.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import tensorflow as tf


def next_version_dir(base: str) -> str:
    os.makedirs(base, exist_ok=True)
    versions = [int(d) for d in os.listdir(base) if d.isdigit()]
    return os.path.join(base, str(max(versions, default=0) + 1))


def export_saved_model(model_file: str, base_dir: str, classes: Sequence[str], mean_rgb: Sequence[float]) -> str:
    """Write the next version under `base_dir`; returns its path."""
    import keras

    from mcof_tf import training

    model = training.load_model(model_file)
    mean = tf.constant(list(mean_rgb), tf.float32)
    names = tf.constant(list(classes))
    num_classes = len(classes)

    def logits_of(images):
        return tf.cast(model(images - mean, training=False), tf.float32)

    def one_image(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32)
        size = tf.shape(image)[:2]
        logits = logits_of(image[None])
        probs = tf.nn.softmax(tf.image.resize(logits, size, method="bilinear")[0], axis=-1)
        labels = tf.cast(tf.argmax(probs, axis=-1), tf.uint8)
        return tf.io.encode_png(labels[..., None]), tf.reduce_mean(probs, axis=[0, 1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(images):
        png, scores = tf.map_fn(one_image, images, fn_output_signature=(
            tf.TensorSpec([], tf.string), tf.TensorSpec([num_classes], tf.float32)))
        return {"label_png_bytes": png, "class_scores": scores,
                "class_names": tf.broadcast_to(names, [tf.shape(images)[0], num_classes])}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def serve_float(images):
        logits = logits_of(images)
        probs = tf.nn.softmax(tf.image.resize(logits, tf.shape(images)[1:3], method="bilinear"), axis=-1)
        return {"logits": logits, "probabilities": probs}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_encoded)
    archive.add_endpoint("predict_logits", serve_float)
    out = next_version_dir(base_dir)
    tmp = out + ".tmp"
    archive.write_out(tmp, verbose=False)
    os.replace(tmp, out)  # TF Serving polls the folder: it must never see a half-written version
    print(f"exported {model_file} → {out}", flush=True)
    return out


def main(argv=None) -> int:
    from mcof_tf.data.voc import VOC_CLASSES, read_classes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a training folder holding model.keras, or a .keras file")
    p.add_argument("--out", required=True, help="saved_models/<name>: versions are numbered inside it")
    p.add_argument("--classes", default=None, help="classes.txt (default: the 21 VOC classes)")
    p.add_argument("--mean-rgb", default="123.68,116.779,103.939")
    a = p.parse_args(argv)
    from mcof_tf.training import MODEL_FILE

    path = a.checkpoint if a.checkpoint.endswith(".keras") else os.path.join(a.checkpoint, MODEL_FILE)
    if not os.path.exists(path):
        print(f"error: no trained model at {path}", file=sys.stderr)
        return 2
    classes = read_classes(a.classes) if a.classes else list(VOC_CLASSES)
    export_saved_model(path, a.out, classes, [float(x) for x in a.mean_rgb.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
