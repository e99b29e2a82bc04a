"""The mined masks as a product: a run's training-set masks as VOC-palette PNGs named by image id.

    python -m mcof_tf.export_masks --workdir runs/synthetic --out masks/ [--iteration T]

writes OUT/<id>.png for every training image (the layout of SBD's `SegmentationClassAug`: class indices
in a palette PNG at the image's resolution, 255 = unlabelled), from the masks of the last iteration
(or of iteration T) — the labels the loop would learn from next, so any segmenter can be trained on them.
OUT/export_masks.json, written last, names the source, the classes and the count; a second run with the
same source finds it and does nothing. The loop writes them to WORKDIR/SegmentationClassAug/ itself.

OUT is never a folder of someone else's files: a folder holding PNGs without an export_masks.json
(a dataset's ground truth, say) is refused, so nothing the user owns is overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional

from mcof_tf import log as log_setup

log = logging.getLogger(__name__)

MARKER = "export_masks.json"


def last_iteration(workdir: str) -> int:
    """The highest t whose iter<t>/masks stage is complete (0: none)."""
    from beam_jobs.common import read_manifest

    t = 0
    while read_manifest(os.path.join(workdir, f"iter{t + 1}", "masks")):
        t += 1
    return t


def _check_out(out_dir: str) -> Optional[dict]:
    """The previous export's marker in `out_dir`, None if it is new or empty; ValueError if it holds
    PNGs this command did not write."""
    from mcof_tf import fileio

    previous = fileio.read_json(os.path.join(out_dir, MARKER))
    if previous is not None:
        return previous
    if fileio.isdir(out_dir) and fileio.glob(os.path.join(out_dir, "*.png")):
        raise ValueError(
            f"{out_dir} already holds PNG files that export_masks did not write (ground truth?); "
            "choose an empty or new --out folder"
        )
    return None


def export_masks(workdir: str, out_dir: str, iteration: Optional[int] = None) -> dict:
    """Write the masks of `iteration` (default: the last) of a workdir to `out_dir`; returns the marker."""
    from beam_jobs.common import read_manifest
    from mcof_tf.data import records
    from mcof_tf.data.voc import check_id, palette_png
    from mcof_tf.fileio import absolute, check_output_apart, folder_lock, writable_dir, write_bytes_atomic
    from mcof_tf.method.labels import paint

    last = last_iteration(workdir)
    if last == 0:
        raise FileNotFoundError(f"{workdir} has no finished iteration (no iter1/masks/manifest.json)")
    t = last if iteration is None else iteration
    if not 1 <= t <= last:
        raise ValueError(f"--iteration {t}: {workdir} has finished iterations 1..{last}")
    source = os.path.join(workdir, f"iter{t}", "masks")
    check_output_apart(out_dir, {"masks' records": source})
    manifest = read_manifest(source)
    with folder_lock(out_dir):  # one export at a time into a folder
        previous = _check_out(out_dir)
        mine = {
            "workdir": absolute(workdir),
            "iteration": t,
            "source": manifest["fingerprint"],
            "classes": manifest.get("classes", []),
            "count": manifest["written"],
        }
        if previous == mine:
            log.info(f"export_masks: {out_dir} holds iteration {t}'s masks already; nothing to do")
            return mine
        inside = absolute(out_dir).startswith(mine["workdir"].rstrip("/") + "/")  # the loop's own folder
        if (
            previous and previous.get("workdir") != mine["workdir"] and not inside
        ):  # (a moved workdir keeps it)
            raise ValueError(
                f"{out_dir} holds the masks of another run ({previous.get('workdir')}); choose another --out"
            )
        writable_dir(out_dir)
        started, n = time.time(), 0
        for rec in records.read_records(os.path.join(source, "*.tfrecord")):
            labels = rec.labels if rec.labels is not None else paint(rec.superpixel_labels, rec.superpixels)
            write_bytes_atomic(os.path.join(out_dir, f"{check_id(rec.id)}.png"), palette_png(labels))
            n += 1
            if n % 200 == 0:
                log.info(f"export_masks: {n}/{mine['count']} masks written")
        if n != mine["count"]:
            raise RuntimeError(f"{source} holds {n} records but its manifest counts {mine['count']}")
        write_bytes_atomic(os.path.join(out_dir, MARKER), json.dumps(mine, indent=1).encode())
        log.info(f"export_masks: {n} masks of iteration {t} → {out_dir} in {time.time() - started:.1f}s")
        return mine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a run's workdir (python -m mcof_tf.train --workdir)")
    p.add_argument("--out", required=True, help="folder for <id>.png (new, empty, or a previous export's)")
    p.add_argument("--iteration", type=int, default=None, help="which iteration's masks (default: the last)")
    log_setup.add_verbose_flag(p)
    args = p.parse_args(argv)
    log_setup.setup(args.verbose)
    try:
        export_masks(args.workdir, args.out, args.iteration)
    except (
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as e:  # RuntimeError: a job lost or rejected every input
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
