"""The Beam relabel job on tiny records with small random models (the rules, not the accuracy)."""

import json
import logging
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import run_job_with_two_workers

from beam_jobs import preprocess, relabel
from mcof_tf import training
from mcof_tf.data import records
from mcof_tf.models.cam import build_cam
from mcof_tf.models.deeplab import deeplab_largefov
from mcof_tf.models.regionnet import build_regionnet


@pytest.fixture(scope="module")
def base(tiny_root, tmp_path_factory):
    from mcof_tf.config import load_config

    cfg = load_config(
        "synthetic",
        ["superpixels.scale=300", "superpixels.min_size=50", "records.num_shards=1", "model.max_regions=8"],
    )
    out = str(tmp_path_factory.mktemp("records") / "train")
    m = preprocess.run(tiny_root, "train", out, cfg, PipelineOptions([]))
    models = tmp_path_factory.mktemp("models")
    paths = {}
    # seeded: what these untrained networks predict must not depend on which tests ran before
    keras.utils.set_random_seed(0)
    for name, model in (
        ("cam", build_cam(7, "vgg16_small", 0.125)),
        ("pixelnet", deeplab_largefov(7, "vgg16_small", 0.125)),
        ("regionnet", build_regionnet(7, "vgg16_small", 0.125, max_regions=8, fc_units=8)),
    ):
        paths[name] = str(models / f"{name}.keras")
        training.save_model(model, paths[name])
    return cfg, os.path.join(out, "*.tfrecord"), m["classes"], paths


def _run(base, stage, out, model=None, cfg=None, **kw):
    """The job on the fixture's records, with its model for `stage` and config unless given."""
    base_cfg, recs, classes, paths = base
    return relabel.run(
        recs,
        model or paths.get(stage),
        stage,
        str(out),
        cfg or base_cfg,
        classes=classes,
        pipeline_options=PipelineOptions([]),
        **kw,
    )


def test_cam_stage_writes_one_seed_per_superpixel_within_the_tags(base, tmp_path):
    m = _run(base, "cam", tmp_path, iteration=0)
    assert m["read"] == m["written"] == 8 and m["rejected"] == []
    assert 0 <= m["metrics"]["seeds"]["miou"] <= 100 and set(m["metrics"]) == {"seeds"}
    for r in records.read_records(str(tmp_path / "*.tfrecord")):
        assert r.label_stage == "seeds" and len(r.superpixel_labels) == r.num_superpixels
        assert set(r.superpixel_labels.tolist()) <= {0, 255, *r.tag_indices}


def test_regionnet_stage_chunks_ids_enforces_tags_and_refines_single_tag_images(base, tmp_path):
    m = _run(base, "regionnet", tmp_path, iteration=1, refine=True)
    assert set(m["metrics"]) == {"regionnet", "refined"} and m["written"] == 8
    seen = set()
    for r in records.read_records(str(tmp_path / "*.tfrecord")):
        assert r.num_superpixels > 8  # more superpixels than max_regions: classified in chunks
        if len(r.tag_indices) == 1:
            assert r.label_stage == "refined" and r.labels is not None
            assert set(np.unique(r.labels).tolist()) <= {0, r.tag_indices[0]}
        else:
            assert r.label_stage == "regionnet" and set(r.superpixel_labels.tolist()) <= {0, *r.tag_indices}
        seen.add(r.label_stage)
    assert seen == {"refined", "regionnet"}


def test_pixelnet_stage_with_and_without_tags(base, tmp_path):
    tagged = _run(base, "pixelnet", tmp_path / "a", iteration=1)
    free = _run(base, "pixelnet", tmp_path / "b", iteration=1, use_tags=False)
    assert tagged["written"] == free["written"] == 8
    for r in records.read_records(str(tmp_path / "a" / "*.tfrecord")):
        assert r.labels.shape == (r.height, r.width) and set(np.unique(r.labels).tolist()) <= {
            0,
            *r.tag_indices,
        }


