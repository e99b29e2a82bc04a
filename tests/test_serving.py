"""Export for TF Serving, the predict CLI and the Beam batch-prediction job (issue 5)."""

import base64
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_job_with_two_workers
from PIL import Image

from mcof_tf import export, predict, training
from mcof_tf.data.voc import RejectedInput, decode_image
from mcof_tf.models.deeplab import deeplab_largefov

CLASSES = ["background", "cat", "dog"]
MEAN = [123.68, 116.779, 103.939]


def _png(array, mode=None):
    import io

    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny PixelNet trained for a few steps to tell a bright square from a dark background, saved as
    .keras and exported twice (versions 1 and 2); a third export bounds sizes tightly."""
    import keras

    tmp = tmp_path_factory.mktemp("serving")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = np.zeros((16, 64, 64, 3), np.float32)
    y = np.zeros((16, 8, 8), np.int64)
    for i in range(16):  # bright rectangles (class 1) on black: logits that vary over an image
        (y0, x0), (h, w) = rng.integers(0, 32, 2), rng.integers(16, 32, 2)
        x[i, y0 : y0 + h, x0 : x0 + w] = 255.0
        y[
            i,
            max(0, (y0 - 4 + 7) // 8) : (y0 + h - 4 + 7) // 8,
            max(0, (x0 - 4 + 7) // 8) : (x0 + w - 4 + 7) // 8,
        ] = 1
    model = deeplab_largefov(3, "vgg16_small", 0.125, batch_norm=True)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x - np.asarray(MEAN, np.float32), y, epochs=20, batch_size=4, verbose=0)
    path = str(tmp / "pixelnet.keras")
    training.save_model(model, path)
    base = str(tmp / "saved_models" / "tiny")
    v1 = export.export_saved_model(path, base, CLASSES, MEAN)
    v2 = export.export_saved_model(path, base, CLASSES, MEAN)
    small = export.export_saved_model(
        path, str(tmp / "bounded"), CLASSES, MEAN, max_side=32, max_pixels=64 * 64
    )
    return {"keras": path, "model": model, "v1": v1, "v2": v2, "bounded": small, "tmp": tmp}


def test_export_writes_numbered_versions_with_class_names(exported):
    assert [os.path.basename(exported[k]) for k in ("v1", "v2")] == ["1", "2"]
    for k in ("v1", "v2"):
        assert os.path.exists(os.path.join(exported[k], "saved_model.pb"))
        with open(os.path.join(exported[k], export.CLASSES_FILE)) as f:
            assert f.read().split() == CLASSES
    assert not [d for d in os.listdir(os.path.dirname(exported["v1"])) if d.endswith(".tmp")]


def test_export_adds_the_prior_correction_to_every_endpoints_logits(exported, tmp_path):
    """A prior correction is part of the served model: predict_logits returns the offset logits, and a
    class pushed far down is never chosen by serving_default; the offsets are recorded beside it."""
    import json

    import tensorflow as tf

    offsets = [0.0, -1e4, 0.5]  # the tiny model's logits reach hundreds
    raw = tf.saved_model.load(exported["v1"])
    moved_dir = export.export_saved_model(
        exported["keras"], str(tmp_path / "m"), CLASSES, MEAN, logit_offsets=offsets
    )
    moved = tf.saved_model.load(moved_dir)
    image = np.zeros((1, 64, 64, 3), np.float32)
    image[0, 16:48, 16:48] = 255.0
    a = raw.signatures["predict_logits"](images=tf.constant(image))["logits"].numpy()
    b = moved.signatures["predict_logits"](images=tf.constant(image))["logits"].numpy()
    np.testing.assert_allclose(b - a, np.broadcast_to(offsets, a.shape), atol=1e-2)
    assert (a.argmax(-1) == 1).any()  # the raw model finds the square
    png = moved.signatures["serving_default"](
        images=tf.constant([tf.io.encode_png(image[0].astype(np.uint8)).numpy()])
    )
    served = tf.io.decode_png(png["label_png_bytes"][0]).numpy()
    assert not (served == 1).any(), np.unique(served, return_counts=True)
    assert json.loads(open(os.path.join(moved_dir, export.OFFSETS_FILE)).read()) == offsets
    with pytest.raises(ValueError, match="2 logit offsets for 3 classes"):
        export.export_saved_model(exported["keras"], str(tmp_path / "x"), CLASSES, MEAN, logit_offsets=[0, 1])


def test_export_refuses_class_names_that_do_not_match_the_model(exported, tmp_path, capsys):
    with pytest.raises(ValueError, match="predicts 3 classes but 2"):
        export.export_saved_model(exported["keras"], str(tmp_path / "m"), CLASSES[:2], MEAN)
    # the CLI without --classes (the 21 VOC names) on this 3-class model: one line, exit 2, no version
    assert export.main(["--checkpoint", exported["keras"], "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "predicts 3 classes but 21" in err and "Traceback" not in err
    assert os.listdir(tmp_path / "cli") == []


SERVE_SCRIPT = textwrap.dedent(r"""
    # Runs in a fresh process that never imports mcof_tf, as TF Serving would load the export.
    import io, json, sys
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    def enc(a, fmt="PNG", mode=None):
        b = io.BytesIO(); Image.fromarray(a, mode).save(b, format=fmt); return b.getvalue()

    model_dir, bounded_dir = sys.argv[1], sys.argv[2]
    m = tf.saved_model.load(model_dir)
    f = m.signatures["serving_default"]
    out = {"inputs": {k: [v.dtype.name, v.shape.as_list()] for k, v in f.structured_input_signature[1].items()},
           "outputs": sorted(f.structured_outputs)}
    rgb = np.zeros((50, 70, 3), np.uint8); rgb[10:40, 20:60] = 255
    gray = np.full((31, 45), 200, np.uint8)
    rgba = np.dstack([rgb, np.full((50, 70), 255, np.uint8)])
    r = f(images=tf.constant([enc(rgb), enc(rgb, "JPEG"), enc(gray, mode="L"), enc(rgba, mode="RGBA")]))
    out["sizes"] = [list(tf.io.decode_png(p).shape) for p in r["label_png_bytes"].numpy()]
    out["labels"] = tf.io.decode_png(r["label_png_bytes"][0])[..., 0].numpy().tolist()
    out["scores_sum"] = r["class_scores"].numpy().sum(1).tolist()
    out["names"] = [n.decode() for n in r["class_names"].numpy()[0]]
    try:
        f(images=tf.constant([b"this is not an image"]))
        out["not_image"] = "no error"
    except tf.errors.InvalidArgumentError as e:
        out["not_image"] = e.message[:3000]
    out["after_error"] = int(f(images=tf.constant([enc(rgb)]))["class_scores"].shape[0])
    r = f(images=tf.constant([], tf.string))
    out["empty"] = [r["label_png_bytes"].shape.as_list(), r["class_scores"].shape.as_list()]
    g = tf.saved_model.load(bounded_dir).signatures["serving_default"]
    out["downscaled_size"] = list(tf.io.decode_png(g(images=tf.constant([enc(rgb)]))["label_png_bytes"][0]).shape)
    for name, data in (("huge_png", enc(np.zeros((100, 100, 3), np.uint8))),
                       ("huge_jpeg", enc(np.zeros((100, 100, 3), np.uint8), "JPEG")),
                       ("huge_bmp", enc(np.zeros((100, 100, 3), np.uint8), "BMP"))):
        try:
            g(images=tf.constant([data]))
            out[name] = "no error"
        except tf.errors.InvalidArgumentError as e:
            out[name] = e.message[:3000]
    p = m.signatures["predict_logits"](images=tf.zeros([1, 40, 56, 3]))
    out["logits"] = p["logits"].shape.as_list(); out["probabilities"] = p["probabilities"].shape.as_list()
    out["mcof_tf_imported"] = any(k.startswith("mcof_tf") for k in sys.modules)
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def served(exported):
    r = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, exported["v1"], exported["bounded"]],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.split("RESULT", 1)[1])


