"""The one training routine: 2 replicas (2 logical CPUs), loss falls, resume after an interruption."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mcof_tf import training

pytestmark = pytest.mark.slow  # end-to-end runs: pytest -m "not slow" skips them


def _cfg(tiny_cfg, network, lr, replicas=2):
    """Two replicas where the test is about the multi-device path; one elsewhere (a 2-replica trace
    costs twice the time of a one-device one)."""
    tiny_cfg.model.width = 0.25
    tiny_cfg.model.dropout = 0.0
    tiny_cfg.model.batch_norm = True
    tiny_cfg.model.max_regions = 160
    tiny_cfg.model.region_fc = 64
    tiny_cfg.input.min_scale = tiny_cfg.input.max_scale = 1.0
    tiny_cfg.input.flip = False
    tiny_cfg.train.devices = ["/cpu:0", "/cpu:1"][:replicas]
    stage = getattr(tiny_cfg.train, network)
    stage.batch_size, stage.learning_rate = 4, lr
    return tiny_cfg


def _preview_events(log_dir):
    """(tag, epoch, summary value) of every image preview ImagePreviews wrote under `log_dir`."""
    for path in tf.io.gfile.glob(str(log_dir / "previews" / "*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                yield v.tag, event.step, v


@pytest.mark.parametrize("network, lr", [("cam", 0.02), ("regionnet", 0.02), ("pixelnet", 0.05)])
def test_loss_falls_on_a_tiny_batch_with_two_replicas(network, lr, labelled_records, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, network, lr)
    strategy = training.make_strategy(cfg.train.devices)
    assert strategy.num_replicas_in_sync == 2
    model = training.train(
        network,
        labelled_records,
        str(tmp_path),
        cfg,
        7,
        strategy=strategy,
        epochs=6,
        steps_per_epoch=5,
        verbose=0,
    )
    curve = model.history.history["loss"]  # per-epoch means
    assert curve[-1] < 0.8 * curve[0], (network, curve)
    assert os.path.exists(tmp_path / training.MODEL_FILE)
    assert os.listdir(tmp_path / "logs")  # TensorBoard event files
    # image previews after the last epoch: image | labels | output, side by side
    images = {
        tag: (step, tf.io.decode_png(tf.make_ndarray(v.tensor)[2]).shape)
        for tag, step, v in _preview_events(tmp_path / "logs")
    }
    assert len(images) == 3 and all(t.startswith(f"{network}/") for t in images)
    for step, (h, w, c) in images.values():
        assert step == 6 and c == 3 and w > h  # three panels wide
    # the classifier runs at 10x (bias 20x) the base learning rate
    mult = model.optimizer.multipliers
    assert sorted(mult.values()) == [10.0, 20.0]


@pytest.fixture(scope="module")
def uninterrupted(labelled_records, tmp_path_factory):
    """PixelNet trained 4 epochs x 2 steps on 2 replicas without a stop: the run a resumed training and
    a same-seed one must reproduce."""
    from conftest import tiny_config

    cfg = _cfg(tiny_config(), "pixelnet", 0.01)
    folder = str(tmp_path_factory.mktemp("uninterrupted"))
    return training.train(
        "pixelnet", labelled_records, folder, cfg, 7, epochs=4, steps_per_epoch=2, verbose=0
    )


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")


def test_training_resumes_from_its_backup(labelled_records, tiny_cfg, tmp_path, uninterrupted):
    cfg = _cfg(tiny_cfg, "pixelnet", 0.01)
    cfg.train.backup_seconds = 0  # a backup after every epoch: these take milliseconds
    with pytest.raises(KeyboardInterrupt):
        training.train(
            "pixelnet",
            labelled_records,
            str(tmp_path),
            cfg,
            7,
            epochs=4,
            steps_per_epoch=2,
            callbacks=[_Interrupt()],
            verbose=0,
        )
    assert os.listdir(tmp_path / "backup") and not os.path.exists(tmp_path / training.MODEL_FILE)
    model = training.train(
        "pixelnet", labelled_records, str(tmp_path), cfg, 7, epochs=4, steps_per_epoch=2, verbose=0
    )
    assert model.history.epoch == [2, 3]  # epochs 0-1 were not redone
    assert int(model.optimizer.iterations.numpy()) == 8  # 4 epochs x 2 steps in all
    assert os.path.exists(tmp_path / training.MODEL_FILE)
    # the resumed run saw the batches the uninterrupted one saw, with the same optimizer state
    for a, b in zip(model.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_backups_are_at_most_so_many_seconds_apart(tmp_path):
    """TimedBackup writes at an epoch's end once `seconds` passed since its last backup (or the start),
    recording the epochs done, from which a resumed run goes on."""
    now = [0.0]
    backup = training.TimedBackup(str(tmp_path / "backup"), 25, clock=lambda: now[0])
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup.set_model(model)
    backup.on_train_begin()
    done = []
    for epoch in range(6):
        now[0] += 10  # each epoch takes 10 s
        backup.on_epoch_end(epoch)
        done.append(training._backed_up_epochs(str(tmp_path / "backup")))
    assert done == [0, 0, 3, 3, 3, 6]  # backups at 30 s and 60 s
    assert (tmp_path / "backup" / "latest.weights.h5").exists()
    every = training.TimedBackup(str(tmp_path / "every"), 0, clock=lambda: now[0])
    every.set_model(model)
    every.on_train_begin()
    every.on_epoch_end(0)  # no time passed: 0 s means every epoch
    assert training._backed_up_epochs(str(tmp_path / "every")) == 1


def test_previews_are_at_most_so_many_seconds_apart_and_follow_the_last_epoch(
    labelled_records, tiny_cfg, tmp_path
):
    """ImagePreviews writes its images at an epoch's end once `seconds` passed since the last preview (or
    the start), and after the last epoch whatever the time."""
    from mcof_tf.models.deeplab import deeplab_largefov

    now = [0.0]
    model = deeplab_largefov(7, tiny_cfg.model.backbone, width=0.125)
    previews = training.ImagePreviews(
        "pixelnet", labelled_records, 7, tiny_cfg, str(tmp_path), seconds=25, clock=lambda: now[0]
    )
    previews.set_model(model)
    previews.set_params({"epochs": 7})
    previews.on_train_begin()
    for epoch in range(7):
        now[0] += 10  # each epoch takes 10 s
        previews.on_epoch_end(epoch)
    steps = {step for tag, step, _ in _preview_events(tmp_path) if tag.startswith("pixelnet/")}
    assert steps == {3, 6, 7}  # at 30 s and 60 s, then the last epoch


def test_warm_start_begins_from_the_given_model(labelled_records, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, "pixelnet", 0.01, replicas=1)
    first = training.train(
        "pixelnet", labelled_records, str(tmp_path / "a"), cfg, 7, epochs=1, steps_per_epoch=1, verbose=0
    )
    seen = {}

    class Peek(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["kernel"] = self.model.get_layer("fc8").get_weights()[0].copy()

    training.train(
        "pixelnet",
        labelled_records,
        str(tmp_path / "b"),
        cfg,
        7,
        epochs=1,
        steps_per_epoch=1,
        init_from=str(tmp_path / "a" / training.MODEL_FILE),
        callbacks=[Peek()],
        verbose=0,
    )
    np.testing.assert_array_equal(seen["kernel"], first.get_layer("fc8").get_weights()[0])


def test_a_regionnet_starts_from_the_backbone_of_a_pixelnet(labelled_records, tiny_cfg, tmp_path):
    """backbone_from (train.regionnet_backbone: pixelnet): the RegionNet's first step sees the
    PixelNet's backbone weights, and its record names where they came from."""
    cfg = _cfg(tiny_cfg, "pixelnet", 0.01)
    cfg.train.regionnet.batch_size, cfg.train.devices = 4, ["/cpu:0"]
    pixelnet = training.train(
        "pixelnet", labelled_records, str(tmp_path / "p"), cfg, 7, epochs=1, steps_per_epoch=1, verbose=0
    )
    seen = {}

    class Peek(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["conv"] = self.model.get_layer("block4_conv2").get_weights()[0].copy()

    source = str(tmp_path / "p" / training.MODEL_FILE)
    training.train(
        "regionnet",
        labelled_records,
        str(tmp_path / "r"),
        cfg,
        7,
        epochs=1,
        steps_per_epoch=1,
        backbone_from=source,
        callbacks=[Peek()],
        verbose=0,
    )
    np.testing.assert_array_equal(seen["conv"], pixelnet.get_layer("block4_conv2").get_weights()[0])
    assert json.loads((tmp_path / "r" / "train.json").read_text())["backbone_from"] == source


def test_warm_started_networks_train_for_warm_epochs_at_warm_learning_rate_and_record_their_time(
    labelled_records, tiny_cfg, tmp_path
):
    cfg = _cfg(tiny_cfg, "pixelnet", 0.01, replicas=1)
    cfg.train.steps_per_epoch = 1
    cfg.train.pixelnet.epochs, cfg.train.pixelnet.warm_epochs = 2, 1
    cfg.train.pixelnet.warm_learning_rate = 0.03
    training.train("pixelnet", labelled_records, str(tmp_path / "a"), cfg, 7, verbose=0)
    training.train(
        "pixelnet",
        labelled_records,
        str(tmp_path / "b"),
        cfg,
        7,
        verbose=0,
        init_from=str(tmp_path / "a" / training.MODEL_FILE),
    )
    runs = {k: json.loads((tmp_path / k / "train.json").read_text()) for k in "ab"}
    assert (runs["a"]["epochs"], runs["a"]["learning_rate"], runs["a"]["warm_start"]) == (2, 0.01, False)
    assert (runs["b"]["epochs"], runs["b"]["learning_rate"], runs["b"]["warm_start"]) == (1, 0.03, True)
    assert all(r["seconds"] > 0 for r in runs.values())


def test_xla_is_used_where_every_layer_supports_it(tiny_cfg):
    tiny_cfg.train.jit_compile = True
    tiny_cfg.model.max_regions, tiny_cfg.model.region_fc = 8, 8
    strategy = training.make_strategy(["/cpu:0"])
    assert training.compiled_network("pixelnet", tiny_cfg, 4, 10, strategy).jit_compile is True
    assert training.compiled_network("regionnet", tiny_cfg, 4, 10, strategy).jit_compile is False


def test_batch_norm_is_synchronized_only_across_several_replicas(tiny_cfg):
    tiny_cfg.model.batch_norm = True

    def synchronized(strategy):
        model = training.compiled_network("pixelnet", tiny_cfg, 4, 10, strategy)
        flags = {
            layer.synchronized for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        }
        assert flags, "the config asks for batch norm"
        return flags

    assert synchronized(training.make_strategy(["/cpu:0", "/cpu:1"])) == {True}
    assert synchronized(training.make_strategy(["/cpu:0"])) == {False}
    assert synchronized(training.make_strategy()) == {False}


def test_sgd_multipliers_scale_the_step():
    v = keras.Variable(np.ones(2, np.float32), name="k")
    opt = training.SGDWithMultipliers({v.path: 10.0}, learning_rate=0.1)
    opt.apply([tf.constant([1.0, 2.0])], [v])
    np.testing.assert_allclose(v.numpy(), [1 - 0.1 * 10 * 1, 1 - 0.1 * 10 * 2], rtol=1e-6)


def test_same_seed_gives_the_same_weights(labelled_records, tiny_cfg, tmp_path, uninterrupted):
    """Reproducibility on CPU: data order, augmentation and initialisation follow the config's seed
    (exact equality here; tf.data streams are stateless, see mcof_tf/data/pipeline.py)."""
    cfg = _cfg(tiny_cfg, "pixelnet", 0.01)
    a = uninterrupted
    b = training.train(
        "pixelnet", labelled_records, str(tmp_path / "b"), cfg, 7, epochs=4, steps_per_epoch=2, verbose=0
    )
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    cfg.experiment.seed = 1
    c = training.train(
        "pixelnet", labelled_records, str(tmp_path / "c"), cfg, 7, epochs=4, steps_per_epoch=2, verbose=0
    )
    assert any(not np.array_equal(x, y) for x, y in zip(a.get_weights(), c.get_weights()))


def test_label_shares_count_what_each_loss_sees(labelled_records, tiny_cfg):
    """PixelNet: the labelled pixels; RegionNet: one majority label per superpixel below max_regions."""
    from mcof_tf.data import records

    recs = list(records.read_records(labelled_records))
    pixels = sum(np.bincount(r.labels[r.labels != 255], minlength=7)[:7] for r in recs)
    assert training.label_shares("pixelnet", labelled_records, tiny_cfg, 7) == pytest.approx(
        pixels / pixels.sum(), abs=1e-7
    )
    regions = np.zeros(7)
    for r in recs:
        for k in range(min(r.num_superpixels, tiny_cfg.model.max_regions)):
            lab = r.labels[(r.superpixels == k) & (r.labels != 255)]
            if lab.size:
                regions[np.bincount(lab, minlength=7).argmax()] += 1
    assert training.label_shares("regionnet", labelled_records, tiny_cfg, 7) == pytest.approx(
        regions / regions.sum(), abs=1e-7
    )
    with pytest.raises(ValueError, match="tags"):
        training.label_shares("cam", labelled_records, tiny_cfg, 7)


def test_prior_offsets_undo_a_class_balanced_shift():
    """A loss weighting class c by share_c ** -b shifts the learned logits by -b log share_c; the
    offsets add it back. An absent class gets the rarest present class's offset."""
    shares = np.array([0.8, 0.15, 0.05, 0.0])
    off = training.prior_offsets(shares, 0.5)
    np.testing.assert_allclose(off, 0.5 * np.log([0.8, 0.15, 0.05, 0.05]), rtol=1e-6)
    true_logits = np.log([0.6, 0.3, 0.1, 1e-9])  # background is the right answer
    balanced = true_logits - 0.5 * np.log(np.maximum(shares, 0.05))  # what the weighted loss learns
    assert balanced.argmax() == 1 and (balanced + off).argmax() == 0
    np.testing.assert_allclose(training.prior_offsets(shares, 0.0), 0.0)


def test_recorded_prior_offsets_scale_the_recorded_shares(tmp_path):
    import json

    (tmp_path / "train.json").write_text(json.dumps({"label_shares": [0.8, 0.2], "class_balance": 0.5}))
    model = str(tmp_path / "model.keras")
    full = training.recorded_prior_offsets(model)
    np.testing.assert_allclose(full, 0.5 * np.log([0.8, 0.2]), rtol=1e-6)
    np.testing.assert_allclose(training.recorded_prior_offsets(model, 0.5), full / 2, rtol=1e-6)
    for strength in (-0.1, 1.5):  # the one check behind the config, relabel and export
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            training.recorded_prior_offsets(model, strength)


def test_a_training_step_is_traced_once(labelled_records, tiny_cfg, tmp_path):
    """The optimizer's slots and the metrics' counts exist before the first step: a tf.function whose
    first trace creates variables is traced a second time, which doubled every stage's start-up."""
    made_in_a_trace = []

    def creator(next_creator, **kwargs):
        if tf.inside_function():
            made_in_a_trace.append(kwargs.get("name"))
        return next_creator(**kwargs)

    for network in ("cam", "regionnet", "pixelnet"):  # one device: Keras builds nothing ahead there
        with tf.variable_creator_scope(creator):
            training.train(
                network, labelled_records, str(tmp_path / network), tiny_cfg, 7, epochs=1, steps_per_epoch=1
            )
    assert made_in_a_trace == []


@pytest.mark.parametrize("network", ["cam", "regionnet", "pixelnet"])
def test_training_inputs_run_without_the_autotuning_model(network, labelled_records, tiny_cfg):
    """The training input (and the datasets it is built on) has tf.data's autotuning model off: its
    thread can hold up the end of `fit` for up to a minute (`pipeline.NO_AUTOTUNE_MODEL`); batches still
    come, of the configured size."""
    ds = training.input_dataset(network, labelled_records, tiny_cfg, 7, 2)
    assert ds.options().autotune.enabled is False
    inputs, _ = next(iter(ds))
    image = inputs["image"] if isinstance(inputs, dict) else inputs
    assert image.shape[0] == 2
