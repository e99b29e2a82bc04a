"""Mixed precision chosen by the hardware: the selection rule, per-stage policies, every training path
under each policy this CPU can run, and the export of a bf16-trained PixelNet (float32 outputs)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcof_tf import export, precision, training
from mcof_tf.config import ConfigError, load_config


@pytest.mark.parametrize(
    "setting, flags, gpus, want",
    [
        ("auto", {"avx512f", "avx512_bf16"}, [], "mixed_bfloat16"),  # AMD EPYC (Zen 4), Cooper Lake
        ("auto", {"avx512f", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),  # Sapphire Rapids
        ("auto", {"avx512f", "avx2"}, [], "float32"),  # AVX-512 Xeon without bf16: emulated, slower
        ("auto", set(), [], "float32"),  # flags unreadable
        ("auto", set(), [(8, 0)], "mixed_bfloat16"),  # A100
        ("auto", {"avx512_bf16"}, [(9, 0), (8, 6)], "mixed_bfloat16"),  # the GPUs decide, not the CPU
        ("auto", {"avx512_bf16"}, [(7, 0)], "mixed_float16"),  # V100: fp16 tensor cores
        ("auto", {"avx512_bf16"}, [(8, 0), (7, 5)], "mixed_float16"),  # the oldest GPU decides
        ("auto", set(), [(6, 1)], "float32"),  # Pascal
        ("float32", {"avx512_bf16"}, [(8, 0)], "float32"),  # an explicit setting wins
        ("mixed_float16", set(), [], "mixed_float16"),
    ],
)
def test_the_policy_follows_the_hardware(setting, flags, gpus, want):
    policy, why = precision.choose_policy(setting, flags, gpus)
    assert policy == want and why


def test_unknown_policies_are_refused():
    with pytest.raises(ValueError, match="mixed_precision"):
        precision.choose_policy("bfloat16")
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        load_config("synthetic", ["train.mixed_precision=fp16"])
    assert load_config("synthetic").train.mixed_precision == "auto"


@pytest.mark.parametrize(
    "setting, policy, on_gpus, flags, want",
    [
        ("auto", "mixed_bfloat16", False, {"avx512_bf16", "amx_bf16", "amx_tile"}, False),  # Xeon, AMX
        ("auto", "float32", False, {"amx_tile"}, False),  # oneDNN won there in float32 too
        ("auto", "mixed_bfloat16", False, {"avx512_bf16"}, True),  # EPYC: XLA as fast as float32
        ("auto", "float32", False, {"avx2"}, True),
        ("auto", "mixed_bfloat16", True, {"amx_bf16"}, True),  # training on GPUs: XLA
        (True, "mixed_bfloat16", False, {"amx_bf16"}, True),  # an explicit setting wins
        (False, "float32", True, set(), False),
    ],
)
def test_xla_follows_the_hardware(setting, policy, on_gpus, flags, want):
    jit, why = precision.choose_jit(setting, policy, on_gpus, flags)
    assert jit is want and why


@pytest.mark.parametrize(
    "setting, on_gpus, racy, want",
    [
        ("auto", False, True, True),  # RegionNet on the CPU: its RoI pooling gradient races without it
        ("auto", False, False, False),  # CAM, PixelNet: nothing races, and Keras would turn XLA off
        ("auto", True, True, False),  # GPUs: TensorFlow has no deterministic kernel for that gradient
        (True, True, False, True),  # an explicit setting wins
        (False, False, True, False),
    ],
)
def test_op_determinism_follows_the_network_and_the_hardware(setting, on_gpus, racy, want):
    on, why = precision.choose_determinism(setting, on_gpus, racy)
    assert on is want and why


def test_deterministic_takes_true_false_or_auto():
    assert load_config("synthetic").train.deterministic == "auto"
    assert load_config("voc2012_vgg16").train.deterministic == "auto"
    assert load_config("synthetic", ["train.deterministic=false"]).train.deterministic is False
    with pytest.raises(ConfigError, match="train.deterministic"):
        load_config("synthetic", ["train.deterministic=sometimes"])
    with pytest.raises(ValueError, match="deterministic"):
        precision.choose_determinism("yes", False, True)


_ROI_GRADIENT = """
import os, sys
import numpy as np
from mcof_tf import precision
import tensorflow as tf

