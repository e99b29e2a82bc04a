import numpy as np

from mcof_tf.vision.saliency import max_f_measure, precision_recall, robust_background_saliency, saliency_mae
from mcof_tf.vision.superpixels import relabel_raster, scaled_params, superpixels


def test_scaled_params_are_linear_in_the_longer_side():
    assert scaled_params(375, 500, 100, 20, 500) == (100.0, 20)
    assert scaled_params(100, 250, 100, 20, 500) == (50.0, 10)
    assert scaled_params(10, 10, 100, 20, 500) == (2.0, 1)


def test_superpixels_follow_flat_regions():
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = (200, 30, 30)
    sp = superpixels(img, scale=100, sigma=0.5, min_size=20, reference_side=16)  # blur strips merge
    assert sp.dtype == np.int32 and sp.max() == 1
    assert (sp[:, :8] == 0).all() and (sp[:, 8:] == 1).all()  # raster order: left region first


def test_relabel_raster_numbers_by_first_appearance():
    seg = np.array([[7, 7, 3], [5, 3, 3]])
    assert relabel_raster(seg).tolist() == [[0, 0, 1], [2, 1, 1]]


def test_saliency_finds_a_distinct_central_object():
    rng = np.random.default_rng(0)
    img = np.full((48, 64, 3), 110, np.uint8) + rng.integers(0, 10, (48, 64, 3), dtype=np.uint8)
    img[16:32, 24:40] = (230, 40, 40)
    sal = robust_background_saliency(img, n_segments=80)
    fg = np.zeros((48, 64), bool)
    fg[16:32, 24:40] = True
    assert sal.dtype == np.uint8 and sal.shape == (48, 64)
    assert sal[fg].mean() > 200 and sal[~fg].mean() < 40
    assert saliency_mae(sal, fg) < 0.1


def test_metrics_on_hand_made_maps():
    fg = np.array([[1, 1, 0, 0]], bool)
    perfect = np.array([[255, 255, 0, 0]], np.uint8)
    assert saliency_mae(perfect, fg) == 0.0
    assert saliency_mae(np.array([[0.5, 0.5, 0.5, 0.5]]), fg) == 0.5
    p, r = precision_recall(perfect, fg)
    assert p[1] == 1.0 and r[1] == 1.0 and r[0] == 1.0 and p[0] == 0.5
    assert max_f_measure(p[None], r[None]) == 1.0
    inverted = 255 - perfect
    p2, r2 = precision_recall(inverted, fg)
    # at threshold 0 everything is foreground: P = 0.5, R = 1 → F = 1.3*0.5/(0.15+1)
    assert abs(max_f_measure(p2[None], r2[None]) - 1.3 * 0.5 / 1.15) < 1e-9
    valid = np.array([[1, 0, 1, 1]], bool)
    assert saliency_mae(np.array([[255, 0, 255, 0]], np.uint8), fg, valid) == 1 / 3