def test_savedmodel_serves_encoded_images_without_mcof_tf(served, exported):
    assert served["mcof_tf_imported"] is False
    assert served["inputs"] == {"images": ["string", [None]]}
    assert served["outputs"] == ["class_names", "class_scores", "label_png_bytes"]
    assert served["sizes"] == [
        [50, 70, 1],
        [50, 70, 1],
        [31, 45, 1],
        [50, 70, 1],
    ]  # each at its input's resolution
    assert np.allclose(served["scores_sum"], 1.0, atol=1e-4)
    assert served["names"] == CLASSES
    labels = np.array(served["labels"])
    rgb = np.zeros((50, 70, 3), np.float32)
    rgb[10:40, 20:60] = 255
    logits = exported["model"](rgb[None] - np.asarray(MEAN, np.float32), training=False)
    assert (labels == tf.argmax(tf.image.resize(logits, [50, 70])[0], -1).numpy()).mean() > 0.999
    assert (
        len(np.unique(labels)) >= 2
    )  # an image-dependent answer, so that the comparisons below mean something
    assert served["logits"] == [1, 5, 7, 3] and served["probabilities"] == [1, 40, 56, 3]


def test_savedmodel_bad_requests_fail_cleanly(served):
    assert "Unknown image file format" in served["not_image"]
    assert served["after_error"] == 1  # the model still serves after a bad request
    assert served["empty"] == [[0], [0, 3]]
    assert served["downscaled_size"] == [50, 70, 1]  # run at ≤ 32 px, answered at the input's size
    assert (
        "image too large (header)" in served["huge_png"] and "image too large (header)" in served["huge_jpeg"]
    )
    assert "image too large (decoded)" in served["huge_bmp"]


