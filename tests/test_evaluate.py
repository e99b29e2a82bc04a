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
    c = np.array([[50, 2, 0], [6, 8, 0], [4, 2, 6]])
    precision, recall = object_precision_recall(c)
    assert abs(precision - 100 * 14 / 18) < 1e-9  # 18 pixels labelled as objects, 14 right
    assert abs(recall - 100 * 14 / 26) < 1e-9  # 26 object pixels, 14 found
    e = metrics_entry(c, ["bg", "a", "b"])
    assert e["object_precision"] == round(100 * 14 / 18, 3) and e["object_recall"] == round(100 * 14 / 26, 3)
    assert object_precision_recall(np.diag([5, 0, 0])) == (0.0, 0.0)  # nothing labelled, no objects
    # per class: a is labelled 12 times (8 right) and is 14 pixels; b is labelled 6 times, all right, of 12
    assert e["per_class_precision"] == {"bg": round(5000 / 60, 3), "a": round(800 / 12, 3), "b": 100.0}
    assert e["per_class_recall"] == {"bg": round(5000 / 52, 3), "a": round(800 / 14, 3), "b": 50.0}
    assert metrics_entry(np.diag([5, 0, 0]), ["bg", "a", "b"])["per_class_precision"]["a"] is None


def test_label_stats_need_no_ground_truth():
    from mcof_tf.evaluate import label_stats, stats_entry

    labels = np.array([[0, 1], [255, 1]])
    previous = np.array([[0, 2], [1, 255]])  # two pixels labelled in both; one of them changed
    v = label_stats(labels, 3, tags=[1, 2], previous=previous, confidence=np.array([0.5, 1.0]))
    v = v + label_stats(np.array([[2]]), 3, tags=[2])
    e = stats_entry(v, ["bg", "a", "b"])
    assert e == {
        "images": 2,
        "labelled": 80.0,
        "share": {"bg": 20.0, "a": 40.0, "b": 20.0},
        "images_with_an_unlabelled_tag": 1,
        "changed": 50.0,
        "confidence": 75.0,
    }
    assert stats_entry(label_stats(np.zeros((2, 2)), 3), ["bg", "a", "b"])["changed"] is None
