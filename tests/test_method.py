"""The method's pure functions on small hand-made arrays whose right answer can be seen."""

import os

import numpy as np
import pytest

from mcof_tf.method.labels import drop_absent_classes, paint
from mcof_tf.method.refine import colour_likelihoods, object_posterior, refine_single_tag
from mcof_tf.method.seeds import cam_seeds, local_maxima
from mcof_tf.models.regionnet import region_labels
from mcof_tf.vision.crf import dense_crf

# 8x8 image cut into four 4x4 superpixels: 0 1 / 2 3
SP = np.zeros((8, 8), np.int32)
SP[:4, 4:], SP[4:, :4], SP[4:, 4:] = 1, 2, 3


def test_local_maxima_on_a_chain():
    pairs = np.array([[0, 1], [1, 2], [2, 3]])
    assert local_maxima(np.array([0.1, 0.5, 0.2, 0.3]), pairs).tolist() == [False, True, False, True]


def test_cam_seeds_threshold_conflict_background_and_untagged():
    cams = np.zeros((8, 8, 3), np.float32)
    cams[SP == 0, 0] = 0.9  # class 1 strong in region 0
    cams[SP == 1, 0] = 0.6  # class 1 above threshold in region 1 ...
    cams[SP == 1, 1] = 0.7  # ... but class 2 is stronger there
    cams[SP == 2, 2] = 0.95  # class 3 is not tagged: never a seed
    cams[SP == 3, 0] = 0.3  # weak everywhere: neither seed nor background
    got = cam_seeds(cams, SP, tags=[1, 2], fg_threshold=0.5, bg_threshold=0.1, peak_min=0.95)
    assert got.tolist() == [1, 2, 0, 255]


def test_cam_seeds_local_maximum_below_threshold():
    cams = np.zeros((8, 8, 1), np.float32)
    cams[SP == 0, 0], cams[SP == 1, 0], cams[SP == 2, 0], cams[SP == 3, 0] = 0.4, 0.2, 0.05, 0.2
    got = cam_seeds(cams, SP, tags=[1], fg_threshold=0.5, bg_threshold=0.1, peak_min=0.3)
    assert got.tolist() == [1, 255, 0, 255]  # region 0 is the peak; region 2 is background


def test_drop_absent_classes_and_paint_and_superpixel_majority():
    labels = np.array([[0, 1, 2], [3, 255, 2]], np.uint8)
    assert drop_absent_classes(labels, [2]).tolist() == [[0, 0, 2], [0, 255, 2]]
    sp = np.array([[0, 0, 1], [1, -1, 2]])
    assert paint(np.array([4, 5, 255]), sp).tolist() == [[4, 4, 5], [5, 255, 255]]
    pix = np.array([[1, 1, 2], [2, 0, 255]], np.uint8)
    assert region_labels(pix[None], sp[None], max_regions=3, num_classes=3)[0].numpy().tolist() == [1, 2, 255]


def test_colour_likelihoods_and_posterior():
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = (250, 10, 10)  # red top half
    obj = np.zeros((4, 4), bool)
    obj[0] = True  # RegionNet found only the first red row
    p_obj, p_bg = colour_likelihoods(img, obj, bins=2, alpha=0.0)  # background: all but the object
    assert p_obj[1, 0] == 1.0  # all object pixels are red
    assert abs(p_bg[1, 0] - 4 / 12) < 1e-9 and abs(p_bg[3, 0] - 8 / 12) < 1e-9
    sal = np.full((4, 4), 0.5)
    post = object_posterior(sal, p_obj, p_bg)
    assert post[1, 0] > 0.7 and post[3, 0] == 0.0  # the second red row joins; black rows do not


