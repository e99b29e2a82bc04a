"""No command deletes or overwrites its own inputs: an output folder that equals, contains or lies
inside an input folder is refused with exit 2 and one line, and the inputs stay byte for byte."""

import hashlib
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from beam_jobs import predict as beam_predict
from beam_jobs import preprocess, relabel
from mcof_tf import predict
from mcof_tf.fileio import check_output_apart, pattern_folder


def _digest(folder) -> dict:
    return {
        os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(
            open(os.path.join(d, f), "rb").read()
        ).hexdigest()
        for d, _, files in os.walk(folder)
        for f in files
    }


def test_overlap_rule(tmp_path):
    a = tmp_path / "a"
    for out, inp in (
        (a, a),
        (a / "sub", a),
        (a, a / "sub"),
        (a, str(a / "*.tfrecord")),
        (a / "x", str(a / "*.png")),
    ):
        with pytest.raises(ValueError, match="overlaps"):
            check_output_apart(str(out), {"input": str(inp)})
    check_output_apart(str(tmp_path / "records2"), {"input": str(tmp_path / "records" / "*.tfrecord")})
    check_output_apart("gs://b/out", {"input": "gs://b/outside/*.tfrecord"})
    with pytest.raises(ValueError, match="overlaps"):
        check_output_apart("gs://b/in/o", {"input": "gs://b/in/*.tfrecord"})
    assert (
        pattern_folder("d/e/*.tfrecord") == "d/e"
        and pattern_folder("d/x-*") == "d"
        and pattern_folder("p") == "p"
    )


def _preprocess_val(root, out) -> list:
    return ["--data-root", str(root), "--split", "val", "--out", str(out), "--set", "records.num_shards=1"]


@pytest.fixture
def record_folder(tiny_root, tmp_path):
    out = tmp_path / "records"
    assert preprocess.main(_preprocess_val(tiny_root, out)) == 0
    return out


def test_relabel_into_its_input_folder_is_refused(record_folder, capsys):
    before = _digest(record_folder)
    args = [
        "--records",
        str(record_folder / "*.tfrecord"),
        "--stage",
        "groundtruth",
        "--out",
        str(record_folder),
    ]
    assert relabel.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "overlaps the input records" in err and "Traceback" not in err
    assert _digest(record_folder) == before


def test_preprocess_into_its_dataset_is_refused(tiny_copy, capsys):
    before = _digest(tiny_copy)
    assert (
        preprocess.main(["--data-root", str(tiny_copy), "--out", os.path.join(str(tiny_copy), "records")])
        == 2
    )
    assert "overlaps the dataset root" in capsys.readouterr().err
    assert _digest(tiny_copy) == before


@pytest.mark.parametrize("cli", ["predict", "beam predict"])
def test_predict_into_its_image_folder_is_refused(cli, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((6, 7, 3), 40, np.uint8)).save(images / f"{name}.png")
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")  # the overlap is refused before the model is loaded
    before = _digest(images)
    if cli == "predict":
        code = predict.main(
            ["--model", str(model), "--images", str(images), "--out", str(images), "--overlay"]
        )
    else:
        code = beam_predict.main(
            ["--model", str(model), "--input", str(images), "--output", str(images / "o")]
        )
    assert code == 2 and "overlaps the input images" in capsys.readouterr().err
    assert _digest(images) == before


