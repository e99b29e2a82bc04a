"""The Beam jobs' composite transforms under TestPipeline, checked with assert_that."""

import json
import os
import re

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import common
from beam_jobs.relabel import SumPerName
from mcof_tf.data import records


def _example(i: int) -> bytes:
    return records.encode(
        records.Record(
            id=f"im{i}",
            image_encoded=records.png_bytes(np.full((4, 5, 3), i, np.uint8)),
            image_format="png",
            height=4,
            width=5,
            tags=records.tags_multi_hot([1], 3),
            superpixels=np.zeros((4, 5), np.int32),
            saliency=np.zeros((4, 5), np.uint8),
        )
    )


def test_write_shards_outputs_one_path_per_shard_and_keeps_every_example(tmp_path):
    out = str(tmp_path)
    with test_pipeline.TestPipeline() as p:
        paths = p | beam.Create([_example(i) for i in range(7)]) | common.WriteShards(out, "part", 2)
        assert_that(paths, equal_to([common.shard_name(out, "part", s, 2) for s in range(2)]))
    ids = [records.record_ids(common.shard_name(out, "part", s, 2)) for s in range(2)]
    assert sorted(sum(ids, [])) == [f"im{i}" for i in range(7)] and all(i == sorted(i) for i in ids)


def test_write_lines_makes_one_file(tmp_path):
    with test_pipeline.TestPipeline() as p:
        p | beam.Create(['{"id": "a"}', '{"id": "b"}']) | common.WriteLines(str(tmp_path), "rejected")
    assert sorted((tmp_path / "rejected.jsonl").read_text().splitlines()) == ['{"id": "a"}', '{"id": "b"}']


def test_sum_per_name_adds_arrays_of_the_same_name():
    pairs = [
        ("seeds", np.array([[1, 0], [0, 2]])),
        ("seeds", np.array([[0, 1], [3, 0]])),
        ("other", np.ones((1,))),
    ]
    with test_pipeline.TestPipeline() as p:
        lines = p | beam.Create(pairs) | SumPerName("confusion")
        assert_that(
            lines | beam.Map(json.loads),
            equal_to(
                [{"name": "seeds", "confusion": [[1, 1], [3, 2]]}, {"name": "other", "confusion": [1.0]}]
            ),
        )


def test_preprocess_fn_makes_records_and_rejects_bad_ids_on_its_side_output(tiny_root, tiny_cfg):
    from dataclasses import asdict

    from beam_jobs.preprocess import PreprocessFn
    from mcof_tf.data.voc import VocDataset

    ds = VocDataset(tiny_root)
    good = ds.split_ids("train")[:2]
    fn = PreprocessFn(
        ds.root,
        ds.classes,
        tiny_cfg.data.mask_dirs,
        asdict(tiny_cfg.superpixels),
        "auto",
        tiny_cfg.data.max_side,
    )
    with test_pipeline.TestPipeline() as p:
        out = (
            p
            | beam.Create(good + ["../outside", "missing"])
            | beam.ParDo(fn).with_outputs(common.REJECTED, main="records")
        )
        parsed = out.records | beam.Map(records.parse_example)
        assert_that(parsed | "Ids" >> beam.Map(lambda r: r.id), equal_to(good), label="records")
        # every record has its image's superpixels and tags (the image's own objects)
        assert_that(
            parsed | beam.Map(lambda r: (r.superpixels.shape == (r.height, r.width), int(r.tags.sum()) >= 1)),
            equal_to([(True, True)] * 2),
            label="contents",
        )
        assert_that(
            out[common.REJECTED] | beam.Map(lambda line: json.loads(line)["id"]),
            equal_to(["../outside", "missing"]),
            label="rejected",
        )


def test_relabel_cam_stage_seeds_every_record_within_its_tags(labelled_records, tmp_path):
    """RunInference(NetworkHandler) + LabelRules with a (random) CAM: each record gets seeds of its
    image's size holding only its tags, background or unlabelled; seeds are scored against the ground
    truth on the confusion output; an unreadable element is a rejection, not a lost image."""
    from apache_beam.ml.inference.base import RunInference

    from beam_jobs.relabel import CONFUSION, STATS, LabelRules, NetworkHandler, labels_of
    from mcof_tf import training
    from mcof_tf.models.cam import build_cam

    model_path = str(tmp_path / "cam.keras")
    training.save_model(build_cam(7, "vgg16_small", 0.125, batch_norm=True), model_path)
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(labelled_records)]
    seeds = {"fg_threshold": 0.3, "peak_min": 0.2, "bg_threshold": 0.1, "scales": [1.0], "flip": False}
    handler = NetworkHandler(model_path, "cam", 7, [0.0, 0.0, 0.0], 192, seeds)
    rules = LabelRules("cam", 7, seeds, 0, False, True)

    def within_tags(r):
        allowed = {0, 255} | {int(t) for t in r.tag_indices}
        labels = labels_of(r)  # seeds are kept per superpixel: painted to pixels here
        return labels.shape == (r.height, r.width) and set(np.unique(labels).tolist()) <= allowed

    with test_pipeline.TestPipeline() as p:
        out = (
            p
            | beam.Create(serialized + [b"not a record"])
            | RunInference(handler)
            | beam.ParDo(rules).with_outputs(common.REJECTED, CONFUSION, STATS, main="records")
        )
        checked = out.records | beam.Map(records.parse_example) | beam.Map(within_tags)
        assert_that(checked, equal_to([True] * len(serialized)), label="labels")
        totals = out[CONFUSION] | beam.Map(lambda kv: (kv[0], int(kv[1].sum()) > 0))
        assert_that(totals, equal_to([("seeds", True)] * len(serialized)), label="confusion")
        assert_that(
            out[STATS] | beam.Map(lambda kv: kv[0]), equal_to(["seeds"] * len(serialized)), label="stats"
        )
        assert_that(
            out[common.REJECTED] | beam.Map(lambda line: json.loads(line)["id"]), equal_to(["?"]), label="bad"
        )


def test_progress_lines_have_rate_and_eta_and_expected_counts_follow_the_runner():
    from apache_beam.options.pipeline_options import PipelineOptions

    progress = common.Progress("relabel cam", expected=4, every=3600)
    progress.start()
    assert [progress.tick() for _ in range(3)] == [None, None, None]  # quiet between intervals
    last = progress.tick()  # the worker's last expected element is always reported
    assert re.fullmatch(r"relabel cam: worker \d+: 4/4 images, [\d.]+ images/s, ETA 0 s", last)
    free = common.Progress("preprocess", every=0)
    free.start()
    assert re.fullmatch(r"preprocess: worker \d+: 1 images, [\d.]+ images/s", free.tick())
    two = PipelineOptions(["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])
    assert common.expected_per_worker(two, 5) == 3
    one = PipelineOptions(["--direct_num_workers", "1"])  # Beam's default, named: kept
    assert common.expected_per_worker(one, 5) == 5
    assert one.get_all_options()["direct_running_mode"] == "in_memory"
    # left to the project: the in-process runner on two threads (one where the machine has one core)
    default = common.local_options(PipelineOptions([])).get_all_options()
    assert default["runner"] == "FnApiRunner" and default["direct_running_mode"] == "multi_threading"
    threads = min(common.LOCAL_THREADS, os.cpu_count())
    assert default["direct_num_workers"] == threads
    assert common.expected_per_worker(None, 5) == -(-5 // threads)
    assert common.expected_per_worker(PipelineOptions(["--runner", "DataflowRunner"]), 5) is None
