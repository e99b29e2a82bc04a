import os

import numpy as np
import pytest
from conftest import TINY, list_ids
from PIL import Image

from mcof_tf.data import synthetic
from mcof_tf.data.voc import VocDataset, tags_from_mask


def test_render_is_deterministic_per_seed():
    a_img, a_lab, a_obj = synthetic.render(TINY, 3)
    b_img, b_lab, b_obj = synthetic.render(TINY, 3)
    assert (a_img == b_img).all() and (a_lab == b_lab).all() and a_obj == b_obj
    other = synthetic.SyntheticSpec(**{**TINY.__dict__, "seed": TINY.seed + 1})
    c_img, _, _ = synthetic.render(other, 3)
    assert c_img.shape != a_img.shape or not (c_img == a_img).all()


def test_layout_and_agreement_of_tags_with_masks(tiny_root):
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        assert os.path.isdir(os.path.join(tiny_root, sub))
    assert list_ids(tiny_root, "train") and list_ids(tiny_root, "val")
    ds = VocDataset(tiny_root)
    assert ds.classes == list(synthetic.CLASSES)
    for i in list_ids(tiny_root):
        s = ds.load(i)
        assert s.tags and s.tags == tags_from_mask(s.groundtruth)
        assert Image.open(os.path.join(tiny_root, "SegmentationClass", f"{i}.png")).mode == "P"


def test_benchmark_has_the_hard_properties():
    spec = synthetic.SyntheticSpec(seed=0, num_train=40, num_val=0, min_side=96, max_side=160)
    sizes, n_tags, void = set(), [], []
    for k in range(40):
        img, lab, objs = synthetic.render(spec, k)
        sizes.add(img.shape[:2])
        n_tags.append(len(set(o["class"] for o in objs)))
        void.append((lab == 255).mean())
    assert len(sizes) > 30 and any(h != w for h, w in sizes)  # varied, non-square
    assert 1 in n_tags and max(n_tags) >= 2  # single- and multi-class images
    assert min(void) > 0  # every image has a void ring
    assert 0.1 < np.mean([t == 1 for t in n_tags]) < 0.9


def test_badges_are_small_parts_of_their_objects():
    # render one object with and without its badge colour check: the badge covers a small share
    spec = synthetic.SyntheticSpec(seed=1, num_train=1, num_val=0, min_side=128, max_side=128)
    img, lab, objs = synthetic.render(spec, 0)
    cls = objs[0]["class"]
    _, a, b = synthetic._BADGE[cls]
    inside = lab == cls
    close = lambda c: np.abs(img.astype(int) - np.array(c)).sum(-1) < 60  # noqa: E731
    share = (inside & (close(a) | close(b))).sum() / inside.sum()
    assert 0.005 < share < 0.15


def test_write_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        synthetic.write_dataset(str(tmp_path / "x"), TINY, progress=False)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"


def test_writers_side_by_side_leave_one_complete_root(tmp_path, monkeypatch):
    # two runs started together on a fresh machine both generate the benchmark: one finishes while the
    # other is still writing (before, they shared one temporary folder and the second run failed)
    root = str(tmp_path / "b")
    render, other = synthetic.render, []

    def render_while_another_writes(spec, i):
        if not other:
            other.append("started")
            other.append(synthetic.write_dataset(root, spec, progress=False))
        return render(spec, i)

    monkeypatch.setattr(synthetic, "render", render_while_another_writes)
    (tmp_path / "b.partial-999999999-abc").mkdir()  # left by a killed writer (no such process)
    assert synthetic.write_dataset(root, TINY, progress=False) == root
    assert other == ["started", root] and synthetic.is_complete(root, TINY)
    assert os.listdir(tmp_path) == ["b"]  # no temporary folder left, the abandoned one removed


def test_cli_writes_a_root(tmp_path):
    out = tmp_path / "b"
    assert (
        synthetic.main(
            ["--out", str(out), "--num-train", "2", "--num-val", "1", "--min-side", "40", "--max-side", "48"]
        )
        == 0
    )
    assert len(list_ids(str(out), "train")) == 2 and (out / synthetic.MARKER).exists()


def test_presets_differ_in_classes_object_size_and_backgrounds():
    from mcof_tf.config import load_config

    default = load_config("synthetic").data.synthetic
    small = load_config("synthetic_small_objects").data.synthetic
    assert synthetic.classes(default) == synthetic.CLASSES and len(synthetic.classes(small)) == 11

    def stats(spec, n=24):
        share, seen = [], set()
        for k in range(n):
            _, lab, objs = synthetic.render(spec, k)
            valid = lab != 255
            share.append(((lab > 0) & valid).sum() / valid.sum())
            seen |= {o["class"] for o in objs}
        return np.mean(share), seen

    d_share, d_seen = stats(default)
    s_share, s_seen = stats(small)
    assert d_seen <= set(range(1, 7)) and max(s_seen) > 6  # the small preset uses classes 7-10
    assert s_share < 0.12 < 0.25 < d_share  # objects ~8 % of the pixels vs ~30 %


def test_pairs_share_body_textures_and_badges_tell_the_class():
    for a in range(1, 11, 2):
        assert synthetic._BODY[a][0] == synthetic._BODY[a + 1][0]  # one texture per pair
        assert abs(synthetic._BODY[a][1] - synthetic._BODY[a + 1][1]) <= 0.051  # close hues
    assert len({synthetic._BADGE[c] for c in range(1, 11)}) == 10


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_classes": 11}, "num_classes"),
        ({"num_classes": 1}, "num_classes"),
        ({"object_scale": [0.3, 0.2]}, "object_scale"),
        ({"backgrounds": "sky"}, "backgrounds"),
        ({"min_side": 20}, "min_side"),
        ({"distractors": 1.5}, "distractors"),
    ],
)
def test_bad_generator_parameters_are_refused(change, message, tmp_path):
    spec = synthetic.SyntheticSpec(**{**TINY.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        synthetic.write_dataset(str(tmp_path / "x"), spec, progress=False)
    assert not (tmp_path / "x").exists()
