"""The default recipe learns small objects: on a tiny variant of the small-objects preset, a fully
supervised PixelNet trained with configs/synthetic_small_objects.yaml's recipe predicts every class
somewhere (plain cross-entropy stayed at "all background" on that preset, README "Training recipe")."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_groundtruth_records

from mcof_tf import training
from mcof_tf.config import load_config
from mcof_tf.data import synthetic

pytestmark = pytest.mark.slow  # end-to-end runs: pytest -m "not slow" skips them

EPOCHS = 60  # x 4 steps of 2 crops: the recipe's schedule shrunk to what 16 tiny images need
SMALL = synthetic.SyntheticSpec(
    seed=5,
    num_train=16,
    num_val=0,
    min_side=64,
    max_side=72,
    num_classes=4,
    object_scale=[0.15, 0.22],
    backgrounds="grey",
    distractors=0.5,
)


def test_fully_supervised_pixelnet_predicts_every_class_of_small_objects(tmp_path):
    root = synthetic.write_dataset(str(tmp_path / "small"), SMALL, progress=False)
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    recs = write_groundtruth_records(root, path)
    present = set(np.unique(np.concatenate([r.groundtruth.ravel() for r in recs]))) - {255}
    shares = np.bincount(np.concatenate([r.groundtruth[r.groundtruth != 255] for r in recs]), minlength=5)
    assert present == {0, 1, 2, 3, 4} and shares[1:].max() / shares.sum() < 0.05  # small objects

    cfg = load_config("synthetic_small_objects", ["input.crop_size=64", "train.devices=['/cpu:0']"])
    model = training.train(
        "pixelnet", path, str(tmp_path / "pixelnet"), cfg, 5, epochs=EPOCHS, steps_per_epoch=4, verbose=0
    )
    predicted = set()
    for r in recs:
        x = r.image.astype(np.float32) - np.array(cfg.input.mean_rgb, np.float32)
        logits = tf.image.resize(model(x[None], training=False), r.image.shape[:2])
        predicted |= set(np.unique(np.argmax(logits[0], -1)).tolist())
    assert predicted == {0, 1, 2, 3, 4}, predicted
