import numpy as np
import pytest

from mcof_tf.evaluate import confusion, iou_per_class, mean_iou, metrics_entry


def test_confusion_skips_void_and_counts_unlabelled_predictions_as_background():
    gt = np.array([[0, 1, 1, 255]])
    pred = np.array([[0, 1, 255, 2]])
    c = confusion(gt, pred, 3)
    assert c.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_iou_and_miou_by_hand():
    c = np.array([[3, 1], [1, 1]])
    iou = iou_per_class(c)
    assert np.allclose(iou, [3 / 5, 1 / 3])
    assert abs(mean_iou(c) - 100 * (3 / 5 + 1 / 3) / 2) < 1e-9
    # a class absent from both ground truth and prediction does not count
    c3 = np.zeros((3, 3), int)
    c3[:2, :2] = c
    assert abs(mean_iou(c3) - mean_iou(c)) < 1e-9
    e = metrics_entry(c3, ["bg", "a", "b"])
    assert e["per_class"]["b"] is None and e["per_class"]["bg"] == 60.0


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        confusion(np.array([[5]]), np.array([[0]]), 3)