rng = np.random.default_rng(0)
n = 1500  # overlapping boxes on 16 feature maps: many add into the same pixels
y, x = rng.uniform(0, 0.9, n), rng.uniform(0, 0.9, n)
boxes = tf.constant(np.stack([y, x, y + 0.1, x + 0.1], 1), tf.float32)
index = tf.constant(rng.integers(0, 16, n), tf.int32)
grads = tf.constant(rng.normal(size=(n, 8, 8, 64)), tf.float32)


def gradient():  # what RegionNet's RoI pooling (crop_and_resize) sends back into the feature map
    return tf.raw_ops.CropAndResizeGradImage(
        grads=grads, boxes=boxes, box_ind=index, image_size=[16, 14, 14, 64], T=tf.float32
    ).numpy()


with precision.op_determinism(sys.argv[1] == "on"):
    first = gradient()
    print("same" if all(np.array_equal(first, gradient()) for _ in range(5)) else "differs")
print("lifted" if not precision.determinism_enabled() else "still on")
"""


def test_op_determinism_makes_the_roi_pooling_gradient_exact_on_several_threads():
    """TensorFlow's CPU kernel shards the boxes over its threads, which add into shared pixels without
    synchronisation; under `op_determinism` (what `train.deterministic: auto` puts RegionNet's training
    in on the CPU) one thread sums them, so five runs agree to the bit, and it is lifted after. 4
    threads in a child process: the suite's own workers run one thread each, where the race cannot
    happen."""
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "4"}
    run = subprocess.run(  # from the repository root: `-c` imports this checkout's mcof_tf
        [sys.executable, "-c", _ROI_GRADIENT, "on"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-2:] == ["same", "lifted"]


def test_jit_compile_takes_true_false_or_auto():
    assert load_config("synthetic_vgg16").train.jit_compile == "auto"
    assert load_config("voc2012_vgg16").train.jit_compile == "auto"  # the default
    assert load_config("synthetic").train.jit_compile is False
    assert load_config("synthetic", ["train.jit_compile=true"]).train.jit_compile is True
    assert load_config("synthetic", ["train.jit_compile=auto"]).train.jit_compile == "auto"
    for bad in ("always", "[1]", "0.5"):
        with pytest.raises(ConfigError, match="train.jit_compile"):
            load_config("synthetic", [f"train.jit_compile={bad}"])
    with pytest.raises(ValueError, match="jit_compile"):
        precision.choose_jit("on", "float32", False)
    # a value no member of bool | str takes is named against both, not only the last one tried
    with pytest.raises(ConfigError, match="train.jit_compile: expected true/false or a string"):
        load_config("synthetic", ["train.jit_compile=null"])


def test_compiled_networks_take_xla_from_the_cpu(tiny_cfg, caplog, monkeypatch):
    """What compiled_network does with `auto`: the CPU's flags decide XLA, and the log says why."""
    import logging

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(precision, "gpu_capabilities", lambda devices=(): [])
    strategy = training.make_strategy(["/cpu:0"])
    tiny_cfg.train.jit_compile = "auto"
    for flags, want in (({"avx2", "amx_tile"}, False), ({"avx2"}, True)):
        monkeypatch.setattr(precision, "cpu_flags", lambda path="", flags=flags: flags)
        assert training.compiled_network("pixelnet", tiny_cfg, 4, 10, strategy).jit_compile is want
        assert f"train pixelnet: XLA {'on' if want else 'off'} (" in caplog.text
        caplog.clear()


def test_xla_is_reported_off_where_op_determinism_turns_it_off(tiny_cfg, caplog):
    """Keras compiles no model with XLA under TensorFlow's op determinism (train.deterministic: true):
    the log says so instead of "XLA on"."""
    import logging

    caplog.set_level(logging.INFO)
    tiny_cfg.train.jit_compile = True
    strategy = training.make_strategy(["/cpu:0"])
    with precision.op_determinism(True), pytest.warns(UserWarning, match="jit_compile"):
        assert training.compiled_network("pixelnet", tiny_cfg, 4, 10, strategy).jit_compile is False
    assert "train pixelnet: XLA off (Keras turns it off under TensorFlow's op determinism" in caplog.text
    assert training.compiled_network("pixelnet", tiny_cfg, 4, 10, strategy).jit_compile is True


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nflags : x\n")
    assert precision.cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


