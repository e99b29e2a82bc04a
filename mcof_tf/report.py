"""The run report: the paper's Table 3 (every stage's mIoU, object and per-class precision / recall),
label statistics that need no ground truth, Fig. 6-style strips and the mIoU curve, all from the
stages' manifests (the Beam relabel job sums confusion matrices and statistics while it relabels).

    python -m mcof_tf.report --workdir runs/synthetic      recompute report.json / report.md / PNGs
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np

from beam_jobs import common
from mcof_tf import fileio
from mcof_tf import log as log_setup
from mcof_tf.data import records
from mcof_tf.data.voc import IGNORE_LABEL
from mcof_tf.fileio import read_json, write_bytes_atomic, write_json_atomic
from mcof_tf.method.labels import paint


def _iterations(workdir: str, last: Optional[int] = None) -> list[int]:
    """1, 2, ... for every iter<t> folder of the workdir, up to `last` (None: all)."""
    t = 0
    while fileio.isdir(os.path.join(workdir, f"iter{t + 1}")) and (last is None or t < last):
        t += 1
    return list(range(1, t + 1))


def _metric_rows(workdir: str, last: Optional[int] = None) -> list[dict]:
    rows = []

    def add(folder, name, stage, split, iteration):
        m = common.read_manifest(os.path.join(workdir, folder)) or {}
        metrics, stats = m.get("metrics", {}).get(name), m.get("stats", {}).get(name)
        if metrics or stats:  # metrics need ground truth; stats do not
            rows.append(
                {"iteration": iteration, "stage": stage, "split": split, **(metrics or {}), "stats": stats}
            )

    add("seeds", "seeds", "seeds", "train", 0)
    for t in _iterations(workdir, last):
        add(f"iter{t}/regions", "regionnet", "regionnet", "train", t)
        add(f"iter{t}/regions", "regionnet_crf", "regionnet_crf", "train", t)  # labels.region_crf
        add(f"iter{t}/regions", "refined", "refined", "train", t)
        add(f"iter{t}/regions", "agreed", "agreed", "train", t)  # labels.agreement: what PixelNet learns
        add(f"iter{t}/masks", "pixelnet", "pixelnet", "train", t)
        add(f"iter{t}/masks", "pixelnet_crf", "pixelnet_crf", "train", t)
        # the next seeds, when a confidence cut (min_confidence) or saliency_background applies
        add(f"iter{t}/masks", "masks", "masks", "train", t)
        add(f"iter{t}/val", "pixelnet", "pixelnet", "val", t)
        add(f"iter{t}/val", "pixelnet_crf", "pixelnet_crf", "val", t)
    return rows


USAGE = ("seconds", "cpu_percent", "peak_rss_mb")  # what each stage records (mcof_tf.usage)


def stage_costs(workdir: str, last: Optional[int] = None) -> dict:
    """{"seconds": {folder: s}, "cpu_percent": {...}, "peak_rss_mb": {...}} of every finished stage, in
    the loop's order, from the Beam stages' manifests and the training stages' train.json (the last
    attempt's, when a stage was resumed after a kill; mcof_tf.usage says what the figures cover)."""
    folders = ["records/train", "records/val", "groundtruth", "cam", "seeds"]
    for t in _iterations(workdir, last):
        folders += [f"iter{t}/{f}" for f in ("regionnet", "regions", "pixelnet", "masks", "val")]
    costs = {key: {} for key in USAGE}
    for folder in folders:
        path = os.path.join(workdir, folder)
        info = common.read_manifest(path) or read_json(os.path.join(path, "train.json")) or {}
        for key in USAGE:
            if info.get(key) is not None:
                costs[key][folder] = round(float(info[key]), 1)
    return costs


def _strips(workdir: str, n: int = 4, last: Optional[int] = None) -> Optional[dict]:
    """The first `n` training images through the stages, next to the ground truth where there is one
    (Fig. 6)."""
    folders = [("seeds", "seeds")]
    for t in _iterations(workdir, last):
        folders += [(f"iter{t}/regions", f"it{t} regions"), (f"iter{t}/masks", f"it{t} PixelNet")]
    folders = [(f, name) for f, name in folders if common.read_manifest(os.path.join(workdir, f))]
    if not folders:
        return None
    # only the n chosen images are decoded: the folders hold the whole training set
    ids = sorted(records.record_ids(os.path.join(workdir, folders[0][0], "*.tfrecord")))[:n]
    by_stage = {
        f: {r.id: r for r in records.read_records(os.path.join(workdir, f, "*.tfrecord"), set(ids))}
        for f, _ in folders
    }
    rows = []
    with_gt = all(by_stage[folders[0][0]][i].groundtruth is not None for i in ids)
    for i in ids:
        first = by_stage[folders[0][0]][i]
        row = [first.image]
        for f, _ in folders:
            r = by_stage[f].get(i)
            if r is None:  # rejected at that stage
                row.append(np.full(first.superpixels.shape, IGNORE_LABEL, np.uint8))
            else:
                row.append(r.labels if r.labels is not None else paint(r.superpixel_labels, r.superpixels))
        if with_gt:
            row.append(first.groundtruth)
        rows.append(row)
    return {
        "columns": ["image"] + [name for _, name in folders] + (["ground truth"] if with_gt else []),
        "rows": rows,
    }