def test_pixelnet_masks_with_crf_or_a_confidence_cut(base, tmp_path):
    import dataclasses

    cfg, recs, classes, paths = base

    def run(name, use_tags=True, **labels):
        post = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, **labels))
        m = _run(base, "pixelnet", tmp_path / name, cfg=post, iteration=1, use_tags=use_tags)
        return m, list(records.read_records(str(tmp_path / name / "*.tfrecord")))

    m, recs_crf = run("crf", crf=True, min_confidence=0.0)
    assert set(m["metrics"]) == {"pixelnet", "pixelnet_crf"}  # the written masks are the CRF's
    for r in recs_crf:
        assert r.label_stage == "masks" and set(np.unique(r.labels).tolist()) <= {0, *r.tag_indices}
    m, recs_cut = run("cut", crf=False, min_confidence=0.9)
    assert set(m["metrics"]) == {"pixelnet", "masks"}
    assert any((r.labels == 255).any() for r in recs_cut)  # an untrained network is unsure somewhere
    assert all(set(np.unique(r.labels).tolist()) <= {0, 255, *r.tag_indices} for r in recs_cut)
    m, recs_val = run("val", use_tags=False, crf=True, min_confidence=0.9)
    assert set(m["metrics"]) == {"pixelnet", "pixelnet_crf"}  # validation: no tags, no confidence cut
    assert all(r.label_stage == "pixelnet" and (r.labels != 255).all() for r in recs_val)


def test_prior_correction_reads_the_models_label_shares(base, tmp_path):
    """--prior-correction adds class_balance * log(share) from the model folder's train.json: shares
    that make background common and the objects very rare turn more pixels into background; the offsets
    are recorded in the manifest (and its fingerprint); a model without recorded shares is refused."""
    import dataclasses

    cfg, recs, classes, paths = base
    # keep_tags off: its rescue of a tag that wins nowhere would decide this test, not the correction
    cfg = dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, keep_tags=False))
    folder = tmp_path / "pixelnet"
    folder.mkdir()
    # an untrained network whose classifier favours the objects by 2 logits: without the correction
    # they take pixels, with it (log 1e-6 = -13.8) background takes nearly all
    model = training.load_model(paths["pixelnet"])
    bias = model.get_layer(training.PIXEL_CLASSIFIER).bias
    bias.assign(np.array([-2.0] + [0.0] * 6, np.float32))
    training.save_model(model, str(folder / "model.keras"))

    def run(name, correct):
        m = _run(base, "pixelnet", tmp_path / name, str(folder), cfg, iteration=1, prior_correction=correct)
        labels = np.concatenate(
            [r.labels.ravel() for r in records.read_records(str(tmp_path / name / "*.tfrecord"))]
        )
        return m, (labels == 0).mean()

    with pytest.raises(ValueError, match="label_shares"):
        run("none", True)
    shares = [0.999994] + [1e-6] * 6
    (folder / "train.json").write_text(json.dumps({"label_shares": shares, "class_balance": 1.0}))
    plain, background = run("plain", False)
    corrected, background_corrected = run("corrected", True)
    half, background_half = run("half", 0.5)  # a strength: labels.prediction_correction
    assert plain["prior_offsets"] is None
    assert corrected["prior_offsets"] == pytest.approx(np.log(shares), abs=1e-5)
    assert half["prior_offsets"] == pytest.approx(0.5 * np.log(shares), abs=1e-5)
    assert background_corrected > background and background_corrected > 0.99
    assert background <= background_half <= background_corrected
    with pytest.raises(ValueError, match="regionnet and pixelnet"):
        relabel.run(
            recs,
            paths["cam"],
            "cam",
            str(tmp_path / "c"),
            cfg,
            classes=classes,
            pipeline_options=PipelineOptions([]),
            prior_correction=True,
        )


