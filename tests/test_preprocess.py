"""The Beam preprocessing job on tiny data, including every kind of bad input the issue lists."""

import json
import logging
import os

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import list_ids, run_job_with_two_workers
from PIL import Image

from beam_jobs import preprocess
from mcof_tf.data import records

XML = "<annotation>%s</annotation>"
OBJ = "<object><name>%s</name></object>"


def _add_bad_inputs(root):
    """Add one entry per bad-input case to the train list; returns {id: expected outcome}."""
    j = lambda *p: os.path.join(root, *p)  # noqa: E731
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    good_xml = XML % (OBJ % "beetle")

    def xml(i, text=good_xml):
        with open(j("Annotations", f"{i}.xml"), "w") as f:
            f.write(text)

    Image.fromarray(rgb).save(j("JPEGImages", "trunc.jpg"))
    data = open(j("JPEGImages", "trunc.jpg"), "rb").read()
    open(j("JPEGImages", "trunc.jpg"), "wb").write(data[: len(data) // 2])
    xml("trunc")
    open(j("JPEGImages", "text.jpg"), "w").write("not an image at all\n")
    xml("text")
    Image.fromarray(rgb).convert("L").save(j("JPEGImages", "gray.jpg"))
    xml("gray")
    Image.fromarray(np.dstack([rgb, np.full((40, 52), 128, np.uint8)])).save(j("JPEGImages", "rgba.png"))
    xml("rgba")
    Image.fromarray(rgb).convert("CMYK").save(j("JPEGImages", "cmyk.jpg"))
    xml("cmyk")
    Image.fromarray(rgb).save(j("JPEGImages", "badmask.jpg"))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(j("SegmentationClass", "badmask.png"))
    xml("badmask")
    Image.fromarray(rgb).save(j("JPEGImages", "zebra.jpg"))
    xml("zebra", XML % (OBJ % "zebra"))
    Image.fromarray(rgb).save(j("JPEGImages", "notags.jpg"))
    xml("notags", XML % "")
    # external saliency for one good image
    first = list_ids(root)[0]
    h, w = np.asarray(Image.open(j("JPEGImages", f"{first}.jpg"))).shape[:2]
    os.makedirs(j("Saliency"))
    Image.fromarray(np.full((h, w), 77, np.uint8)).save(j("Saliency", f"{first}.png"))
    bad = {
        "trunc": "cannot be decoded",
        "text": "cannot be decoded",
        "badmask": "10x10 but the image is 52x40",
        "zebra": "'zebra'",
        "notags": "no tags",
        "ghost": "does not exist",
        "../x": "invalid id",
        "a/b": "invalid id",
    }
    with open(j("ImageSets", "Segmentation", "train.txt"), "a") as f:
        f.write("\n".join(["", "gray", "rgba", "cmyk", *bad, ""]) + "\n")
    return bad, first


def test_job_writes_records_and_accounts_for_every_bad_input(tiny_copy, tiny_cfg, tmp_path):
    good = list_ids(tiny_copy)
    bad, salient_id = _add_bad_inputs(tiny_copy)
    out = str(tmp_path / "out")
    m = preprocess.run(tiny_copy, "train", out, tiny_cfg, PipelineOptions([]))

    assert m["read"] == len(good) + 3 + len(bad)
    assert m["written"] == len(good) + 3  # grayscale, RGBA and CMYK are converted, not rejected
    assert m["read"] == m["written"] + len(m["rejected"])
    reasons = {r["id"]: r["reason"] for r in m["rejected"]}
    assert set(reasons) == set(bad)
    for i, expected in bad.items():
        assert expected in reasons[i], (i, reasons[i])
    assert len(m["shards"]) == 2 and json.load(open(os.path.join(out, "manifest.json"))) == m

    recs = {r.id: r for r in records.read_records(os.path.join(out, "train-*.tfrecord"))}
    assert set(recs) == set(good) | {"gray", "rgba", "cmyk"}
    for r in recs.values():
        assert r.image.shape == (r.height, r.width, 3)
        assert r.superpixels.shape == (r.height, r.width) and r.num_superpixels > 1
        assert r.tags.sum() >= 1 and r.saliency.shape == (r.height, r.width)
    assert recs["gray"].groundtruth is None and recs[good[0]].groundtruth is not None
    assert recs[salient_id].saliency_source == "dataset" and (recs[salient_id].saliency == 77).all()
    assert recs[good[1]].saliency_source == "geodesic"
    assert recs["cmyk"].image_format == "png"  # converted images are stored as the RGB we computed on


def test_job_is_skipped_when_complete_and_redone_after_a_change(tiny_root, tiny_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = str(tmp_path / "out")
    first = preprocess.run(tiny_root, "val", out, tiny_cfg, PipelineOptions([]))
    # a leftover from a killed attempt with other settings must disappear on the next real run
    stale = os.path.join(out, "val-00000-of-00009.tfrecord")
    open(stale, "wb").write(b"garbage")
    again = preprocess.run(tiny_root, "val", out, tiny_cfg, PipelineOptions([]))
    assert again == first and "complete already" in caplog.text
    tiny_cfg.superpixels.scale = 120.0
    redone = preprocess.run(tiny_root, "val", out, tiny_cfg, PipelineOptions([]))
    assert redone["fingerprint"] != first["fingerprint"] and not os.path.exists(stale)
    assert redone["written"] == first["written"]


def test_dataset_level_errors_stop_the_cli_with_a_message(tmp_path, capsys):
    code = preprocess.main(["--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == 2 and "not a directory" in capsys.readouterr().err
    code = preprocess.main(["--out", str(tmp_path / "o"), "--set", "records.shards=3"])
    assert code == 2 and "records.shards" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_with_two_worker_processes(tiny_root, tmp_path):
    out = tmp_path / "mp"
    args = ["--data-root", tiny_root, "--split", "train", "--out", str(out)]
    args += ["--set", "superpixels.scale=300", "--set", "superpixels.min_size=50"]
    proc = run_job_with_two_workers("beam_jobs.preprocess", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.load(open(out / "manifest.json"))
    assert m["read"] == m["written"] == len(list_ids(tiny_root)) and m["rejected"] == []
    assert "images/s" in proc.stderr  # the job's summary, logged


def test_shards_are_the_same_whatever_the_input_order(tmp_path):
    """Shard = crc32(id) mod N, sorted by id inside: the runner's order cannot change the files, so a
    seed alone fixes the training data order (issue 6, reproducibility)."""
    import apache_beam as beam

    from beam_jobs import common

    rng = np.random.default_rng(0)
    recs = [
        records.Record(
            id=f"img{i:02d}",
            image_encoded=records.png_bytes(rng.integers(0, 255, (8, 9, 3), np.uint8)),
            image_format="png",
            height=8,
            width=9,
            tags=records.tags_multi_hot([1 + i % 3], 4),
            superpixels=np.zeros((8, 9), np.int32),
            saliency=np.zeros((8, 9), np.uint8),
        )
        for i in range(13)
    ]
    serialized = [records.encode(r) for r in recs]
    for name, order in (("a", serialized), ("b", serialized[::-1])):
        with beam.Pipeline() as p:
            {
                "records": p | beam.Create(order),
                "rejected": p | "NoRejects" >> beam.Create([]),
            } | common.WriteOutputs(str(tmp_path / name), "part", 3)
    files_a = sorted(os.listdir(tmp_path / "a"))
    assert [f for f in files_a if f.endswith(".tfrecord")] == [
        f"part-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    for f in files_a:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    ids = [records.record_ids(str(tmp_path / "a" / f)) for f in files_a if f.endswith(".tfrecord")]
    assert sorted(sum(ids, [])) == [r.id for r in recs] and all(i == sorted(i) for i in ids)