def test_refinement_supplements_a_partial_region():
    img = np.full((16, 16, 3), 20, np.uint8)
    img[4:12, 4:12] = (220, 60, 40)  # the object: an 8x8 square
    sal = np.zeros((16, 16), np.uint8)
    sal[3:13, 3:13] = 200  # a saliency map slightly too big
    region = np.zeros((16, 16), np.uint8)
    region[4:7, 4:7] = 5  # RegionNet found a corner only
    out = refine_single_tag(img, sal, region, 5)
    truth = np.zeros((16, 16), bool)
    truth[4:12, 4:12] = True
    assert ((out == 5) == truth).mean() > 0.95 and (out[region == 5] == 5).all()
    assert set(np.unique(out)) == {0, 5}
    assert (refine_single_tag(img, sal, np.zeros((16, 16), np.uint8), 5) == 0).all()  # nothing to learn from


def test_refine_posterior_takes_a_non_salient_spill_out_of_the_region():
    """labels.refine_posterior: RegionNet's region is a red square plus a ring of the green background around
    it, where saliency is low. The paper's refinement only adds (the ring stays); with a posterior threshold
    the ring, non-salient and of the background's colour, leaves the region and the square stays."""
    img = np.zeros((20, 20, 3), np.uint8)
    img[..., 1] = 160  # green background
    img[7:13, 7:13] = (200, 30, 30)  # the red object
    sal = np.full((20, 20), 10, np.uint8)
    sal[7:13, 7:13] = 230
    region = np.zeros((20, 20), np.uint8)
    region[5:15, 5:15] = 3  # the square and a 2-pixel ring of background
    square = np.zeros((20, 20), bool)
    square[7:13, 7:13] = True
    union = refine_single_tag(img, sal, region, 3)
    assert ((union == 3) == (region == 3)).all()  # nothing removed, nothing salient to add
    cut = refine_single_tag(img, sal, region, 3, keep_posterior=0.2)
    assert ((cut == 3) == square).all()
    assert set(np.unique(cut)) == {0, 3}


def test_refine_connected_leaves_a_salient_distractor_out():
    """labels.refine_connected: a red object RegionNet found a corner of, and a red salient distractor apart
    from it. The paper's refinement adds both (same colour, salient); the connected rule adds the object's
    missing part only."""
    img = np.full((20, 24, 3), 20, np.uint8)
    img[3:11, 3:11] = (220, 60, 40)  # the object
    img[12:17, 16:21] = (220, 60, 40)  # the distractor, same colour, away from it
    sal = np.zeros((20, 24), np.uint8)
    sal[2:12, 2:12] = 220
    sal[11:18, 15:22] = 220
    region = np.zeros((20, 24), np.uint8)
    region[3:6, 3:6] = 4  # RegionNet found a corner of the object
    obj = np.zeros((20, 24), bool)
    obj[3:11, 3:11] = True
    distractor = np.zeros((20, 24), bool)
    distractor[12:17, 16:21] = True
    plain = refine_single_tag(img, sal, region, 4) == 4
    assert plain[distractor].mean() > 0.9 and plain[obj].mean() > 0.9  # both added
    near = refine_single_tag(img, sal, region, 4, connected=True) == 4
    assert not near[distractor].any() and (near[obj] == plain[obj]).all()
    assert (near <= plain).all() and (near[region == 4]).all()


def test_dense_crf_cleans_a_noisy_map():
    img = np.zeros((12, 12, 3), np.uint8)
    img[:, 6:] = 255
    p = np.where(np.arange(12)[None, :] >= 6, 0.8, 0.2) * np.ones((12, 1))
    p[3, 2], p[8, 9] = 0.7, 0.3  # two wrong pixels
    q = dense_crf(img, np.stack([1 - p, p]).astype(np.float32))
    assert q.shape == (2, 12, 12) and np.allclose(q.sum(0), 1, atol=1e-4)
    assert (q.argmax(0) == (np.arange(12)[None, :] >= 6)).all()


