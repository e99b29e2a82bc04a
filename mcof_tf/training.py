"""ONE training routine for the three networks (CAM, RegionNet, PixelNet).

What differs per network is a `Network` entry (how to build it, its loss, metrics, classifier layer and
which fields of a batch it reads); everything else is shared: SGD with momentum 0.9 and weight decay
(L2 on kernels, Caffe convention), the classifier layer at 10x learning rate (bias 20x) as in the
DeepLab solvers, a poly schedule, `tf.distribute.MirroredStrategy` (every local GPU, else the CPU),
optional mixed precision, checkpoints that resume after a kill (`keras.callbacks.BackupAndRestore`),
TensorBoard scalars (loss, learning rate, mIoU where the labels allow), TensorBoard images of a few
fixed training images as the network learns them (`ImagePreviews`) and a progress bar.

Layout of a stage folder:
    <dir>/backup/      BackupAndRestore state; a killed run resumes from it
    <dir>/logs/        TensorBoard
    <dir>/model.keras  the trained model, written to a temporary name and renamed last
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import keras
import numpy as np
import tensorflow as tf

from mcof_tf import fileio, precision, usage
from mcof_tf.config import Config
from mcof_tf.data.pipeline import dataset_from_config, plain
from mcof_tf.data.records import MANIFEST, count_records, decode_example, superpixel_counts
from mcof_tf.fileio import file_digest, read_json, write_json_atomic
from mcof_tf.models import losses
from mcof_tf.models.backbones import copy_shared_layers
from mcof_tf.models.cam import CLASSIFIER as CAM_CLASSIFIER
from mcof_tf.models.cam import build_cam
from mcof_tf.models.deeplab import CLASSIFIER as PIXEL_CLASSIFIER
from mcof_tf.models.deeplab import deeplab_largefov
from mcof_tf.models.regionnet import CLASSIFIER as REGION_CLASSIFIER
from mcof_tf.models.regionnet import build_regionnet, region_labels

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
NetworkName = Literal["cam", "regionnet", "pixelnet"]  # the three networks of NETWORKS


@keras.saving.register_keras_serializable(package="mcof_tf")
class SGDWithMultipliers(keras.optimizers.SGD):
    """SGD whose gradients are scaled per variable before the update: Caffe's `lr_mult`.

    With momentum SGD, scaling a variable's gradient by m is the same as scaling its learning rate by m.
    `multipliers` maps variable paths (e.g. "fc8/kernel") to factors; other variables use 1.
    """

    def __init__(self, multipliers: Optional[dict] = None, **kwargs):
        super().__init__(**kwargs)
        self.multipliers = dict(multipliers or {})

    def apply(self, grads, trainable_variables=None):
        variables = trainable_variables if trainable_variables is not None else self._trainable_variables
        grads = [
            g if g is None or v.path not in self.multipliers else g * self.multipliers[v.path]
            for g, v in zip(grads, variables)
        ]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        return {**super().get_config(), "multipliers": self.multipliers}


@dataclass(frozen=True)
class Network:
    """What one of the three networks needs from the shared routine."""

    name: str
    build: Callable[..., keras.Model]  # (num_classes, cfg) → model
    loss: Callable[..., keras.losses.Loss]  # (cfg) → loss
    metrics: Callable[[int], list]  # num_classes → metrics
    classifier: str  # layer with the 10x / 20x learning rate
    batch: Callable[..., tuple]  # (pipeline batch dict, num_classes, cfg) → (inputs, targets)
    maps: tuple[str, ...]  # the records' per-pixel maps `batch` reads (the others are not decoded)
    # its gradient has an op whose CPU kernel sums with racing threads (RegionNet's RoI pooling,
    # crop_and_resize): train.deterministic `auto` runs it under TensorFlow's op determinism
    racy_on_cpu: bool = False


def _backbone(cfg: Config) -> dict:
    """The builder arguments all three networks share: their backbone and its regularisation."""
    m = cfg.model
    return {
        "backbone": m.backbone,
        "width": m.width,
        "weights": m.weights,
        "weight_decay": cfg.train.weight_decay,
        "batch_norm": m.batch_norm,
        "feature_norm": m.feature_norm,
    }


def _build_cam(num_classes, cfg: Config):
    return build_cam(num_classes, **_backbone(cfg))


def _build_regionnet(num_classes, cfg: Config):
    m = cfg.model
    return build_regionnet(
        num_classes,
        **_backbone(cfg),
        max_regions=m.max_regions,
        pool_size=m.roi_pool_size,
        sampling_ratio=m.roi_sampling,
        fc_units=m.region_fc,
        dropout=m.dropout,
    )


def _build_pixelnet(num_classes, cfg: Config):
    m = cfg.model
    return deeplab_largefov(num_classes, **_backbone(cfg), dropout=m.dropout, fc6_dilation=m.fc6_dilation)


def _cam_batch(b, num_classes, cfg: Config):
    return b["image"], b["tags"]


def _regionnet_batch(b, num_classes, cfg: Config):
    targets = region_labels(b["labels"], b["superpixels"], cfg.model.max_regions, num_classes)
    return {"image": b["image"], "superpixels": b["superpixels"]}, targets


def _pixelnet_batch(b, num_classes, cfg: Config):
    return b["image"], b["labels"]


def _masked_ce(cfg: Config):
    return losses.MaskedCrossEntropy(
        class_balance=cfg.train.class_balance, upsample=cfg.train.upsample_logits
    )


def _tag_bce(cfg: Config):
    return losses.TagCrossEntropy(class_balance=cfg.train.class_balance)


def _tag_metrics(num_classes):
    return [
        keras.metrics.BinaryAccuracy(threshold=0.0, name="tag_accuracy"),
        losses.TagF1(num_classes=num_classes),
    ]


def _segmentation_metrics(num_classes):
    return [losses.SegmentationMeanIoU(num_classes)]


# Named functions, not lambdas: tf.data's autograph re-reads a function's source by line, and
# several lambdas on one line (or a file edited under a running job) make it convert the wrong one.
NETWORKS = {
    "cam": Network("cam", _build_cam, _tag_bce, _tag_metrics, CAM_CLASSIFIER, _cam_batch, ("image",)),
    "regionnet": Network(
        "regionnet",
        _build_regionnet,
        _masked_ce,
        _segmentation_metrics,
        REGION_CLASSIFIER,
        _regionnet_batch,
        ("image", "superpixels", "labels"),
        racy_on_cpu=True,
    ),
    "pixelnet": Network(
        "pixelnet",
        _build_pixelnet,
        _masked_ce,
        _segmentation_metrics,
        PIXEL_CLASSIFIER,
        _pixelnet_batch,
        ("image", "labels"),
    ),
}


def make_strategy(devices: Sequence[str] = ()) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of several workers; else
    MirroredStrategy over `devices`, or over every local GPU; TensorFlow's default strategy when
    that is a single device (the CPU when there is no GPU).

    One device needs no cross-device machinery (the default strategy was also a little faster on
    the paper config: 0.68 vs 0.66 of the matmul ceiling, README benchmarks).

    One strategy per device set and process: the MCOF loop trains several networks in one process,
    and a second MirroredStrategy over the same devices reuses collective-op keys of the first
    (measured: "Shape mismatch in the collective instance" when CAM then RegionNet trained).
    """
    if cluster_size() > 1:
        return _multi_worker()
    if devices:
        return _strategy(tuple(devices)) if len(devices) > 1 else tf.distribute.OneDeviceStrategy(devices[0])
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return _strategy(tuple(gpus)) if len(gpus) > 1 else tf.distribute.get_strategy()