def test_serving_default_matches_the_keras_model(exported):
    model = tf.saved_model.load(exported["v1"])
    rng = np.random.default_rng(1)
    image = rng.integers(0, 60, (44, 60, 3), np.uint8)
    image[8:36, 12:48] = 230
    got = tf.io.decode_png(
        model.signatures["serving_default"](images=tf.constant([_png(image)]))["label_png_bytes"][0]
    )
    logits = exported["model"](image[None].astype(np.float32) - np.asarray(MEAN, np.float32), training=False)
    want = tf.argmax(tf.image.resize(logits, [44, 60], method="bilinear")[0], -1).numpy()
    assert (got.numpy()[..., 0] == want).mean() > 0.999


def test_saved_model_cli_show_and_run(exported, tmp_path):
    show = subprocess.run(
        ["saved_model_cli", "show", "--dir", exported["v1"], "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert show.returncode == 0, show.stderr[-2000:]
    for name in (
        "signature_def['serving_default']",
        "signature_def['predict_logits']",
        "label_png_bytes",
        "class_scores",
        "class_names",
        "probabilities",
    ):
        assert name in show.stdout
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 24, 32, 3), np.float32))
    run = subprocess.run(
        [
            "saved_model_cli",
            "run",
            "--dir",
            exported["v1"],
            "--tag_set",
            "serve",
            "--signature_def",
            "predict_logits",
            "--inputs",
            f"images={x}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.load(tmp_path / "out" / "probabilities.npy").shape == (1, 24, 32, 3)


def test_rest_and_grpc_request_forms_match_the_signature(exported):
    """Build the two request forms a client sends to TF Serving and apply them the way the server
    does: REST's {"b64": ...} becomes the bytes of a DT_STRING element; gRPC carries a TensorProto."""
    from tensorflow_serving.apis import predict_pb2

    sig = tf.saved_model.load(exported["v1"]).signatures["serving_default"]
    image = _png(np.full((20, 30, 3), 90, np.uint8))
    body = json.dumps(
        {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(image).decode()}]}
    )
    inst = json.loads(body)["instances"]
    rest = sig(images=tf.constant([base64.b64decode(i["b64"]) for i in inst]))
    # the server base64-encodes outputs whose name ends in _bytes
    assert [k for k in rest if k.endswith("_bytes")] == ["label_png_bytes"]

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "tiny"
    req.model_spec.signature_name = "serving_default"
    req.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
    (arg_name,) = sig.structured_input_signature[1]
    assert set(req.inputs) == {arg_name}
    grpc = sig(**{k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()})
    resp = predict_pb2.PredictResponse()
    for k, v in grpc.items():
        resp.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
    assert resp.outputs["label_png_bytes"].string_val[0] == rest["label_png_bytes"].numpy()[0]
    assert tf.io.decode_png(resp.outputs["label_png_bytes"].string_val[0]).shape == (20, 30, 1)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    rgb = np.zeros((40, 52, 3), np.uint8)
    rgb[10:30, 12:40] = 250
    Image.fromarray(rgb).save(root / "a.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(root / "sub" / "gray.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("not an image extension: ignored")
    return root


def test_predict_cli_writes_palette_pngs_overlays_and_resumes(exported, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "--model",
        exported["v1"],
        "--images",
        str(image_folder),
        "--out",
        str(out),
        "--overlay",
        "--scales",
        "0.75,1,1.25",
        "--crf",
    ]
    assert predict.main(args) == 0
    a = Image.open(out / "a.png")
    assert a.mode == "P" and a.size == (52, 40) and Image.open(out / "sub" / "gray.png").size == (52, 40)
    assert set(np.unique(np.asarray(a)).tolist()) <= {0, 1, 2}
    assert Image.open(out / "overlays" / "a.jpg").size == (52, 40)
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"].endswith("broken.jpg") for r in rejected] == [True] and "cannot be decoded" in rejected[
        0
    ]["reason"]
    assert "read 3, written 2, already done 0, rejected 1" in capsys.readouterr().out
    assert predict.main(args) == 0  # resume: nothing is recomputed
    assert "read 3, written 0, already done 2, rejected 1" in capsys.readouterr().out
    # the same folder with other options or another model: refused, the label maps stay as they are
    before = (out / "a.png").read_bytes()
    assert predict.main(args[:-3]) == 2 and "made with another scales, crf" in capsys.readouterr().err
    other = [a if a != exported["v1"] else exported["bounded"] for a in args]
    assert predict.main(other) == 2 and "made with another model" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == before