def test_a_policy_applies_to_its_models_only():
    before = keras.config.dtype_policy().name
    with precision.dtype_policy("mixed_bfloat16"):
        inside = keras.layers.Dense(2)
    after = keras.layers.Dense(2)
    assert inside.dtype_policy.name == "mixed_bfloat16"
    assert after.dtype_policy.name == before == keras.config.dtype_policy().name == "float32"


def _tiny(tiny_cfg, policy):
    cfg = tiny_cfg
    cfg.train.mixed_precision = policy
    cfg.model.width, cfg.model.dropout, cfg.model.max_regions, cfg.model.region_fc = 0.125, 0.0, 160, 32
    cfg.input.min_scale = cfg.input.max_scale = 1.0
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("network", ["cam", "regionnet", "pixelnet"])
def test_every_network_trains_under_each_policy(network, policy, labelled_records, tiny_cfg, tmp_path):
    cfg = _tiny(tiny_cfg, policy)
    model = training.train(
        network, labelled_records, str(tmp_path), cfg, 7, epochs=1, steps_per_epoch=2, verbose=0
    )
    assert model.dtype_policy.name == policy
    assert keras.config.dtype_policy().name == "float32"  # nothing leaks into the next stage
    # loss scaling exactly where fp16 needs it
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert np.isfinite(model.history.history["loss"]).all()
    assert training.read_json(str(tmp_path / "train.json"))["dtype_policy"] == policy
    assert training.read_json(str(tmp_path / "train.json"))["jit_compile"] is bool(model.jit_compile)
    # auto on the CPU: RegionNet under op determinism (its RoI pooling gradient), the others not; and
    # nothing of it left for the next stage
    assert training.read_json(str(tmp_path / "train.json"))["deterministic"] is (network == "regionnet")
    assert not precision.determinism_enabled()
    reloaded = training.load_model(str(tmp_path / training.MODEL_FILE))
    # the saved layers keep their policy (the backbone's convolutions; the classifier is float32)
    convs = [l for l in training.all_layers(reloaded) if isinstance(l, keras.layers.Conv2D)]
    assert convs[0].dtype_policy.name == policy
    batch = next(iter(training.input_dataset(network, labelled_records, cfg, 7, 2)))[0]
    logits = reloaded(batch, training=False)
    assert logits.dtype == tf.float32 and np.isfinite(logits.numpy()).all()  # the classifier is float32


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_the_multi_worker_loop_trains_under_mixed_policies(policy, labelled_records, tiny_cfg, tmp_path):
    """The plain loop the multi-worker path uses (Keras fit is not called there) scales fp16 losses."""
    cfg = _tiny(tiny_cfg, policy)
    strategy = tf.distribute.get_strategy()
    model = training.compiled_network("pixelnet", cfg, 7, 4, strategy)
    before = [w.copy() for w in model.get_weights()]
    ds = training.distributed_input("pixelnet", labelled_records, cfg, 7, 2, strategy)
    training._fit_multi_worker(model, ds, strategy, 2, 2, str(tmp_path / "backup"), 0, str(tmp_path / "logs"))
    after = model.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # it learnt (no skipped steps)


@pytest.mark.slow
def test_a_bf16_trained_pixelnet_exports_with_float32_outputs(labelled_records, tiny_cfg, tmp_path):
    cfg = _tiny(tiny_cfg, "mixed_bfloat16")
    model = training.train(
        "pixelnet", labelled_records, str(tmp_path / "t"), cfg, 7, epochs=1, steps_per_epoch=2, verbose=0
    )
    classes = [f"c{i}" for i in range(7)]
    path = export.export_saved_model(
        str(tmp_path / "t" / training.MODEL_FILE), str(tmp_path / "sm"), classes, cfg.input.mean_rgb
    )
    served = tf.saved_model.load(path).signatures["predict_logits"]
    assert {k: v.dtype for k, v in served.structured_outputs.items()} == {
        "logits": tf.float32,
        "probabilities": tf.float32,
    }
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, 40, 56, 3)).astype(np.float32)
    got = served(images=tf.constant(image))["logits"].numpy()
    want = model(image - np.asarray(cfg.input.mean_rgb, np.float32), training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
