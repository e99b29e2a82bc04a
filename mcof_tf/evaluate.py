"""Evaluation: confusion matrices, mIoU, and the run report (the paper's Table 3, Figs. 6 and 8).

    python -m mcof_tf.evaluate --workdir runs/synthetic      recompute report.json / report.md / PNGs

A prediction of 255 (a seed left unlabelled) counts as background; ground-truth 255 (void) is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

IGNORE_LABEL = 255


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C counts, rows = ground truth, columns = prediction."""
    valid = gt != IGNORE_LABEL
    p = np.where(pred == IGNORE_LABEL, 0, pred)[valid].astype(np.int64)
    g = gt[valid].astype(np.int64)
    if g.size and (g.max() >= num_classes or p.max() >= num_classes):
        raise ValueError(f"labels outside the {num_classes} classes")
    return np.bincount(g * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both ground truth and prediction."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU in percent over the classes that occur (VOC convention), 0..100."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0


def object_precision_recall(conf: np.ndarray) -> tuple[float, float]:
    """(precision, recall) in percent of the object pixels (every class but background, index 0):
    of the pixels labelled as some object, the share labelled with the right one; of the ground-truth
    object pixels, the share found. Unlabelled (255) predictions count as background, so sparse but
    precise seeds have a high precision and a low recall (the paper's seeds)."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)[1:].sum()
    labelled, present = conf[:, 1:].sum(), conf[1:, :].sum()
    return (float(100 * tp / labelled) if labelled else 0.0), (float(100 * tp / present) if present else 0.0)


def precision_recall_per_class(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's precision (of the pixels labelled c, the share that are c) and recall (of the
    pixels that are c, the share labelled c), as fractions; NaN where nothing was labelled / present."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(conf.sum(0) > 0, tp / conf.sum(0), np.nan), np.where(conf.sum(1) > 0, tp / conf.sum(1), np.nan)


def metrics_entry(conf: np.ndarray, classes: Sequence[str]) -> dict:
    iou = iou_per_class(conf)
    precision, recall = object_precision_recall(conf)
    per_p, per_r = precision_recall_per_class(conf)

    def pct(values):
        return {c: (None if np.isnan(v) else round(float(v) * 100, 3)) for c, v in zip(classes, values)}

    return {"miou": round(mean_iou(conf), 3),
            "object_precision": round(precision, 3), "object_recall": round(recall, 3),
            "per_class": pct(iou), "per_class_precision": pct(per_p), "per_class_recall": pct(per_r)}


def label_stats(labels: np.ndarray, num_classes: int, tags=None, previous: Optional[np.ndarray] = None,
                confidence: Optional[np.ndarray] = None) -> np.ndarray:
    """What can be said of one image's labels without ground truth, as a vector to sum over images:
    [pixels of each class (C), unlabelled pixels, images, images with a tag that got no pixel,
    pixels whose label changed from `previous`, pixels labelled in both, summed confidence, pixels].
    tags: the image's tags (None: not checked); confidence: the network's top probability per pixel."""
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(np.where(labels == IGNORE_LABEL, num_classes, labels).ravel(), minlength=num_classes + 1)
    if counts.size > num_classes + 1:
        raise ValueError(f"labels outside the {num_classes} classes")
    missing = tags is not None and any(counts[int(t)] == 0 for t in tags)
    changed = compared = 0
    if previous is not None:
        both = (labels != IGNORE_LABEL) & (np.asarray(previous) != IGNORE_LABEL)
        compared, changed = int(both.sum()), int((both & (labels != previous)).sum())
    conf = (float(np.sum(confidence)), int(np.size(confidence))) if confidence is not None else (0.0, 0)
    return np.concatenate([counts, [1, int(missing), changed, compared, conf[0], conf[1]]]).astype(np.float64)


def stats_entry(summed: np.ndarray, classes: Sequence[str]) -> dict:
    """Summed `label_stats` vectors → shares in percent (None where nothing was measured)."""
    c = len(classes)
    counts, (images, missing, changed, compared, conf, conf_n) = summed[:c + 1], summed[c + 1:]
    pixels = counts.sum()

    def pct(a, b):
        return round(float(100 * a / b), 3) if b else None

    return {"images": int(images), "labelled": pct(pixels - counts[c], pixels),
            "share": {name: pct(counts[i], pixels) for i, name in enumerate(classes)},
            "images_with_an_unlabelled_tag": int(missing), "changed": pct(changed, compared),
            "confidence": pct(conf, conf_n)}


# ---------------------------------------------------------------------------------------------- report

STAGE_ORDER = ("seeds", "regionnet", "refined", "pixelnet", "pixelnet_crf", "masks")


def write_report(workdir: str, rows: list[dict], classes: Sequence[str], strips: Optional[dict] = None,
                 title: str = "") -> dict:
    """report.json, report.md and the figures from rows of
    {"iteration", "stage", "split", "miou", "per_class"}."""
    report = {"title": title, "classes": list(classes), "stages": rows}
    with open(os.path.join(workdir, "report.json.tmp"), "w") as f:
        json.dump(report, f, indent=1)
    os.replace(os.path.join(workdir, "report.json.tmp"), os.path.join(workdir, "report.json"))
    _markdown(workdir, rows, classes, title)
    _progress_figure(workdir, rows)
    if strips:
        _strip_figure(workdir, strips, classes)
    return report


def summary_line(row: dict) -> str:
    """One report row as a console line: mIoU where there is ground truth, else the labelled share."""
    st = row.get("stats") or {}
    what = (f"mIoU {row['miou']:6.2f}" if row.get("miou") is not None
            else f"labelled {st.get('labelled', 0) or 0:5.1f} %")
    return f"iteration {row['iteration']}  {row['stage']:12s}  {row['split']:5s}  {what}"


def _markdown(workdir, rows, classes, title):
    lines = [f"# {title or 'MCOF run report'}", ""]
    scored = [r for r in rows if r.get("miou") is not None]

    def num(v, digits=1):
        return "-" if v is None else f"{v:.{digits}f}"

    if scored:
        lines += ["mIoU (%) of every stage, as the paper's Table 3; object precision / recall (%): of the pixels "
                  "labelled as an object, the share with the right class / of the object pixels, the share found "
                  "(unlabelled counts as background).", "",
                  "| iteration | stage | split | mIoU | object precision | object recall |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['iteration']} | {r['stage']} | {r['split']} | {r['miou']:.2f} | "
                  f"{num(r.get('object_precision'))} | {num(r.get('object_recall'))} |" for r in scored]
        lines += ["", "Per-class IoU (%):", "",
                  "| iteration | stage | split | " + " | ".join(classes) + " |",
                  "|---|---|---|" + "---|" * len(classes)]
        lines += [f"| {r['iteration']} | {r['stage']} | {r['split']} | "
                  + " | ".join(num(r["per_class"].get(c)) for c in classes) + " |" for r in scored]
        lines += ["", "Per-class precision / recall (%): precise seeds whose recall grows stage by stage is the "
                  "paper's story.", "", "| iteration | stage | split | " + " | ".join(classes) + " |",
                  "|---|---|---|" + "---|" * len(classes)]
        lines += [f"| {r['iteration']} | {r['stage']} | {r['split']} | " + " | ".join(
                  f"{num(r.get('per_class_precision', {}).get(c), 0)} / {num(r.get('per_class_recall', {}).get(c), 0)}"
                  for c in classes) + " |" for r in scored]
        lines.append("")
    else:
        lines += ["The dataset has no ground-truth masks: no mIoU. What the labels themselves show:", ""]
    described = [r for r in rows if r.get("stats")]
    if described:
        lines += ["Without ground truth: labelled = share of pixels with a label (not 255); confidence = the "
                  "network's mean top probability; changed = share of the pixels labelled both before and after "
                  "the stage whose label it changed; tag unlabelled = images with a tag that got no pixel; then "
                  "each class's share (%) of the pixels.", "",
                  "| iteration | stage | split | labelled | confidence | changed | tag unlabelled | "
                  + " | ".join(classes) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(classes)]
        for r in described:
            st = r["stats"]
            lines.append(f"| {r['iteration']} | {r['stage']} | {r['split']} | {num(st['labelled'])} | "
                         f"{num(st['confidence'])} | {num(st['changed'])} | {st['images_with_an_unlabelled_tag']} "
                         f"of {st['images']} | " + " | ".join(num(st["share"].get(c)) for c in classes) + " |")
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _progress_figure(workdir, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("miou") is not None and r["stage"] not in ("pixelnet_crf", "masks")]
    if not rows:  # no ground truth
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in rows if r["split"] == "train"]
    xs = list(range(len(train)))
    ax.plot(xs, [r["miou"] for r in train], "o-", label="train (every stage)")
    ax.set_xticks(xs, [f"{r['iteration']}:{r['stage']}" for r in train], rotation=45, ha="right", fontsize=8)
    val = [(i, r) for i, r in enumerate(train) if r["stage"] == "pixelnet"]
    val_rows = [r for r in rows if r["split"] == "val" and r["stage"] == "pixelnet"]
    if val and len(val_rows) == len(val):
        ax.plot([i for i, _ in val], [r["miou"] for r in val_rows], "s--", label="val (PixelNet)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mIoU through the stages and iterations")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "miou_progress.png"), dpi=100)
    plt.close(fig)


def _strip_figure(workdir, strips, classes):
    """strips: {"columns": [names], "rows": [[image, label maps...], ...]} → stages.png (Fig. 6 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mcof_tf.data.voc import voc_palette

    pal = voc_palette()
    cols, rows = strips["columns"], strips["rows"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols), 1.6 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, item in enumerate(row):
            ax = axes[i][j]
            ax.imshow(item if item.ndim == 3 else pal[item])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "stages.png"), dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    args = p.parse_args(argv)
    from mcof_tf import loop

    try:
        report = loop.report(args.workdir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in report["stages"]:
        print(summary_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