def test_an_unreadable_input_is_a_counted_rejection_in_both_predict_paths(exported, tmp_path, capsys):
    """A dangling link (a file deleted under a listed name) is rejected with its reason; the job goes on."""
    from beam_jobs.predict import PredictorHandler

    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(images / "a.png")
    os.symlink(tmp_path / "deleted.png", images / "gone.png")
    out = tmp_path / "out"
    assert predict.main(["--model", exported["v1"], "--images", str(images), "--out", str(out)]) == 0
    assert "read 2, written 1, already done 0, rejected 1" in capsys.readouterr().out
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == [str(images / "gone.png")]
    assert rejected[0]["reason"].startswith("cannot be read")
    handler = PredictorHandler(exported["v1"], str(images), str(tmp_path / "beam"), [1.0], False, False)
    (result,) = handler.run_inference([str(images / "gone.png")], handler.load_model())
    assert result.inference["rejected"].startswith("cannot be read: ")


def test_inputs_sharing_an_output_name_are_counted_not_overwritten(exported, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((20, 24, 3), 10, np.uint8)).save(images / "a.jpg")
    out = tmp_path / "out"
    assert predict.main(["--model", exported["v1"], "--images", str(images), "--out", str(out)]) == 0
    assert "read 2, written 1, already done 0, rejected 1" in capsys.readouterr().out
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [
        {"id": str(images / "a.png"), "reason": f"its output a.png is taken by {images / 'a.jpg'}"}
    ]