def test_dense_crf_in_worker_processes_gives_the_same_marginals(monkeypatch):
    """crf.in_processes: the CRFs of several threads run in spawned worker processes (pydensecrf holds
    Python's lock), with the same results as in the calling thread; outside it, no processes."""
    from concurrent.futures import ThreadPoolExecutor

    from mcof_tf.vision import crf

    # pytest's own main module is safe to spawn from, however pytest was started
    monkeypatch.setattr(crf, "_spawn_reruns_main", lambda: False)

    rng = np.random.default_rng(0)
    jobs = []
    for _ in range(4):
        img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        p = rng.dirichlet(np.ones(3), (20, 24)).transpose(2, 0, 1).astype(np.float32)
        jobs.append((img, p))
    here = [dense_crf(img, p) for img, p in jobs]
    with crf.in_processes(2):
        assert crf._pool is not None
        workers = {crf._pool.submit(os.getpid).result() for _ in range(4)}
        with ThreadPoolExecutor(2) as threads:  # as Beam's local runner calls it
            there = list(threads.map(lambda j: dense_crf(*j), jobs))
    assert crf._pool is None and os.getpid() not in workers
    assert all(np.array_equal(a, b) for a, b in zip(here, there))
    with crf.in_processes(1):
        assert crf._pool is None


def test_no_crf_workers_under_a_script_run_by_its_path(monkeypatch):
    """A spawned worker would run such a script again (unless it is guarded, which cannot be seen);
    a module run with -m is safe."""
    import sys
    import types

    from mcof_tf.vision import crf

    script = types.ModuleType("__main__")
    script.__file__, script.__spec__ = "/somewhere/job.py", None
    monkeypatch.setitem(sys.modules, "__main__", script)
    with crf.in_processes(2):
        assert crf._pool is None
    script.__spec__ = types.SimpleNamespace(name="mcof_tf.train")  # python -m mcof_tf.train
    assert not crf._spawn_reruns_main()


def test_dense_crf_accepts_read_only_images():
    img = np.zeros((6, 6, 3), np.uint8)
    img.setflags(write=False)  # as np.asarray(PIL image) returns
    p = np.full((6, 6), 0.9)
    assert dense_crf(img, np.stack([1 - p, p]).astype(np.float32)).argmax(0).all()


def test_tag_argmax_rules():
    from mcof_tf.method.labels import tag_argmax

    scores = np.array(
        [
            [0.1, 0.2, 0.9, 0.0],  # untagged class 2 wins outright
            [0.5, 0.1, 0.9, 0.0],  # ... and background beats tagged class 1
            [0.2, 0.6, 0.1, 0.0],
        ]
    )  # tagged class 1 wins
    assert tag_argmax(scores, [1], "restrict").tolist() == [1, 0, 1]
    assert tag_argmax(scores, [1], "background").tolist() == [0, 0, 1]
    assert tag_argmax(scores, None).tolist() == [2, 2, 1]


def test_tag_argmax_keep_tags_revives_a_vanished_class():
    from mcof_tf.method.labels import tag_argmax

    # 4 regions, classes bg / 1 / 2; image tagged {1, 2}. Class 2 loses everywhere to background or 1,
    # but it is the likelier object class in regions 2 and 3 (region 3 at < half its peak: stays).
    scores = np.log(np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.85, 0.05, 0.1]]))
    assert tag_argmax(scores, [1, 2]).tolist() == [1, 0, 0, 0]
    assert tag_argmax(scores, [1, 2], keep_tags=True).tolist() == [1, 0, 2, 0]
    # a class present somewhere is left alone; an untagged class is never revived
    assert tag_argmax(scores, [1], keep_tags=True).tolist() == [1, 0, 0, 0]
    assert tag_argmax(scores[:, :2], [1], keep_tags=True).tolist() == [1, 0, 0, 0]


def test_softmax_keeps_only_background_and_tags():
    from mcof_tf.method.refine import softmax

    p = softmax(np.log(np.array([[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]])), tags=[1])
    np.testing.assert_allclose(p, [[0.4, 0.6, 0.0], [2 / 3, 1 / 3, 0.0]], atol=1e-9)
    np.testing.assert_allclose(softmax(np.zeros((2, 4))), 0.25)


