import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from mcof_tf.data import pipeline, records


def _record(h=20, w=30, with_labels=True, seed=0):
    rng = np.random.default_rng(seed)
    # 6 superpixels as vertical bands; image colour encodes the band; labels per superpixel
    sp = np.repeat(np.minimum(np.arange(w) // 5, 5)[None], h, 0).astype(np.int32)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = sp * 40
    img[..., 1] = rng.integers(0, 255)
    gt = np.where(sp % 2 == 0, 2, 0).astype(np.uint8)
    gt[0] = 255
    sal = (sp * 50).astype(np.uint8)
    return records.Record(
        id=f"r{seed}",
        image_encoded=records.png_bytes(img),
        image_format="png",
        height=h,
        width=w,
        tags=records.tags_multi_hot([2], 4),
        superpixels=sp,
        saliency=sal,
        groundtruth=gt,
        superpixel_labels=np.array([1, 255, 2, 0, 3, 255]) if with_labels else None,
        label_stage="seeds" if with_labels else "",
    )


def test_tags_multi_hot():
    assert records.tags_multi_hot([1, 3], 4).tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        records.tags_multi_hot([0], 4)  # background is no tag
    with pytest.raises(ValueError):
        records.tags_multi_hot([4], 4)


def test_numpy_round_trip_keeps_every_field():
    rec = _record()
    back = records.parse_example(records.encode(rec))
    assert back.id == rec.id and (back.height, back.width) == (20, 30)
    assert (back.image == rec.image).all()
    assert (back.superpixels == rec.superpixels).all() and back.superpixels.dtype == np.int32
    assert (back.saliency == rec.saliency).all() and (back.groundtruth == rec.groundtruth).all()
    assert back.superpixel_labels.tolist() == [1, 255, 2, 0, 3, 255]
    assert back.tag_indices == [2] and back.label_stage == "seeds" and back.labels is None


def test_a_record_is_the_same_bytes_in_every_process():
    """Features in key order (a protobuf map's own order follows the process's string hashing), so the
    jobs' files are the same bytes run after run: what deterministic serialisation of the record writes."""
    encoded = records.encode(_record())
    assert tf.train.Example.FromString(encoded).SerializeToString(deterministic=True) == encoded


def test_uint16_superpixels_survive():
    rec = _record()
    rec.superpixels = np.arange(600, dtype=np.int32).reshape(20, 30) * 100  # ids up to 59,900
    rec.superpixel_labels = None
    back = records.parse_example(records.encode(rec))
    assert back.superpixels.max() == 59900 and (back.superpixels == rec.superpixels).all()


def test_encode_checks_shapes_and_lengths():
    rec = _record()
    rec.saliency = rec.saliency[:5]
    with pytest.raises(ValueError, match="saliency"):
        records.encode(rec)
    rec = _record()
    rec.superpixel_labels = np.array([1, 2])
    with pytest.raises(ValueError, match="superpixel labels"):
        records.encode(rec)


def test_tf_decode_matches_numpy_and_paints_superpixel_labels():
    rec = _record()
    ex = records.decode_example(tf.constant(records.encode(rec)), 4)
    assert ex["id"].numpy() == b"r0"
    assert (ex["image"].numpy() == rec.image).all()
    assert (ex["superpixels"].numpy() == rec.superpixels).all()
    assert ex["tags"].numpy().tolist() == [0.0, 1.0, 0.0]
    want = np.array([1, 255, 2, 0, 3, 255])[rec.superpixels]
    assert (ex["labels"].numpy() == want).all() and bool(ex["has_labels"])
    assert (ex["groundtruth"].numpy() == rec.groundtruth).all() and bool(ex["has_groundtruth"])


def test_tf_decode_makes_only_the_maps_asked_for():
    rec = _record()
    encoded = tf.constant(records.encode(rec))
    ex = records.decode_example(encoded, 4, maps=("image", "labels"))  # what PixelNet learns from
    assert "image" in ex and "labels" in ex
    assert not {"superpixels", "saliency", "groundtruth"} & set(ex)
    # the labels are still painted from the superpixel labels, the superpixels decoded for it
    want = np.array([1, 255, 2, 0, 3, 255])[rec.superpixels]
    assert (ex["labels"].numpy() == want).all() and bool(ex["has_labels"]) and bool(ex["has_groundtruth"])
    assert sorted(records.decode_example(encoded, 4, maps=())) == [
        "has_groundtruth",
        "has_labels",
        "id",
        "tags",
    ]
    with pytest.raises(ValueError, match="unknown maps"):
        records.decode_example(encoded, 4, maps=("image", "mask"))


def test_tf_decode_fills_absent_optional_maps_with_void():
    rec = _record(with_labels=False)
    rec.groundtruth = None
    ex = records.decode_example(tf.constant(records.encode(rec)), 4)
    assert (ex["labels"].numpy() == 255).all() and not bool(ex["has_labels"])
    assert (ex["groundtruth"].numpy() == 255).all() and not bool(ex["has_groundtruth"])


def _shards(tmp_path, n=6):
    path = str(tmp_path / "t-00000-of-00001.tfrecord")
    records.write_records(path, [_record(seed=s) for s in range(n)])
    return str(tmp_path / "t-*.tfrecord")


def test_augmentation_keeps_every_map_aligned(tmp_path):
    ds = pipeline.make_dataset(
        _shards(tmp_path),
        4,
        batch_size=3,
        training=True,
        crop_size=24,
        min_scale=0.6,
        max_scale=1.6,
        seed=3,
        mean_rgb=(0.0, 0.0, 0.0),
    )
    table = np.array([1, 255, 2, 0, 3, 255])
    seen_pad = seen_flip = False
    for batch in ds.take(8):
        sp, lab = batch["superpixels"].numpy(), batch["labels"].numpy()
        img, sal = batch["image"].numpy(), batch["saliency"].numpy()
        assert img.shape == (3, 24, 24, 3) and lab.shape == (3, 24, 24)
        inside = sp >= 0
        # nearest-resized maps go through exactly the same geometry
        assert (lab[inside] == table[sp[inside]]).all()
        assert (lab[~inside] == 255).all() and (batch["groundtruth"].numpy()[~inside] == 255).all()
        assert (img[~inside] == 0).all() and (sal[~inside] == 0).all()
        seen_pad |= bool((~inside).any())
        # the image's red channel encodes the superpixel: compare away from band edges
        # (bilinear blends across a band edge: keep pixels whose 5x5 neighbourhood is one band)
        # (and the crop's own border, whose outside neighbours blended in too)
        lo = ndimage.minimum_filter(sp, (1, 5, 5), mode="constant", cval=-1)
        interior = inside & (lo == ndimage.maximum_filter(sp, (1, 5, 5), mode="constant", cval=99))
        assert np.abs(img[..., 0][interior] - 40 * sp[interior]).max() < 1.0
        # a flip shows as superpixel ids decreasing left to right
        seen_flip |= bool((np.diff(sp[0][sp[0].min(1) >= 0], axis=1) < 0).any())
    assert seen_pad and seen_flip


def test_seed_fixes_order_and_augmentation(tmp_path):
    pattern = _shards(tmp_path)

    def first(seed):
        ds = pipeline.make_dataset(pattern, 4, batch_size=2, training=True, crop_size=16, seed=seed)
        return [b["image"].numpy() for b in ds.take(3)]

    a, b, c = first(5), first(5), first(6)
    assert all((x == y).all() for x, y in zip(a, b))
    assert any((x != y).any() for x, y in zip(a, c))


def test_a_pipeline_of_fewer_maps_gives_the_same_batches_of_those(tmp_path):
    """A network's training input decodes only its maps (training.Network.maps); the images and
    labels, their order and their augmentation are those of the full pipeline."""
    pattern = _shards(tmp_path)

    def batches(maps, training=True):
        ds = pipeline.make_dataset(
            pattern, 4, batch_size=2, training=training, crop_size=16, seed=1, maps=maps, repeat=False
        )
        return list(ds.take(3))

    full, few = batches(None), batches(("labels",))
    assert sorted(few[0]) == ["has_groundtruth", "has_labels", "id", "image", "labels", "tags"]
    for a, b in zip(full, few):
        for key in ("id", "image", "labels"):
            assert (a[key].numpy() == b[key].numpy()).all()
    (whole,) = batches(("superpixels",), training=False)[:1]  # evaluation batches pad what they hold
    assert "superpixels" in whole and "labels" not in whole and whole["image"].shape == (2, 20, 30, 3)


def test_eval_pipeline_pads_whole_images(tmp_path):
    ds = pipeline.make_dataset(_shards(tmp_path, 3), 4, batch_size=3, training=False)
    (batch,) = list(ds)
    assert batch["image"].shape == (3, 20, 30, 3)
    assert [i.decode() for i in batch["id"].numpy()] == ["r0", "r1", "r2"]


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        pipeline.make_dataset(str(tmp_path / "none-*.tfrecord"), 4, batch_size=1, training=False)


def test_read_records_by_id_and_record_ids(tmp_path):
    pattern = _shards(tmp_path, 4)
    assert records.record_ids(pattern) == ["r0", "r1", "r2", "r3"]
    assert [r.id for r in records.read_records(pattern, {"r1", "r3"})] == ["r1", "r3"]


_AUTOGRAPH_PROBE = """
import functools, glob, os, sys, tempfile
import tensorflow as tf
from mcof_tf import training
from mcof_tf.data import records
from mcof_tf.config import load_config

cfg = load_config("synthetic", ["input.crop_size=16", "input.batch_size=2"])
for network in ("cam", "regionnet", "pixelnet"):  # the training input of each, and what train() reads
    training.input_dataset(network, sys.argv[1], cfg, 4, 2)
training.label_shares("pixelnet", sys.argv[1], cfg, 4)
training.regions_over_the_limit(sys.argv[1], cfg)
training.dataset_from_config(sys.argv[1], 4, cfg.input, training=False, batch_size=1)
made = lambda: len(glob.glob(os.path.join(tempfile.gettempdir(), "__autograph_generated_file*")))
ours = made()
# a map that AutoGraph converts (a function from a file: -c code has no source to convert), as a control
tf.data.TFRecordDataset(glob.glob(sys.argv[1])).map(functools.partial(records.decode_example, num_classes=4))
print(ours, made())
"""


def test_input_pipelines_are_built_without_autograph_conversion(tmp_path):
    """The input functions are plain TF ops: converting them with AutoGraph (which writes each converted
    function to a temporary file) cost about 2 s of every training stage's start-up."""
    import os
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", _AUTOGRAPH_PROBE, _shards(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    ours, with_control = (int(v) for v in r.stdout.split()[-2:])
    assert ours == 0 and with_control > 0, r.stdout