def test_predict_cli_at_scale_one_agrees_with_serving_default(exported, image_folder, tmp_path):
    out = tmp_path / "out"
    assert (
        predict.main(["--model", exported["v1"], "--images", str(image_folder / "*.jpg"), "--out", str(out)])
        == 0
    )
    served = tf.saved_model.load(exported["v1"]).signatures["serving_default"](
        images=tf.constant([(image_folder / "a.jpg").read_bytes()])
    )["label_png_bytes"][0]
    # PIL and TensorFlow decode JPEG with different IDCTs: a few boundary pixels may differ
    assert (np.asarray(Image.open(out / "a.png")) == tf.io.decode_png(served).numpy()[..., 0]).mean() > 0.98


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/1", "--images", "IMAGES", "--out", "OUT"], "holds no SavedModel"),
        (["--model", "MODEL", "--images", "/nonexistent/*.jpg", "--out", "OUT"], "no images found"),
        (["--model", "MODEL", "--images", "IMAGES", "--out", "OUT", "--scales", "1,x"], "--scales"),
        (["--model", "MODEL", "--images", "IMAGES", "--out", "/proc/forbidden"], "error"),
    ],
)
def test_predict_cli_bad_arguments(exported, image_folder, tmp_path, capsys, args, message):
    subst = {"MODEL": exported["v1"], "IMAGES": str(image_folder), "OUT": str(tmp_path / "o")}
    assert predict.main([subst.get(a, a) for a in args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_beam_predict_job_two_workers(exported, image_folder, tmp_path):
    out = tmp_path / "beam"
    args = ["--model", exported["v1"], "--input", str(image_folder), "--output", str(out)]
    r = run_job_with_two_workers("beam_jobs.predict", args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["read"] == 3
        and m["written"] == 2
        and [x["id"].endswith("broken.jpg") for x in m["rejected"]] == [True]
    )
    cli = tmp_path / "cli"
    assert predict.main(["--model", exported["v1"], "--images", str(image_folder), "--out", str(cli)]) == 0
    for name in ("a.png", "sub/gray.png"):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(cli / name)))


def test_beam_predict_with_crf_on_the_local_threads_matches_the_cli(exported, image_folder, tmp_path):
    """The Beam job's two local threads run their dense CRFs in worker processes: same label maps as the
    one-image-at-a-time CLI."""
    from beam_jobs import predict as beam_predict

    out, cli = tmp_path / "beam", tmp_path / "cli"
    m = beam_predict.run(exported["v1"], str(image_folder), str(out), None, crf=True)
    assert m["written"] == 2
    assert (
        predict.main(["--model", exported["v1"], "--images", str(image_folder), "--out", str(cli), "--crf"])
        == 0
    )
    for name in ("a.png", "sub/gray.png"):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(cli / name)))


def test_large_images_are_segmented_at_the_network_size_and_oversized_ones_rejected(exported, tmp_path):
    from mcof_tf.inference import Predictor

    predictor = Predictor(exported["v1"], max_side=32)
    image = np.zeros((60, 90, 3), np.uint8)
    image[10:50, 20:70] = 255  # a bright rectangle: class 1 for the tiny model
    whole = predictor.probabilities(image).argmax(-1)  # full-resolution probabilities (the old way)
    labels = predictor.labels(image)  # at 32 px, labels scaled up: bounded memory
    assert labels.shape == (60, 90) and labels.dtype == np.uint8
    assert (labels == whole).mean() > 0.9 and set(np.unique(labels)) == set(np.unique(whole))
    # over the pixel bound: rejected from the header, before decoding (predict counts it in rejected.jsonl)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(big)
    with pytest.raises(RejectedInput, match="over the bound of 4,096 pixels"):
        decode_image(big.read_bytes(), "big.png", max_pixels=64 * 64)