def report(workdir: str, last: Optional[int] = None) -> dict:
    """(Re)compute report.json, report.md and the figures of a workdir from its stages' manifests
    (iterations up to `last`; default: every finished one)."""
    info = read_json(os.path.join(workdir, "config.json"))
    if info is None:
        raise FileNotFoundError(f"{workdir} is not an mcof_tf workdir (no config.json)")
    manifest = common.read_manifest(os.path.join(workdir, "records", info["config"]["data"]["train_split"]))
    classes = manifest["classes"] if manifest else []
    rows = _metric_rows(workdir, last)
    return write_report(
        workdir,
        rows,
        classes,
        _strips(workdir, last=last),
        title=f"{info['config']['experiment']['name']} ({info['variant']})",
        costs=stage_costs(workdir, last),
    )


def write_report(
    workdir: str,
    rows: list[dict],
    classes: Sequence[str],
    strips: Optional[dict] = None,
    title: str = "",
    costs: Optional[dict] = None,
) -> dict:
    """report.json, report.md and the figures from rows of
    {"iteration", "stage", "split", "miou", "per_class"}."""
    costs = stage_costs(workdir) if costs is None else costs
    report = {"title": title, "classes": list(classes), "stages": rows, **costs}
    write_json_atomic(os.path.join(workdir, "report.json"), report)
    _markdown(workdir, rows, classes, title, costs)
    _progress_figure(workdir, rows)
    if strips:
        _strip_figure(workdir, strips, classes)
    return report


def summary_line(row: dict) -> str:
    """One report row as a console line: mIoU where there is ground truth, else the labelled share."""
    st = row.get("stats") or {}
    what = (
        f"mIoU {row['miou']:6.2f}"
        if row.get("miou") is not None
        else f"labelled {st.get('labelled', 0) or 0:5.1f} %"
    )
    return f"iteration {row['iteration']}  {row['stage']:12s}  {row['split']:5s}  {what}"


def _markdown(workdir, rows, classes, title, costs=None):
    lines = [f"# {title or 'MCOF run report'}", ""]
    scored = [r for r in rows if r.get("miou") is not None]

    def num(v, digits=1):
        return "-" if v is None else f"{v:.{digits}f}"

    if scored:
        lines += [
            "mIoU (%) of every stage, as the paper's Table 3; object precision / recall (%): of the pixels "
            "labelled as an object, the share with the right class / of the object pixels, the share found "
            "(unlabelled counts as background).",
            "",
            "| iteration | stage | split | mIoU | object precision | object recall |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['iteration']} | {r['stage']} | {r['split']} | {r['miou']:.2f} | "
            f"{num(r.get('object_precision'))} | {num(r.get('object_recall'))} |"
            for r in scored
        ]

        def class_table(caption, cell):  # one row per scored stage, one column per class
            head = ["", caption, "", "| iteration | stage | split | " + " | ".join(classes) + " |"]
            return (
                head
                + ["|---|---|---|" + "---|" * len(classes)]
                + [
                    f"| {r['iteration']} | {r['stage']} | {r['split']} | "
                    + " | ".join(cell(r, c) for c in classes)
                    + " |"
                    for r in scored
                ]
            )

        lines += class_table("Per-class IoU (%):", lambda r, c: num(r["per_class"].get(c)))
        lines += class_table(
            "Per-class precision / recall (%): precise seeds whose recall grows stage by stage is the paper's story.",
            lambda r, c: (
                f"{num(r.get('per_class_precision', {}).get(c), 0)} / "
                f"{num(r.get('per_class_recall', {}).get(c), 0)}"
            ),
        )
        lines.append("")
    else:
        lines += ["The dataset has no ground-truth masks: no mIoU. What the labels themselves show:", ""]
    described = [r for r in rows if r.get("stats")]
    if described:
        lines += [
            "Without ground truth: labelled = share of pixels with a label (not 255); confidence = the "
            "network's mean top probability; changed = share of the pixels labelled both before and after "
            "the stage whose label it changed; tag unlabelled = images with a tag that got no pixel; then "
            "each class's share (%) of the pixels.",
            "",
            "| iteration | stage | split | labelled | confidence | changed | tag unlabelled | "
            + " | ".join(classes)
            + " |",
            "|---|---|---|---|---|---|---|" + "---|" * len(classes),
        ]
        for r in described:
            st = r["stats"]
            lines.append(
                f"| {r['iteration']} | {r['stage']} | {r['split']} | {num(st['labelled'])} | "
                f"{num(st['confidence'])} | {num(st['changed'])} | {st['images_with_an_unlabelled_tag']} "
                f"of {st['images']} | " + " | ".join(num(st["share"].get(c)) for c in classes) + " |"
            )
    seconds = (costs or {}).get("seconds")
    if seconds:
        cpu, peak = costs.get("cpu_percent", {}), costs.get("peak_rss_mb", {})
        lines += [
            "",
            f"What each stage used ({sum(seconds.values()):.0f} s in all; CPU: user + system time over wall "
            "time, 200 % = two cores busy):",
            "",
            "| stage | seconds | CPU % | peak RSS (MB) |",
            "|---|---|---|---|",
        ] + [
            f"| {folder} | {s:.0f} | {num(cpu.get(folder), 0)} | {num(peak.get(folder), 0)} |"
            for folder, s in seconds.items()
        ]
    write_bytes_atomic(os.path.join(workdir, "report.md"), ("\n".join(lines) + "\n").encode())


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
    fileio.save_figure(fig, os.path.join(workdir, "miou_progress.png"), dpi=100)
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
    fileio.save_figure(fig, os.path.join(workdir, "stages.png"), dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    log_setup.add_verbose_flag(p)
    args = p.parse_args(argv)
    log_setup.setup(args.verbose)
    try:
        rep = report(args.workdir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rep["stages"]:
        print(summary_line(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