def test_crf_probabilities_move_a_blurred_edge_to_the_colour_edge():
    from mcof_tf.method.refine import crf_probabilities

    # the object is the right half (white); the network's mask spills two columns into the left half
    img = np.zeros((12, 12, 3), np.uint8)
    img[:, 6:] = 255
    scores = np.zeros((12, 12, 3))
    scores[:, :4, 0] = 2.0  # background sure on the left ...
    scores[:, 4:, 1] = 1.0  # ... class 1 mildly likelier from column 4 on (two columns too early)
    scores[:, :, 2] = 3.0  # an untagged class that would win everywhere
    q = crf_probabilities(img, scores, tags=[1])
    assert q.shape == (12, 12, 3) and np.allclose(q.sum(-1), 1) and (q[..., 2] == 0).all()
    assert (scores[..., :2].argmax(-1)[:, 4:6] == 1).all()  # before: the spill
    assert (q.argmax(-1) == (np.arange(12)[None, :] >= 6)).all()  # after: the colour edge


def test_leave_unsure_unlabels_low_confidence_pixels():
    from mcof_tf.method.labels import leave_unsure

    labels = np.array([1, 0, 2], np.uint8)
    probs = np.array([[0.1, 0.9, 0.0], [0.55, 0.45, 0.0], [0.2, 0.1, 0.7]])
    assert leave_unsure(labels, probs, 0.6).tolist() == [1, 255, 2]
    assert leave_unsure(labels, probs, 0.0).tolist() == [1, 0, 2]


def test_saliency_background_turns_objects_on_non_salient_pixels_into_background():
    from mcof_tf.method.labels import saliency_background

    labels = np.array([[3, 3, 0], [3, 255, 5]], np.uint8)
    saliency = np.array([[10, 200, 10], [25, 0, 26]], np.uint8)  # threshold 0.1 = 25.5 of 255
    assert saliency_background(labels, saliency, 0.1).tolist() == [[0, 3, 0], [0, 255, 5]]
    assert saliency_background(labels, saliency, 0.0).tolist() == labels.tolist()  # off
    assert saliency_background(labels, saliency, 0.1).dtype == np.uint8


def test_agreement_keeps_labels_that_equal_the_previous_ones():
    from mcof_tf.method.labels import agreement

    regions = np.array([[0, 3, 3], [5, 5, 255]], np.uint8)
    masks = np.array([[0, 3, 0], [5, 255, 255]], np.uint8)
    assert agreement(regions, masks).tolist() == [[0, 3, 255], [5, 255, 255]]
    with pytest.raises(ValueError, match="shape"):
        agreement(regions, masks[:, :2])


def test_region_crf_cuts_a_superpixel_halo_back_to_the_object():
    """RegionNet's halo: a background-coloured ring of superpixels around a small object scored as the
    object (its pooled features saw the object). The CRF over the painted scores gives the ring back to
    the background it shares its colour with and keeps the object; pixels of no superpixel (-1) start
    from superpixel 0's scores (here the object's) and are labelled without error."""
    from mcof_tf.method.labels import tag_argmax
    from mcof_tf.method.refine import crf_regions

    image = np.zeros((40, 40, 3), np.uint8)
    image[:] = (30, 60, 200)  # blue background
    image[14:26, 14:26] = (220, 40, 30)  # red square: the object
    sp = np.full((40, 40), 2)
    sp[8:32, 8:32] = 1  # a ring of background around the square
    sp[14:26, 14:26] = 0  # the square
    scores = np.log(np.array([[0.1, 0.9, 0.0], [0.3, 0.7, 0.0], [0.95, 0.05, 0.0]]) + 1e-9)
    before = paint(tag_argmax(scores, [1]), sp)
    assert (before[sp == 1] == 1).all()  # the halo, as RegionNet labels it
    probs = crf_regions(image, sp, scores, [1])
    assert probs.shape == (40, 40, 3) and np.allclose(probs.sum(-1), 1.0, atol=1e-4)
    assert (probs[..., 2] == 0).all()  # an untagged class stays at 0
    after = tag_argmax(np.log(np.maximum(probs, 1e-12)), [1])
    assert (after[sp == 0] == 1).all() and (after[sp == 1] == 0).all() and (after[sp == 2] == 0).all()
    sp[0, 0] = -1
    assert crf_regions(image, sp, scores, [1]).shape == (40, 40, 3)