@functools.cache
def _strategy(devices: tuple) -> tf.distribute.Strategy:
    return tf.distribute.MirroredStrategy(list(devices))


def cluster_size() -> int:
    """Number of training processes TF_CONFIG describes (1 without TF_CONFIG)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker")) or 1


@functools.cache
def _multi_worker() -> tf.distribute.Strategy:
    # Collective ops are configured when the strategy is made: a multi-worker program calls
    # make_strategy() before other TF work (as tests/test_multiworker.py's worker does).
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs (the chief, or worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        not has_chief and resolver.task_type == "worker" and resolver.task_id == 0
    )


def input_dataset(
    network: NetworkName,
    records: str,
    cfg: Config,
    num_classes: int,
    batch_size: int,
    shard: tuple[int, int] = (1, 0),
) -> tf.data.Dataset:
    """The training input of `network`: augmented batches as (inputs, targets); `shard`: (number of
    input pipelines, this one's index) when several workers read the records."""
    net = NETWORKS[network]
    ds = dataset_from_config(
        records,
        num_classes,
        cfg.input,
        training=True,
        batch_size=batch_size,
        seed=cfg.experiment.seed,
        shard=shard,
        maps=net.maps,
    )
    ds = ds.map(
        plain(functools.partial(net.batch, num_classes=num_classes, cfg=cfg)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def distributed_input(
    network: NetworkName,
    records: str,
    cfg: Config,
    num_classes: int,
    global_batch: int,
    strategy: tf.distribute.Strategy,
    skip_steps: int = 0,
):
    """`input_dataset` built by the strategy itself, once per input pipeline (worker), sharded by
    worker and batched per replica (what multi-worker training needs; one pipeline on one machine).
    `skip_steps`: global steps already trained (a resumed run continues the same stream)."""

    def fn(ctx: tf.distribute.InputContext):
        ds = input_dataset(
            network,
            records,
            cfg,
            num_classes,
            ctx.get_per_replica_batch_size(global_batch),
            (ctx.num_input_pipelines, ctx.input_pipeline_id),
        )
        return ds.skip(skip_steps * ctx.num_replicas_in_sync // ctx.num_input_pipelines)

    return strategy.distribute_datasets_from_function(fn)


def compiled_network(
    network: NetworkName,
    cfg: Config,
    num_classes: int,
    total_steps: int,
    strategy: tf.distribute.Strategy,
    learning_rate: Optional[float] = None,
) -> keras.Model:
    """Build `network` under `strategy` and compile it with the shared optimizer, loss and metrics
    (`learning_rate`: the schedule's start, by default the stage's `learning_rate`)."""
    net = NETWORKS[network]
    stage = getattr(cfg.train, network)
    policy, why = precision.resolve(cfg.train.mixed_precision, cfg.train.devices)
    log.info(f"train {network}: dtype policy {policy} ({why})")
    keras.utils.set_random_seed(cfg.experiment.seed)
    # the policy is the model's own (saved with it); compile adds loss scaling under mixed_float16
    with strategy.scope(), precision.dtype_policy(policy):
        model = net.build(num_classes, cfg)
        classifier = model.get_layer(net.classifier)
        mult = cfg.train.classifier_lr_mult
        schedule = keras.optimizers.schedules.PolynomialDecay(
            learning_rate or stage.learning_rate,
            decay_steps=max(total_steps, 1),
            end_learning_rate=0.0,
            power=cfg.train.poly_power,
        )
        optimizer = SGDWithMultipliers(
            {classifier.kernel.path: mult, classifier.bias.path: 2 * mult},
            learning_rate=schedule,
            momentum=cfg.train.momentum,
        )
        jit, why = precision.resolve_jit(cfg.train.jit_compile, policy, cfg.train.devices)
        if jit and not all(layer.supports_jit for layer in all_layers(model)):
            jit, why = False, "a layer of the network does not support it"
        model.compile(
            optimizer=optimizer, loss=net.loss(cfg), metrics=net.metrics(num_classes), jit_compile=jit
        )
        if jit and not model.jit_compile:
            why = "Keras turns it off under TensorFlow's op determinism (train.deterministic)"
        log.info(f"train {network}: XLA {'on' if model.jit_compile else 'off'} ({why})")
        # The optimizer's slots made now: a tf.function whose first trace creates variables is traced
        # a second time, which doubled every training stage's start-up (Keras builds them first only
        # under a non-default strategy).
        model.optimizer.build(model.trainable_variables)
    return model


class TimedBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, writing its backup at the end of an epoch only once `seconds` have
    passed since the last one (0: every epoch). A backup of the small default networks took 0.15 s, a
    tenth of a PixelNet epoch, and the default run trains 240 epochs; a kill now loses at most
    `seconds` of training, and resumes at the last backed-up epoch as before."""

    def __init__(self, backup_dir: str, seconds: float, clock: Callable[[], float] = time.monotonic):
        # double_checkpoint: a kill while the backup is being written leaves the previous one usable
        super().__init__(backup_dir, double_checkpoint=True)
        self.seconds, self.clock = seconds, clock

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.last = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        if self.clock() - self.last >= self.seconds:
            super().on_epoch_end(epoch, logs)
            self.last = self.clock()


class ImagePreviews(keras.callbacks.Callback):
    """TensorBoard images (`logs/previews`) of the first `count` training images at an epoch's end once
    `seconds` have passed since the last (or the start; 0: every epoch), and after the last epoch: the
    image | the labels it learns from | the network's current output (CAM: the tagged classes'
    strongest CAM as a heat map; RegionNet, PixelNet: their label map, no tag rule). By time, as the
    backups: a preview of the default networks costs 0.2-0.3 s (eager calls), and every 5 epochs made
    48 of them in the default run, the CAM's every 5-10 s."""

    def __init__(
        self,
        network: NetworkName,
        records: str,
        num_classes: int,
        cfg: Config,
        log_dir: str,
        seconds: float = 60.0,
        count: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        ds = dataset_from_config(records, num_classes, cfg.input, training=False, batch_size=1, repeat=False)
        self.examples = list(ds.take(count))
        self.network, self.max_regions = network, cfg.model.max_regions
        self.seconds, self.clock = seconds, clock
        self.mean = np.asarray(cfg.input.mean_rgb, np.float32)
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "previews"))

    def on_train_begin(self, logs=None):
        self.last = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        if self.clock() - self.last < self.seconds and epoch + 1 != self.params.get("epochs"):
            return
        with self.writer.as_default():
            for b in self.examples:
                tf.summary.image(
                    f"{self.network}/{b['id'][0].numpy().decode()}", self._panel(b)[None], step=epoch + 1
                )
        self.writer.flush()
        self.last = self.clock()

    def _panel(self, b) -> np.ndarray:
        from mcof_tf.data.voc import voc_palette
        from mcof_tf.method.labels import paint

        palette = voc_palette()
        image = np.clip(b["image"][0].numpy() + self.mean, 0, 255).astype(np.uint8)
        if self.network == "cam":
            from mcof_tf.models.cam import cam_extractor, class_activation_maps

            kernel = self.model.get_layer(CAM_CLASSIFIER).kernel
            cams = class_activation_maps(cam_extractor(self.model), kernel, b["image"])[0].numpy()
            tagged = b["tags"][0].numpy() > 0
            heat = cams[..., tagged].max(-1) if tagged.any() else cams.max(-1)
            out = heat[..., None] * np.array([255, 160, 0]) + (1 - heat[..., None]) * np.array([0, 0, 96])
        elif self.network == "regionnet":
            sp = b["superpixels"].numpy()
            sp = np.where(sp < self.max_regions, sp, -1).astype(np.int32)
            logits = self.model({"image": b["image"], "superpixels": tf.constant(sp)}, training=False)
            out = palette[paint(np.asarray(logits[0]).argmax(-1), sp[0])]
        else:
            logits = tf.image.resize(
                self.model(b["image"], training=False), image.shape[:2], method="bilinear"
            )
            out = palette[np.asarray(logits[0]).argmax(-1)]
        return np.concatenate([image, palette[b["labels"][0].numpy()], out.astype(np.uint8)], axis=1)


def train(network: NetworkName, records: str, out_dir: str, cfg: Config, num_classes: int, **options):
    """Train `network` ("cam" | "regionnet" | "pixelnet") on the TFRecords matching `records` (see
    `_train` for `options`), under TensorFlow's op determinism where `train.deterministic` asks for it
    (`auto`: RegionNet on the CPU), which is lifted again after the stage."""
    on, why = precision.resolve_determinism(
        cfg.train.deterministic, NETWORKS[network].racy_on_cpu, cfg.train.devices
    )
    log.info(f"train {network}: op determinism {'on' if on else 'off'} ({why})")
    with precision.op_determinism(on):
        return _train(network, records, out_dir, cfg, num_classes, **options)


def _train(
    network: NetworkName,
    records: str,
    out_dir: str,
    cfg: Config,
    num_classes: int,
    *,
    strategy: Optional[tf.distribute.Strategy] = None,
    epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    init_from: Optional[str] = None,
    backbone_from: Optional[str] = None,
    verbose=None,
) -> keras.Model:
    """The stage `train` runs (`options`: its keywords below).

    Resumes from `out_dir/backup` when a previous run was killed; returns the trained model, also
    saved as `out_dir/model.keras`. Labels come from the records' current labels (the stage before).
    `init_from`: a model.keras of the same network whose weights start the training (warm start).
    `backbone_from`: a model.keras of another network on the same backbone (train.regionnet_backbone):
    its backbone weights then replace those of the start.
    """
    started = usage.stage_clock()
    stage = getattr(cfg.train, network)
    epochs = epochs or (stage.warm_epochs if init_from and stage.warm_epochs else stage.epochs)
    learning_rate = (
        stage.warm_learning_rate if init_from and stage.warm_learning_rate else stage.learning_rate
    )
    if not steps_per_epoch:
        steps_per_epoch = cfg.train.steps_per_epoch or max(count_records(records) // stage.batch_size, 1)
    strategy = strategy or make_strategy(cfg.train.devices)
    if not is_chief(strategy):  # every worker trains and saves (collectives), only the chief's files count
        out_dir = os.path.join(out_dir, f"worker-{strategy.cluster_resolver.task_id}")
    fileio.makedirs(out_dir)
    # TF combines the pipeline's op seeds with the global seed: set it first, so that a stage trained
    # first in a fresh process (a resumed run) draws the same data as one trained later in a long run
    keras.utils.set_random_seed(cfg.experiment.seed)
    backup = os.path.join(out_dir, "backup")
    inputs = training_inputs(network, records, cfg, num_classes, init_from, backbone_from)
    recorded = read_json(os.path.join(out_dir, INPUTS_FILE))
    why = inputs_difference(recorded, inputs) if recorded is not None else None
    if why and fileio.isdir(backup):
        log.info(f"train {network}: {why} since the backup in {backup}; starting over")
        fileio.rmtree(backup)  # this stage's own scratch state, made from the old inputs
    write_json_atomic(os.path.join(out_dir, INPUTS_FILE), inputs)
    done_epochs = _backed_up_epochs(backup)
    if done_epochs:  # a resumed run sees the batches an uninterrupted one would have seen next
        log.info(f"train {network}: resuming after epoch {done_epochs} from {backup}")
    ds = distributed_input(
        network, records, cfg, num_classes, stage.batch_size, strategy, done_epochs * steps_per_epoch
    )
    model = compiled_network(network, cfg, num_classes, epochs * steps_per_epoch, strategy, learning_rate)
    if init_from:  # (a resumed run's backup still takes precedence: BackupAndRestore loads it later)
        model.set_weights(load_model(init_from).get_weights())
    if backbone_from:
        n = copy_shared_layers(model, load_model(backbone_from))
        log.info(f"train {network}: backbone ({n} layers) from {backbone_from}")
    callbacks = [
        TimedBackup(backup, cfg.train.backup_seconds),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "logs"), update_freq="epoch"),
        ImagePreviews(
            network, records, num_classes, cfg, os.path.join(out_dir, "logs"), cfg.train.preview_seconds
        ),
        *callbacks,
    ]
    over = regions_over_the_limit(records, cfg) if network == "regionnet" else 0
    log.info(
        f"train {network}: {epochs} epochs x {steps_per_epoch} steps, batch {stage.batch_size}, "
        f"{strategy.num_replicas_in_sync} replica(s), {model.count_params():,} parameters"
    )
    if verbose is None:  # a live bar on a terminal, one line per epoch in logs
        verbose = 1 if sys.stdout.isatty() else 2
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3 `fit` fails under it (here: "Attempt to convert a value (PerReplica...)", cf.
        # keras-team/keras#20585), so multi-worker training takes a plain loop over the same pieces.
        _fit_multi_worker(
            model, ds, strategy, epochs, steps_per_epoch, backup, done_epochs, os.path.join(out_dir, "logs")
        )
    else:
        model.fit(
            ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )  # the tf.data pipeline shuffles (seeded)
    # read by the run report (mcof_tf.report.stage_costs); written before model.keras marks the end
    write_json_atomic(
        os.path.join(out_dir, "train.json"),
        {
            **usage.stage_usage(started),  # seconds, CPU, peak memory
            "epochs": epochs,
            "learning_rate": learning_rate,  # the schedule's start (warm_learning_rate when warm-started)
            "resumed_after_epoch": done_epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": stage.batch_size,
            "replicas": strategy.num_replicas_in_sync,
            "inputs": inputs,
            "images_over_max_regions": over,
            "warm_start": bool(init_from),
            "backbone_from": backbone_from,
            "dtype_policy": model.dtype_policy.name,
            "jit_compile": bool(model.jit_compile),
            "deterministic": precision.determinism_enabled(),
            # what relabelling with labels.prior_correction needs (the classes' shares it learned from)
            "label_shares": None if network == "cam" else label_shares(network, records, cfg, num_classes),
            "class_balance": cfg.train.class_balance,
        },
    )
    save_model(model, os.path.join(out_dir, MODEL_FILE))
    return model


def _fit_multi_worker(
    model: keras.Model,
    ds,
    strategy,
    epochs: int,
    steps_per_epoch: int,
    backup: str,
    done_epochs: int,
    log_dir: str,
) -> None:
    """Synchronous data-parallel SGD with the model's compiled loss and optimizer; a backup in the
    layout BackupAndRestore uses (weights incl. optimizer state + training_metadata.json) every epoch.
    Keras callbacks are not called on this path (the epoch loss goes to stdout and TensorBoard)."""
    loss_fn, optimizer, replicas = model.loss, model.optimizer, strategy.num_replicas_in_sync
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    weights = os.path.join(backup, "latest.weights.h5")
    if done_epochs and fileio.exists(weights):
        model.load_weights(weights)

    def replica_step(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            # each replica's mean loss / replicas: the all-reduced (summed) gradient is the global mean's
            loss = (loss_fn(targets, outputs) + tf.add_n(model.losses or [tf.constant(0.0)])) / replicas
            # mixed_float16: compile wrapped the optimizer in a LossScaleOptimizer, which scales the loss
            # here (small fp16 gradients would underflow) and unscales the gradients in apply_gradients
            scaled = optimizer.scale_loss(loss)
        optimizer.apply_gradients(
            zip(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)
        )
        return loss

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    iterator = iter(ds)
    writer = tf.summary.create_file_writer(log_dir)
    for epoch in range(done_epochs, epochs):
        total = 0.0
        for _ in range(steps_per_epoch):
            total += float(train_step(iterator))
        log.info(f"Epoch {epoch + 1}/{epochs} - loss: {total / steps_per_epoch:.4f}")
        with writer.as_default():
            tf.summary.scalar("epoch_loss", total / steps_per_epoch, step=epoch)
        fileio.makedirs(backup)
        model.save_weights(weights + ".tmp.weights.h5")
        fileio.replace(weights + ".tmp.weights.h5", weights)
        # after the weights: a kill between the two resumes one epoch early, never past saved weights
        write_json_atomic(os.path.join(backup, "training_metadata.json"), {"epoch": epoch + 1, "batch": 0})


def _backed_up_epochs(backup_dir: str) -> int:
    """Epochs completed by a killed run, from the metadata keras.callbacks.BackupAndRestore writes."""
    return int((read_json(os.path.join(backup_dir, "training_metadata.json")) or {}).get("epoch", 0))


def save_model(model: keras.Model, path: str) -> None:
    """Save atomically: a reader never sees a half-written model."""
    tmp = path[: -len(".keras")] + ".tmp.keras"
    model.save(tmp)
    fileio.replace(tmp, path)


INPUTS_FILE = "inputs.json"  # what a training stage consumes, written before it starts
# train.* keys that say how a stage runs, not what it learns from: they may change between a run and
# its resumption (another machine), and a finished stage is not redone for them. Its actual dtype
# policy, XLA use and op determinism are in its train.json.
EXECUTION_KEYS = (
    "devices",
    "mixed_precision",
    "jit_compile",
    "deterministic",
    "backup_seconds",
    "preview_seconds",
)
# a stage's keys that only a warm-started network uses; 0 means "as the cold start" (StageConfig)
WARM_KEYS = ("warm_epochs", "warm_learning_rate")


def training_inputs(
    network: NetworkName,
    records: str,
    cfg: Config,
    num_classes: int,
    init_from: Optional[str] = None,
    backbone_from: Optional[str] = None,
) -> dict:
    """Everything a training stage's result depends on: the records (their folder's manifest
    fingerprint, else the shard files' sizes), the starting weights and the config sections that
    shape the network and its schedule. A trained stage whose record of these differs is redone.
    Returned as JSON gives it back, so that it compares equal to the record read from disk."""
    folder = os.path.dirname(records)
    manifest = read_json(os.path.join(folder, MANIFEST)) or {}
    shards = {p: fileio.size(p) for p in sorted(fileio.glob(records))}
    train = {
        k: v
        for k, v in asdict(cfg.train).items()
        # regionnet_backbone only picks starting weights, which backbone_from below records
        if k not in ("cam", "regionnet", "pixelnet", "regionnet_backbone", *EXECUTION_KEYS)
    }
    inputs = {
        "records": manifest.get("fingerprint") or shards,
        "init_from": file_digest(init_from) if init_from else None,
        **({"backbone_from": file_digest(backbone_from)} if backbone_from else {}),
        "num_classes": num_classes,
        "config": {
            "model": asdict(cfg.model),
            "input": asdict(cfg.input),
            "train": {**train, network: asdict(getattr(cfg.train, network))},
            "seed": cfg.experiment.seed,
        },
    }
    return json.loads(json.dumps(inputs))


def label_shares(network: NetworkName, records: str, cfg: Config, num_classes: int) -> list[float]:
    """Each class's share of the labelled targets the network's loss sees (whole images, no
    augmentation): superpixels for RegionNet, pixels for PixelNet. With `train.class_balance` the loss
    weighs class c by about share_c ** -class_balance, which shifts the trained network's decisions
    towards rare classes by that much; `prior_offsets` undoes the shift from these shares."""
    if network == "cam":
        raise ValueError("the CAM's targets are tags, not labels")
    batch = NETWORKS[network].batch

    def counts(ex):
        b = {k: v[None] for k, v in ex.items()}  # a batch of one image: sizes differ
        targets = tf.reshape(tf.cast(batch(b, num_classes, cfg)[1], tf.int32), [-1])
        targets = tf.boolean_mask(targets, (targets >= 0) & (targets < num_classes))
        return tf.math.bincount(targets, minlength=num_classes, maxlength=num_classes, dtype=tf.int64)

    files = sorted(fileio.glob(records))
    ds = tf.data.TFRecordDataset(files).map(
        plain(lambda s: counts(decode_example(s, num_classes, NETWORKS[network].maps))),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    total = ds.reduce(tf.zeros([num_classes], tf.int64), plain(lambda a, c: a + c)).numpy()
    if not total.sum():
        raise ValueError(f"the records at {records} hold no labels for {network}")
    return [round(float(x), 8) for x in total / total.sum()]


def ensure_label_shares(out_dir: str, network: NetworkName, records: str, cfg: Config, num_classes: int):
    """Add `label_shares` to a finished stage's train.json written before mcof_tf recorded them."""
    path = os.path.join(out_dir, "train.json")
    done = read_json(path)
    if network != "cam" and done is not None and done.get("label_shares") is None:
        shares = label_shares(network, records, cfg, num_classes)
        write_json_atomic(path, {**done, "label_shares": shares, "class_balance": cfg.train.class_balance})


def prior_offsets(shares: Sequence[float], class_balance: float) -> np.ndarray:
    """Logit offsets class_balance * log(share_c) that undo a class-balanced loss's shift of the
    decisions (post-hoc logit adjustment, Menon et al., ICLR 2021): with them a network's labels keep
    the class shares it learned from instead of drifting towards equal shares stage after stage. A
    class absent from the training labels gets the rarest present class's offset."""
    shares = np.asarray(shares, np.float64)
    floor = shares[shares > 0].min() if (shares > 0).any() else 1.0
    return (class_balance * np.log(np.maximum(shares, floor))).astype(np.float32)


def recorded_prior_offsets(model_path: str, strength: float = 1.0) -> np.ndarray:
    """`strength` (0..1) x `prior_offsets` of the class shares and class balance recorded beside the
    model (its train.json): 1 undoes the whole lean of its class-balanced loss, 0.5 half of it."""
    if not 0.0 <= strength <= 1.0:  # every caller's check: the loop, relabel and export CLIs
        raise ValueError(f"prior correction strength: expected a number in [0, 1], got {strength}")
    folder = os.path.dirname(model_path)
    record = read_json(f"{folder}/train.json") or {}
    if record.get("label_shares") is None:
        raise ValueError(
            f"{folder}/train.json records no label_shares (trained by an older mcof_tf); retrain it or "
            "relabel / export without the prior correction"
        )
    return strength * prior_offsets(record["label_shares"], record.get("class_balance", 0.0))


def regions_over_the_limit(records: str, cfg: Config) -> int:
    """RegionNet classifies superpixels 0..model.max_regions-1 of each training image: count (and say)
    the images with more, whose other superpixels it does not learn from (relabelling covers them all)."""
    counts = superpixel_counts(records)
    limit = cfg.model.max_regions
    over = sum(n > limit for n in counts)
    if over:
        log.warning(
            f"train regionnet: {over} of {len(counts)} images have more than model.max_regions={limit} "
            f"superpixels (up to {max(counts)}); RegionNet learns from their first {limit} only; raise "
            "model.max_regions or superpixels.scale to cover them"
        )
    return over


def stale_reason(out_dir: str, inputs: dict) -> Optional[str]:
    """Why the trained model in `out_dir` cannot be reused with `inputs` (None: it can)."""
    done = read_json(os.path.join(out_dir, "train.json"))
    if done is None or "inputs" not in done:
        return "it has no record of its inputs"
    return inputs_difference(done["inputs"], inputs)


def _comparable(inputs: dict) -> dict:
    """`inputs` without the keys that cannot change a stage's result: execution keys (records written
    before a key became one still hold it, e.g. mixed_precision: false) and the warm-start keys
    (WARM_KEYS) where they do not apply: for a stage that starts from scratch, or at their "as the
    cold start" value 0 (records written before the key existed lack it)."""
    inputs = dict(inputs)
    config = inputs.get("config")
    if isinstance(config, dict) and isinstance(config.get("train"), dict):
        cold = inputs.get("init_from") is None
        train = {
            k: {n: e for n, e in v.items() if not (n in WARM_KEYS and (cold or e == 0))}
            if isinstance(v, dict)
            else v
            for k, v in config["train"].items()
            if k not in EXECUTION_KEYS
        }
        inputs["config"] = {**config, "train": train}
    return inputs


def inputs_difference(before: dict, inputs: dict) -> Optional[str]:
    """How a stage's recorded inputs differ from `inputs`, in words (None: they do not). Used for a
    finished stage (its train.json) and for a killed one's backup (its inputs.json) alike."""
    before, inputs = _comparable(before), _comparable(inputs)
    for key in ("records", "init_from", "backbone_from", "num_classes", "config"):
        if before.get(key) != inputs.get(key):
            return {
                "records": "its input records changed",
                "init_from": "the network it starts from changed",
                "backbone_from": "the network its backbone starts from changed",
                "num_classes": "the number of classes changed",
                "config": "its config changed",
            }[key]
    return None


def all_layers(layer: keras.layers.Layer) -> list:
    """`layer` and every layer inside it, nested models included (public attributes only)."""
    out = [layer]
    for inner in getattr(layer, "layers", []):
        out += all_layers(inner)
    return out


def model_file(model: str) -> str:
    """A training folder (holding model.keras) or a .keras file → the .keras file, which must exist."""
    path = model if model.endswith(".keras") else f"{model.rstrip('/')}/{MODEL_FILE}"
    if not fileio.exists(path):
        raise FileNotFoundError(f"no trained model at {path}")
    return path


def load_model(path: str) -> keras.Model:
    return keras.models.load_model(path, compile=False)