def test_groundtruth_stage_and_a_corrupt_record_is_counted(base, tmp_path):
    cfg, recs, classes, paths = base
    bad = tmp_path / "in"
    bad.mkdir()
    good = [
        raw for f in sorted(tf.io.gfile.glob(recs)) for raw in tf.data.TFRecordDataset(f).as_numpy_iterator()
    ]
    with tf.io.TFRecordWriter(str(bad / "x-00000-of-00001.tfrecord")) as w:
        for raw in good[:3]:
            w.write(raw)
        w.write(b"not an example")
    m = relabel.run(
        str(bad / "*.tfrecord"),
        None,
        "groundtruth",
        str(tmp_path / "out"),
        cfg,
        classes=classes,
        pipeline_options=PipelineOptions([]),
    )
    assert m["read"] == 4 and m["written"] == 3 and len(m["rejected"]) == 1
    for r in records.read_records(str(tmp_path / "out" / "*.tfrecord")):
        assert (r.labels == r.groundtruth).all() and r.label_stage == "groundtruth"


def test_job_is_not_redone_and_missing_model_is_an_error(base, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first = _run(base, "cam", tmp_path)
    # the job's Beam metrics, logged after the run: counters (RunInference's among them) and the
    # per-image latency distributions of the network and of the label rules
    n = first["written"]
    metrics = rf"relabel: Beam metrics: num_inferences {n}, written {n}, inference_batch_latency.*ms_per_image mean \d+"
    assert re.search(metrics, caplog.text)
    assert _run(base, "cam", tmp_path) == first and "complete already" in caplog.text
    cfg, recs, classes, _ = base
    with pytest.raises(FileNotFoundError, match="no trained model"):
        relabel.run(recs, str(tmp_path / "nothing"), "cam", str(tmp_path / "o"), cfg, classes=classes)


@pytest.mark.slow
def test_cli_with_two_worker_processes(base, tmp_path):
    cfg, recs, classes, paths = base
    out = tmp_path / "mp"
    args = ["--records", recs, "--model", paths["pixelnet"], "--stage", "pixelnet", "--out", str(out)]
    proc = run_job_with_two_workers("beam_jobs.relabel", args + ["--set", "records.num_shards=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.load(open(out / "manifest.json"))
    assert m["read"] == m["written"] == 8 and "pixelnet" in m["metrics"] and len(m["shards"]) == 2


def test_the_loops_choices_do_not_redo_a_finished_job_but_a_labels_rule_does(base, tmp_path):
    """labels.prior_correction / mask_correction / prediction_correction / refine_every_iteration /
    saliency_background / agreement / region_crf / refine_posterior / mask_scales / mask_flip choose the job's own
    arguments (which are in its fingerprint): changing them must not redo a stage they did not change;
    changing a rule of how labels are made (labels.min_confidence) must."""
    import dataclasses

    cfg = base[0]
    out = tmp_path / "seeds"
    first = _run(base, "cam", out, iteration=0)
    choices = dataclasses.replace(
        cfg.labels,
        prior_correction="every",
        prediction_correction=1.0,
        refine_every_iteration=True,
        saliency_background=0.3,
        agreement=True,
        region_crf=True,
        refine_posterior=0.3,
        mask_correction=0.5,
        mask_scales=[1.0, 1.5],
        mask_flip=True,
    )
    again = _run(base, "cam", out, cfg=dataclasses.replace(cfg, labels=choices), iteration=0)
    assert again["fingerprint"] == first["fingerprint"]
    rule = dataclasses.replace(cfg.labels, min_confidence=0.5)
    redone = _run(base, "cam", out, cfg=dataclasses.replace(cfg, labels=rule), iteration=0)
    assert redone["fingerprint"] != first["fingerprint"]


def test_saliency_background_guards_the_masks_pixelnet_writes(base, tmp_path):
    """With --saliency-background, every object label on a pixel of saliency below it becomes background
    in the masks the job writes, the rest unchanged; validation (no tags) is not guarded; the guard is
    in the fingerprint only when on and applies to the pixelnet stage only."""
    tau = 0.5
    plain = _run(base, "pixelnet", tmp_path / "plain", iteration=2)
    guarded = _run(base, "pixelnet", tmp_path / "guarded", iteration=2, saliency_background=tau)
    assert plain["fingerprint"] != guarded["fingerprint"]
    assert "masks" in guarded["metrics"] and "masks" not in plain["metrics"]
    before = {r.id: r.labels for r in records.read_records(str(tmp_path / "plain" / "*.tfrecord"))}
    changed = 0
    for r in records.read_records(str(tmp_path / "guarded" / "*.tfrecord")):
        old = before[r.id]
        expected = np.where((r.saliency < tau * 255) & (old != 0) & (old != 255), 0, old)
        assert r.label_stage == "masks" and np.array_equal(r.labels, expected)
        changed += int((r.labels != old).sum())
    assert changed > 0  # the untrained network labels some non-salient pixels as objects
    val = _run(base, "pixelnet", tmp_path / "val", iteration=2, use_tags=False, saliency_background=tau)
    unguarded = _run(base, "pixelnet", tmp_path / "val0", iteration=2, use_tags=False)
    for a, b in zip(
        records.read_records(str(tmp_path / "val" / "*.tfrecord")),
        records.read_records(str(tmp_path / "val0" / "*.tfrecord")),
    ):
        assert a.id == b.id and np.array_equal(a.labels, b.labels)
    assert "masks" not in val["metrics"] and "masks" not in unguarded["metrics"]
    for stage in ("cam", "regionnet"):
        with pytest.raises(ValueError, match="saliency-background"):
            _run(base, stage, tmp_path / stage, iteration=1, saliency_background=tau)


def test_agreement_keeps_the_regions_only_where_they_agree_with_the_masks(base, tmp_path):
    """With --agreement, RegionNet's regions stay where they equal the labels the records arrive with
    (PixelNet's masks) and are unlabelled (255) elsewhere; evaluated as "agreed"; records without labels
    are rejected with the reason; the switch is in the fingerprint only when on, for regionnet only."""
    cfg, _, classes, paths = base
    _run(base, "pixelnet", tmp_path / "masks", iteration=1)
    masks = str(tmp_path / "masks" / "*.tfrecord")

    def regions(out, **kw):
        return relabel.run(
            masks,
            paths["regionnet"],
            "regionnet",
            str(tmp_path / out),
            cfg,
            classes=classes,
            pipeline_options=PipelineOptions([]),
            iteration=2,
            **kw,
        )

    plain, agreed = regions("plain"), regions("agreed", agreement=True)
    assert plain["fingerprint"] != agreed["fingerprint"]
    assert "agreed" in agreed["metrics"] and "agreed" not in plain["metrics"]
    previous = {r.id: r.labels for r in records.read_records(masks)}
    mined = {r.id: r for r in records.read_records(str(tmp_path / "plain" / "*.tfrecord"))}
    left_out = 0
    for r in records.read_records(str(tmp_path / "agreed" / "*.tfrecord")):
        region = mined[r.id].superpixel_labels[r.superpixels]
        expected = np.where(region == previous[r.id], region, 255)
        assert r.label_stage == "agreed" and r.superpixel_labels is None
        assert np.array_equal(r.labels, expected)
        left_out += int((r.labels == 255).sum())
    assert left_out > 0  # two untrained networks disagree somewhere
    with pytest.raises(RuntimeError):  # the preprocessed records carry no labels: every one rejected
        _run(base, "regionnet", tmp_path / "none", iteration=2, agreement=True)
    rejected = [json.loads(line) for line in open(tmp_path / "none" / "rejected.jsonl")]
    assert len(rejected) == 8 and all("no labels to agree with" in r["reason"] for r in rejected)
    with pytest.raises(ValueError, match="--agreement"):
        _run(base, "pixelnet", tmp_path / "pixel", iteration=2, agreement=True)


def test_region_crf_labels_the_regions_per_pixel_before_refinement(base, tmp_path, monkeypatch):
    """With --region-crf the regions are the dense CRF's pixel labels over RegionNet's painted scores
    (evaluated as "regionnet_crf", next to the plain "regionnet"), within the tags; refinement starts from
    them (a single-tag image's refined object holds the CRF's); the switch is in the fingerprint only when
    on, and for regionnet only."""
    from mcof_tf.method.labels import paint

    plain = _run(base, "regionnet", tmp_path / "plain", iteration=1)
    crf = _run(base, "regionnet", tmp_path / "crf", iteration=1, region_crf=True)
    refined = _run(base, "regionnet", tmp_path / "refined", iteration=1, region_crf=True, refine=True)
    assert plain["fingerprint"] != crf["fingerprint"]
    assert set(plain["metrics"]) == {"regionnet"} and set(crf["metrics"]) == {"regionnet", "regionnet_crf"}
    assert set(refined["metrics"]) == {"regionnet", "regionnet_crf", "refined"}
    assert plain["metrics"]["regionnet"] == crf["metrics"]["regionnet"]  # the same network, the same regions
    mined = {
        r.id: paint(r.superpixel_labels, r.superpixels)
        for r in records.read_records(str(tmp_path / "plain" / "*.tfrecord"))
    }
    crf_labels, changed = {}, 0
    for r in records.read_records(str(tmp_path / "crf" / "*.tfrecord")):
        assert r.superpixel_labels is None and r.labels.shape == (r.height, r.width)
        assert set(np.unique(r.labels).tolist()) <= {0, *r.tag_indices}
        crf_labels[r.id] = r.labels
        changed += int((r.labels != mined[r.id]).sum())
    assert changed > 0  # pixel labels that no longer follow the superpixels somewhere
    for r in records.read_records(str(tmp_path / "refined" / "*.tfrecord")):
        if len(r.tag_indices) == 1:
            obj = crf_labels[r.id] == r.tag_indices[0]
            assert r.label_stage == "refined" and (r.labels[obj] == r.tag_indices[0]).all()
    # a confidence gate below 1 / (classes) leaves every superpixel to RegionNet: the plain regions,
    # without running the CRF on any image (it would fail them here)
    from mcof_tf.method import refine

    def no_crf(*args, **kw):
        raise AssertionError("the CRF ran on an image with no unsure superpixel")

    monkeypatch.setattr(refine, "crf_regions", no_crf)
    gated = _run(base, "regionnet", tmp_path / "gated", iteration=1, region_crf=0.01)
    assert gated["written"] == 8 and gated["rejected"] == []
    assert gated["fingerprint"] not in (plain["fingerprint"], crf["fingerprint"])
    for r in records.read_records(str(tmp_path / "gated" / "*.tfrecord")):
        assert np.array_equal(r.labels, mined[r.id])
    with pytest.raises(ValueError, match="--region-crf"):
        _run(base, "pixelnet", tmp_path / "pixel", iteration=1, region_crf=True)
    with pytest.raises(ValueError, match="--region-crf"):
        _run(base, "regionnet", tmp_path / "over", iteration=1, region_crf=1.5)


def test_refine_posterior_only_takes_pixels_out_of_the_refined_regions(base, tmp_path):
    """--refine-posterior P: a single-tag image's refined object is the plain refinement's minus RegionNet
    pixels of posterior <= P (so a subset of it); multi-tag images are not refined either way; the value is
    in the fingerprint only when on (in the manifest always), and needs --refine."""
    plain = _run(base, "regionnet", tmp_path / "plain", iteration=1, refine=True)
    cut = _run(base, "regionnet", tmp_path / "cut", iteration=1, refine=True, refine_posterior=0.9)
    assert plain["fingerprint"] != cut["fingerprint"]
    assert plain["refine_posterior"] == 0.0 and cut["refine_posterior"] == 0.9
    before = {r.id: r for r in records.read_records(str(tmp_path / "plain" / "*.tfrecord"))}
    removed = 0
    for r in records.read_records(str(tmp_path / "cut" / "*.tfrecord")):
        old = before[r.id]
        if len(r.tag_indices) == 1:
            new_obj, old_obj = r.labels == r.tag_indices[0], old.labels == r.tag_indices[0]
            assert not (new_obj & ~old_obj).any()  # nothing added
            removed += int((old_obj & ~new_obj).sum())
        else:
            assert np.array_equal(r.superpixel_labels, old.superpixel_labels)
    assert removed > 0  # at 0.9, some of RegionNet's object pixels are below it
    with pytest.raises(ValueError, match="--refine-posterior"):
        _run(base, "regionnet", tmp_path / "alone", iteration=1, refine_posterior=0.5)
    with pytest.raises(ValueError, match="--refine-posterior"):
        _run(base, "regionnet", tmp_path / "over", iteration=1, refine=True, refine_posterior=1.0)


def test_refine_connected_only_takes_parts_out_of_the_refined_regions(base, tmp_path):
    """--refine-connected: a single-tag image's refined object is a subset of the plain refinement's;
    multi-tag images are not refined; in the fingerprint only when on (in the manifest always); needs
    --refine."""
    plain = _run(base, "regionnet", tmp_path / "plain", iteration=1, refine=True)
    near = _run(base, "regionnet", tmp_path / "near", iteration=1, refine=True, refine_connected=True)
    assert plain["fingerprint"] != near["fingerprint"]
    assert plain["refine_connected"] is False and near["refine_connected"] is True
    before = {r.id: r for r in records.read_records(str(tmp_path / "plain" / "*.tfrecord"))}
    for r in records.read_records(str(tmp_path / "near" / "*.tfrecord")):
        old = before[r.id]
        if len(r.tag_indices) == 1:
            tag = r.tag_indices[0]
            assert not ((r.labels == tag) & (old.labels != tag)).any()  # nothing added
        else:
            assert np.array_equal(r.superpixel_labels, old.superpixel_labels)
    with pytest.raises(ValueError, match="--refine-connected"):
        _run(base, "regionnet", tmp_path / "alone", iteration=1, refine_connected=True)


def test_pixel_logits_average_scales_and_the_mirror_image():
    """relabel.pixel_logits: one view is the network's output at the image's size; with flip, the
    mirrored image's output is mirrored back before the average (checked with a network that is not
    mirror-symmetric: a running sum along the width); scales are resized back to the image's size."""
    image = tf.constant(np.random.default_rng(0).normal(size=(1, 5, 7, 3)).astype(np.float32))

    def forward(x):  # stands in for PixelNet: logits of 2 classes at the input's size
        return tf.cumsum(x[..., :2], axis=2)

    x = image.numpy()[0, :, :, :2]
    one = np.cumsum(x, axis=1)
    assert np.allclose(relabel.pixel_logits(forward, image), one, atol=1e-6)
    mirrored = np.cumsum(x[:, ::-1], axis=1)[:, ::-1]
    assert np.allclose(relabel.pixel_logits(forward, image, flip=True), (one + mirrored) / 2, atol=1e-5)
    flat = tf.ones((1, 6, 8, 3))
    out = relabel.pixel_logits(lambda x: x[..., :2], flat, scales=[0.5, 1.0, 2.0], flip=True)
    assert out.shape == (6, 8, 2) and np.allclose(out, 1.0)


def test_pixelnet_views_are_the_jobs_own_arguments(base, tmp_path):
    """--scales / --flip: PixelNet's logits over several views; recorded in the manifest and in the
    fingerprint only when other than one view (a finished job of before is not redone); pixelnet only."""
    plain = _run(base, "pixelnet", tmp_path / "plain", iteration=1)
    again = _run(base, "pixelnet", tmp_path / "plain", iteration=1, scales=[1.0], flip=False)
    views = _run(base, "pixelnet", tmp_path / "views", iteration=1, scales=[0.75, 1.0], flip=True)
    assert again["fingerprint"] == plain["fingerprint"] != views["fingerprint"]
    assert (plain["scales"], plain["flip"], views["scales"], views["flip"]) == (
        [1.0],
        False,
        [0.75, 1.0],
        True,
    )
    assert views["written"] == 8 and "pixelnet" in views["metrics"]
    changed = sum(
        int((a.labels != b.labels).sum())
        for a, b in zip(
            records.read_records(str(tmp_path / "plain" / "*.tfrecord")),
            records.read_records(str(tmp_path / "views" / "*.tfrecord")),
        )
    )
    assert changed > 0  # an untrained network's argmax is not scale- and mirror-invariant
    with pytest.raises(ValueError, match="apply to the pixelnet stage"):
        _run(base, "regionnet", tmp_path / "r", iteration=1, flip=True)
    with pytest.raises(ValueError, match="--scales"):
        _run(base, "pixelnet", tmp_path / "s", iteration=1, scales=[8.0])
