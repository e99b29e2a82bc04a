"""Segment image folders (or buckets) with an exported SavedModel.

    python -m mcof_tf.predict --model saved_models/<name>/<version> --images DIR|GLOB --out DIR
                              [--crf] [--scales 0.75,1,1.25] [--overlay]

For each input image `<rel>.<ext>` (its path relative to DIR, or to the glob's folder) it writes
`OUT/<rel>.png`, a VOC-palette PNG of class indices at the image's resolution, and with --overlay
`OUT/overlays/<rel>.jpg` (the image blended with the colours). --scales averages the class
probabilities of several input scales; --crf refines them with a dense CRF (pydensecrf).
Files that cannot be decoded are skipped and listed with the reason in OUT/rejected.jsonl; outputs
already present are kept, so a killed run resumes where it stopped. The model runs through its
`predict_logits` signature, as exported by `python -m mcof_tf.export`; `beam_jobs.predict` is the
same at scale; the per-image work of both is in `mcof_tf.inference`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Optional

import tensorflow as tf

from mcof_tf import log as log_setup
from mcof_tf.fileio import check_output_apart, folder_lock, writable_dir, write_bytes_atomic
from mcof_tf.inference import (
    Predictor,
    add_options,
    check_saved_model,
    claim_output,
    list_inputs,
    parse_scales,
    predict_file,
    unique_outputs,
)

log = logging.getLogger(__name__)

REJECTED_FILE = "rejected.jsonl"


def run(
    model: str,
    images: str,
    out_dir: str,
    scales: Sequence[float] = (1.0,),
    crf: bool = False,
    overlay: bool = False,
) -> dict:
    """Segment every image; returns {"read", "written", "skipped_existing", "rejected": [...]}."""
    from mcof_tf.data.voc import RejectedInput

    check_saved_model(model)
    base, paths = list_inputs(images)
    check_output_apart(out_dir, {"input images": base})  # the outputs are PNGs too: never read back
    writable_dir(out_dir)
    with folder_lock(out_dir):  # two runs on one folder would overwrite each other's summary
        claim_output(out_dir, model, scales, crf)
        predictor = Predictor(model)
        unique, rejected = unique_outputs(paths, base)
        written, existing = 0, 0
        started = time.time()
        for i, path in enumerate(unique, 1):
            try:
                _, computed = predict_file(predictor, path, base, out_dir, scales, crf, overlay)
                written += computed
                existing += not computed
            except RejectedInput as e:
                rejected.append({"id": path, "reason": str(e)})
            except (OSError, tf.errors.OpError) as e:  # unreadable: a dangling link, no permission
                rejected.append({"id": path, "reason": f"cannot be read: {type(e).__name__}: {e}"})
            if i % 20 == 0 or i == len(unique):
                log.info(f"predict: {i}/{len(unique)} images ({time.time() - started:.1f}s)")
        write_bytes_atomic(
            f"{out_dir.rstrip('/')}/{REJECTED_FILE}", "".join(json.dumps(r) + "\n" for r in rejected).encode()
        )
        summary = {"read": len(paths), "written": written, "skipped_existing": existing, "rejected": rejected}
        print(
            f"predict: read {len(paths)}, written {written}, already done {existing}, rejected {len(rejected)}"
            + (f" (see {out_dir}/{REJECTED_FILE})" if rejected else ""),
            flush=True,
        )
        return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved_models/<name>/<version>")
    p.add_argument(
        "--images", required=True, help="a folder (searched recursively) or a glob, local or gs://"
    )
    p.add_argument("--out", required=True)
    add_options(p)
    log_setup.add_verbose_flag(p)
    a = p.parse_args(argv)
    log_setup.setup(a.verbose)
    try:
        run(a.model, a.images, a.out, parse_scales(a.scales), a.crf, a.overlay)
    except (FileNotFoundError, ValueError, PermissionError, tf.errors.OpError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
