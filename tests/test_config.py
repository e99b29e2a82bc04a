import os

import pytest

from mcof_tf.config import Config, ConfigError, load_config, parse_override


def test_shipped_configs_load_with_their_settings():
    syn = load_config("synthetic")
    assert isinstance(syn, Config)
    assert syn.data.synthetic is not None and syn.model.backbone == "vgg16_small"
    voc = load_config("voc2012_vgg16")
    assert voc.input.crop_size == 321
    assert voc.model.backbone == "vgg16" and voc.model.weights == "imagenet"
    assert (voc.data.train_split, voc.data.val_split) == ("train_aug", "val")
    assert voc.data.synthetic is None and voc.data.classes == []  # VOC's 21 classes by default
    # The VGG16 recipe on the second preset: that preset's data, the VGG16 config's network and training.
    small, vgg, small_vgg = (
        load_config(n)
        for n in ("synthetic_small_objects", "synthetic_vgg16", "synthetic_small_objects_vgg16")
    )
    assert small_vgg.data == small.data and small_vgg.data.synthetic.num_classes == 10
    assert small_vgg.model == vgg.model and small_vgg.train == vgg.train and vgg.model.weights == "hed-vgg16"


def test_overrides_are_typed_and_reach_nested_sections():
    cfg = load_config(
        "synthetic",
        ["input.crop_size=64", "train.cam.learning_rate=0.5", "input.mean_rgb=[1, 2, 3]", "input.flip=false"],
    )
    assert cfg.input.crop_size == 64
    assert cfg.train.cam.learning_rate == 0.5
    assert cfg.input.mean_rgb == [1.0, 2.0, 3.0]
    assert cfg.input.flip is False


def test_override_creates_optional_section():
    cfg = load_config("voc2012_vgg16", ["data.synthetic.seed=3"])
    assert cfg.data.synthetic.seed == 3 and cfg.data.synthetic.num_train == 200


@pytest.mark.parametrize(
    "override, key",
    [
        ("input.crop_sise=3", "input.crop_sise"),
        ("nonsense.x=1", "nonsense"),
        ("train.cam.epoch=1", "train.cam.epoch"),
    ],
)
def test_unknown_keys_are_errors_that_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config("synthetic", [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("input.crop_size=big", "input.crop_size"),
        ("input.crop_size=1.5", "input.crop_size"),
        ("input.flip=1", "input.flip"),
        ("input.mean_rgb=3", "input.mean_rgb"),
        ("train.cam=5", "train.cam"),
    ],
)
def test_wrong_types_are_errors_that_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("synthetic", [override])


@pytest.mark.parametrize("key", ["prediction_correction", "mask_correction"])
@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_corrections_are_shares(key, value):
    with pytest.raises(ConfigError, match=f"labels.{key}"):
        load_config("synthetic", [f"labels.{key}={value}"])
    assert getattr(load_config("synthetic", [f"labels.{key}=1"]).labels, key) == 1.0


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_region_crf_confidence_is_a_probability(value):
    """Checked when the config loads, not first in the relabel job an hour into the loop."""
    with pytest.raises(ConfigError, match="labels.region_crf_confidence"):
        load_config("synthetic", [f"labels.region_crf_confidence={value}"])
    assert load_config("synthetic", ["labels.region_crf_confidence=1"]).labels.region_crf_confidence == 1.0


@pytest.mark.parametrize("value", ["-0.1", "1.0"])
def test_saliency_background_is_a_saliency_below_one(value):
    with pytest.raises(ConfigError, match="labels.saliency_background"):
        load_config("synthetic", [f"labels.saliency_background={value}"])
    assert load_config("synthetic", ["labels.saliency_background=0.1"]).labels.saliency_background == 0.1


@pytest.mark.parametrize("value", ["-0.1", "1.0"])
def test_refine_posterior_is_a_probability_below_one(value):
    with pytest.raises(ConfigError, match="labels.refine_posterior"):
        load_config("synthetic", [f"labels.refine_posterior={value}"])
    assert load_config("synthetic", ["labels.refine_posterior=0.2"]).labels.refine_posterior == 0.2


@pytest.mark.parametrize("value", ["0.2", "4.5"])
def test_every_scale_option_takes_one_range(value):
    """The config's CAM and PixelNet scales and the CLIs' --scales refuse the same values (the predict
    CLIs used to take 0.1, which the relabel job then refused)."""
    from mcof_tf.inference import parse_scales

    for key in ("seeds.scales", "labels.mask_scales"):
        with pytest.raises(ConfigError, match=key):
            load_config("synthetic", [f"{key}=[1.0, {value}]"])
        section, name = key.split(".")
        assert getattr(getattr(load_config("synthetic", [f"{key}=[0.25, 4.0]"]), section), name) == [
            0.25,
            4.0,
        ]
    with pytest.raises(ValueError, match="--scales: expected scales between 0.25 and 4"):
        parse_scales(f"1,{value}")
    assert parse_scales("0.25, 1,4") == [0.25, 1.0, 4.0]


def test_choice_fields_are_checked():
    with pytest.raises(ConfigError, match="saliency.method"):
        load_config("synthetic", ["saliency.method=magic"])
    with pytest.raises(ConfigError, match="train.regionnet_backbone"):
        load_config("synthetic", ["train.regionnet_backbone=cam"])


def test_unknown_key_in_a_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("base: %s\nrecords: {num_shard: 3}\n" % os.path.abspath("configs/synthetic.yaml"))
    with pytest.raises(ConfigError, match="records.num_shard"):
        load_config(str(p))


def test_base_inheritance_changes_one_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("base: %s\nrecords: {num_shards: 7}\n" % os.path.abspath("configs/synthetic.yaml"))
    cfg, ref = load_config(str(p)), load_config("synthetic")
    assert cfg.records.num_shards == 7
    assert cfg.input == ref.input and cfg.superpixels == ref.superpixels


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_yaml_is_safe_loaded(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("experiment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(evil))


def test_a_key_given_twice_is_refused(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  regionnet: {epochs: 20}\n  regionnet: {epochs: 40}\n")
    with pytest.raises(ConfigError, match="key 'regionnet' given twice"):
        load_config(str(twice))
    once = tmp_path / "once.yaml"  # the same key in two different mappings is fine
    once.write_text("train:\n  regionnet: {epochs: 20}\n  pixelnet: {epochs: 20}\n")
    assert load_config(str(once)).train.regionnet.epochs == 20


def test_parse_override_requires_equals():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError):
        parse_override("a.b")