@pytest.mark.slow
def test_an_edited_image_redoes_preprocess_and_every_stage_after_it(tiny_copy, tmp_path, caplog):
    import logging

    from test_loop import TINY_RUN

    from mcof_tf import loop
    from mcof_tf.config import load_config

    caplog.set_level(logging.INFO)
    cfg = load_config("synthetic", TINY_RUN + ["experiment.name=tiny"])
    work = str(tmp_path / "work")
    loop.run_all(cfg, 1, work, str(tiny_copy), export=False)
    caplog.clear()
    loop.run_all(cfg, 1, work, str(tiny_copy), export=False)  # nothing changed: nothing redone
    assert "redoing" not in caplog.text and "cam: trained already" in caplog.text
    image = sorted((pathlib.Path(tiny_copy) / "JPEGImages").iterdir())[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[:4, :4] = 255 - pixels[:4, :4]
    Image.fromarray(pixels).save(image)  # same id, other content
    caplog.clear()
    loop.run_all(cfg, 1, work, str(tiny_copy), export=False)
    for stage in ("cam", "iter1/regionnet", "iter1/pixelnet"):
        assert f"redoing {stage}: its input records changed" in caplog.text, stage
    assert "preprocess: 4 ids of split 'train'" in caplog.text or "ids of split 'train'" in caplog.text
    # classes.txt reordered (same names): records re-indexed, so every network trained under the old
    # order is stale; the new records and report follow the new order
    names = (pathlib.Path(tiny_copy) / "classes.txt").read_text().split()
    reordered = [names[0]] + names[1:][::-1]
    (pathlib.Path(tiny_copy) / "classes.txt").write_text("".join(f"{c}\n" for c in reordered))
    caplog.clear()
    report = loop.run_all(cfg, 1, work, str(tiny_copy), export=False)
    for stage in ("cam", "iter1/regionnet", "iter1/pixelnet"):
        assert f"redoing {stage}: its input records changed" in caplog.text, stage
    manifest = json.loads((pathlib.Path(work) / "records" / "train" / "manifest.json").read_text())
    assert manifest["classes"] == reordered
    assert list(report["stages"][-1]["per_class"]) == reordered


@pytest.mark.parametrize("change", ["overlap", "twice"])
def test_split_lists_that_would_inflate_val_are_refused(tiny_copy, change):
    from mcof_tf.config import load_config
    from mcof_tf.loop import check_splits

    lists = pathlib.Path(tiny_copy) / "ImageSets" / "Segmentation"
    train = (lists / "train.txt").read_text().split()
    if change == "overlap":
        (lists / "val.txt").write_text((lists / "val.txt").read_text() + train[0] + "\n")
    else:
        (lists / "train.txt").write_text("\n".join(train + [train[1]]) + "\n")
    with pytest.raises(ValueError, match="in both train.txt and val.txt" if change == "overlap" else "twice"):
        check_splits(str(tiny_copy), load_config("synthetic").data)


def test_a_deleted_or_truncated_shard_makes_the_job_run_again(record_folder, tiny_root, caplog):
    import logging

    caplog.set_level(logging.INFO)
    shard = sorted(record_folder.glob("*.tfrecord"))[0]
    good = shard.read_bytes()
    args = _preprocess_val(tiny_root, record_folder)
    for damage in (shard.unlink, lambda: shard.write_bytes(good[:-10])):
        damage()
        assert preprocess.main(args) == 0
        assert "is missing or changed; redoing the job" in caplog.text
        assert shard.read_bytes() == good
        caplog.clear()


def test_one_run_per_folder(tmp_path):
    import socket
    import subprocess

    from mcof_tf.fileio import folder_lock

    lock = tmp_path / ".lock"
    for holder in ({"host": socket.gethostname(), "pid": 1}, {"host": "elsewhere", "pid": 12345}):
        lock.write_text(json.dumps(holder))  # pid 1 runs; another host's process cannot be checked
        with pytest.raises(ValueError, match=f"in use by pid {holder['pid']} on {holder['host']}"):
            with folder_lock(str(tmp_path)):
                pass
        assert json.loads(lock.read_text()) == holder  # a respected lock is left alone
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    with folder_lock(str(tmp_path)):  # a dead process's lock is taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with folder_lock(str(tmp_path)):  # this process holds it already (the loop's command, then the loop)
            pass
        assert json.loads(lock.read_text())["pid"] == os.getpid()  # left to the outer block
    assert not lock.exists()
    # a lock naming this pid that this process does not hold: an earlier process's, whose pid was reused
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with folder_lock(str(tmp_path)):
        pass
    assert not lock.exists()


def test_a_second_run_is_refused_before_tensorflow_loads(tmp_path):
    """`python -m mcof_tf.train` on a workdir in use says so at once, not after its heavy imports."""
    import socket
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    (work / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "started": "earlier"}))
    code = (
        "import sys; from mcof_tf import train; rc = train.main(['--workdir', sys.argv[1]]); "
        "print('loaded:', sorted({'tensorflow', 'apache_beam', 'keras'} & set(sys.modules))); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(work)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is in use by pid 1" in r.stderr, r.stderr[-2000:]
    assert "loaded: []" in r.stdout


def test_the_loop_refuses_a_workdir_in_use(tiny_root, tmp_path):
    import socket

    from mcof_tf import loop
    from mcof_tf.config import load_config

    work = tmp_path / "work"
    work.mkdir()
    (work / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "started": "earlier"}))
    with pytest.raises(ValueError, match="is in use by pid 1"):
        loop.run_all(load_config("synthetic"), 1, str(work), tiny_root)
    assert sorted(p.name for p in work.iterdir()) == [".lock"]  # nothing written


def test_regionnet_says_how_many_images_have_more_superpixels_than_it_classifies(tmp_path, caplog):
    import logging

    import tensorflow as tf

    from mcof_tf.config import load_config
    from mcof_tf.data import records
    from mcof_tf.training import regions_over_the_limit

    caplog.set_level(logging.INFO)
    path = str(tmp_path / "r-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for i, n in enumerate((5, 12, 8)):
            sp = np.arange(n * 2, dtype=np.int32).reshape(2, n) % n
            w.write(
                records.encode(
                    records.Record(
                        id=f"im{i}",
                        image_encoded=records.png_bytes(np.zeros((2, n, 3), np.uint8)),
                        image_format="png",
                        height=2,
                        width=n,
                        tags=records.tags_multi_hot([1], 3),
                        superpixels=sp,
                        saliency=np.zeros((2, n), np.uint8),
                        superpixel_labels=np.zeros(n, np.int64),
                    )
                )
            )
    assert records.superpixel_counts(path) == [5, 12, 8]
    cfg = load_config("synthetic", ["model.max_regions=8"])
    assert regions_over_the_limit(path, cfg) == 1
    assert "1 of 3 images have more than model.max_regions=8 superpixels (up to 12)" in caplog.text


def test_a_corrupt_manifest_is_one_line_naming_it(record_folder, tiny_root, capsys):
    """A manifest that is not JSON (a disk filled mid-write by another tool) stops the job with one
    line naming the file, before anything in the folder is touched."""
    (record_folder / "manifest.json").write_text('{"fingerprint": "abc", "sha')
    before = _digest(record_folder)
    args = _preprocess_val(tiny_root, record_folder)
    assert preprocess.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "manifest.json is not valid JSON" in err and "\n" not in err
    assert _digest(record_folder) == before
