"""Shared fixtures: tiny VOC-layout datasets made on the spot (no network, images ≤ 64 px)."""

import os
import shutil

import pytest

# Under pytest-xdist (pyproject's addopts run 2 workers) each worker, and the jobs it starts, gets its
# share of the cores: TensorFlow's default of one thread per core in every process oversubscribes them.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _share = max((os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]), 1)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(_share))

# The kernels the project's commands run (mcof_tf.usage.use_onednn), so that the suite tests them
from mcof_tf import usage  # noqa: E402

usage.use_onednn()

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so that MirroredStrategy runs with 2 replicas here (before TF initialises).
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from mcof_tf.config import load_config  # noqa: E402
from mcof_tf.data import synthetic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
TINY = synthetic.SyntheticSpec(seed=7, num_train=8, num_val=2, min_side=40, max_side=64)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A read-only-by-convention tiny benchmark; copy it before changing anything."""
    root = str(tmp_path_factory.mktemp("data") / "tiny")
    synthetic.write_dataset(root, TINY, progress=False)
    return root


@pytest.fixture(scope="session")
def reference_run(tiny_root, tmp_path_factory):
    """The tiny loop of test_resume (1 iteration, PixelNet 4 epochs) run once, uninterrupted, on local
    disk: (workdir, seconds). The kill-and-resume tests, on local disk and on gs://, must reproduce it."""
    from test_resume import _run

    work = tmp_path_factory.mktemp("ref") / "work"
    _, seconds = _run(tiny_root, work)
    return work, seconds


@pytest.fixture
def tiny_copy(tiny_root, tmp_path):
    dst = str(tmp_path / "tiny")
    shutil.copytree(tiny_root, dst)
    return dst


def tiny_config():
    """The embedded default config, resized for tests."""
    return load_config(
        "synthetic",
        [
            "superpixels.scale=300",
            "superpixels.min_size=50",
            "records.num_shards=2",
            "input.crop_size=48",
            "input.batch_size=2",
        ],
    )


@pytest.fixture
def tiny_cfg():
    """The embedded default config, resized for tests (a fresh one per test: tests change it)."""
    return tiny_config()


@pytest.fixture(scope="session")
def labelled_records(tiny_root, tmp_path_factory):
    """The tiny benchmark's train split as records whose current labels are the ground truth."""
    path = tmp_path_factory.mktemp("rec") / "train-00000-of-00001.tfrecord"
    write_groundtruth_records(tiny_root, path, limit=4)
    return str(path)


def write_groundtruth_records(root, path, limit=None):
    """The train split of a VOC-layout root as one TFRecord file whose current labels are the ground
    truth (what a fully supervised PixelNet trains on); returns the records."""
    import numpy as np

    from mcof_tf.data import records
    from mcof_tf.data.voc import VocDataset
    from mcof_tf.vision.superpixels import superpixels

    ds = VocDataset(root)
    recs = []
    for i in ds.split_ids("train")[:limit]:
        s = ds.load(i)
        recs.append(
            records.Record(
                id=i,
                image_encoded=s.encoded,
                image_format=s.format,
                height=s.image.shape[0],
                width=s.image.shape[1],
                tags=records.tags_multi_hot(s.tags, ds.num_classes),
                superpixels=superpixels(s.image, 300, 0.8, 50),
                saliency=np.zeros(s.image.shape[:2], np.uint8),
                groundtruth=s.groundtruth,
                labels=s.groundtruth,
                label_stage="groundtruth",
            )
        )
    records.write_records(str(path), recs)
    return recs


def list_ids(root, split="train"):
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")) as f:
        return f.read().split()


def run_job_with_two_workers(module: str, args: list, timeout: int = 300):
    """`python -m <module> <args>` on DirectRunner's two worker processes, from the repository root,
    output captured: how the multi-process tests of the Beam jobs run them."""
    import subprocess
    import sys

    two = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    return subprocess.run(
        [sys.executable, "-m", module, *args, *two], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# Modules whose tests share a fixture run in one xdist worker (else each worker would build it): every
# module is a group, and the two that replay conftest.reference_run are one.
_SHARED_GROUPS = {"test_resume": "reference_run", "test_gcs": "reference_run"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into scheduling groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(module, module)))
