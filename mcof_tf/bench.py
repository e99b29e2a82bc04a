"""Benchmarks (not tests): they print their figures, which the docs quote with the command.

    python -m mcof_tf.bench preprocess [--config C] [--workers 1,2]   Beam preprocess throughput
    python -m mcof_tf.bench saliency --records GLOB                   saliency MAE / max F vs ground truth
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def bench_preprocess(args) -> None:
    from mcof_tf.config import load_config
    from mcof_tf.data import ensure_dataset

    cfg = load_config(args.config, args.overrides)
    root = ensure_dataset(cfg.data)
    split = args.split or cfg.data.train_split
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "beam_jobs.preprocess", "--data-root", root, "--split", split,
                   "--out", out, "--direct_num_workers", str(workers)]
            if args.config:
                cmd += ["--config", args.config]
            for o in args.overrides:
                cmd += ["--set", o]
            if workers > 1:
                cmd += ["--direct_running_mode", "multi_processing"]
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.time() - t0
            with open(os.path.join(out, "manifest.json")) as f:
                m = json.load(f)
        mode = "multi_processing" if workers > 1 else "in_memory"
        print(f"preprocess workers={workers} ({mode}): {m['written']} images, pipeline {m['seconds']:.1f}s "
              f"= {m['written'] / m['seconds']:.2f} images/s; whole command {wall:.1f}s "
              f"= {m['written'] / wall:.2f} images/s", flush=True)


def bench_saliency(args) -> None:
    from mcof_tf.data import records
    from mcof_tf.vision.saliency import max_f_measure, precision_recall, saliency_mae

    maes, ps, rs, sources = [], [], [], set()
    for rec in records.read_records(args.records):
        if rec.groundtruth is None:
            continue
        valid = rec.groundtruth != records.IGNORE_LABEL
        fg = (rec.groundtruth > 0) & valid
        maes.append(saliency_mae(rec.saliency, fg, valid))
        p, r = precision_recall(rec.saliency, fg, valid)
        ps.append(p)
        rs.append(r)
        sources.add(rec.saliency_source)
    if not maes:
        raise SystemExit("no records with ground truth match " + args.records)
    print(f"saliency ({', '.join(sorted(sources))}) on {len(maes)} images: MAE {np.mean(maes):.4f}, "
          f"max F-measure (beta^2=0.3) {max_f_measure(np.array(ps), np.array(rs)):.4f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    pp = sub.add_parser("preprocess", help="Beam preprocess throughput on the config's dataset")
    pp.add_argument("--config", default=None)
    pp.add_argument("--set", dest="overrides", action="append", default=[])
    pp.add_argument("--split", default=None)
    pp.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ps = sub.add_parser("saliency", help="saliency quality against ground-truth foreground")
    ps.add_argument("--records", required=True, help="glob of preprocessed TFRecords")
    args = p.parse_args(argv)
    {"preprocess": bench_preprocess, "saliency": bench_saliency}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
