import numpy as np
import pytest

from mcof_tf.evaluate import confusion, iou_per_class, mean_iou, metrics_entry, object_precision_recall


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


def test_object_precision_and_recall_by_hand():
    # rows = ground truth (bg, a, b), columns = prediction; unlabelled predictions are in column 0
    c = np.array([[50, 2, 0],
                  [6, 8, 0],
                  [4, 2, 6]])
    precision, recall = object_precision_recall(c)
    assert abs(precision - 100 * 14 / 18) < 1e-9  # 18 pixels labelled as objects, 14 right
    assert abs(recall - 100 * 14 / 26) < 1e-9  # 26 object pixels, 14 found
    e = metrics_entry(c, ["bg", "a", "b"])
    assert e["object_precision"] == round(100 * 14 / 18, 3) and e["object_recall"] == round(100 * 14 / 26, 3)
    assert object_precision_recall(np.diag([5, 0, 0])) == (0.0, 0.0)  # nothing labelled, no objects
