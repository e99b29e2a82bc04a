"""The Beam jobs' composite transforms under TestPipeline, checked with assert_that."""

import json

import apache_beam as beam
import numpy as np
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
