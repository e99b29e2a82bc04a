"""Benchmarks (not tests): they print their figures, which the docs quote with the command.

    python -m mcof_tf.bench preprocess [--config C] [--workers 1,2]   Beam preprocess throughput
    python -m mcof_tf.bench saliency --records GLOB                   saliency MAE / max F vs ground truth
    python -m mcof_tf.bench train [--steps 3]                          PixelNet training step: images/s,
                                                                      FLOPs, fraction of the matmul ceiling
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


def matmul_flops_per_second(n: int = 2048, reps: int = 20) -> float:
    """This machine's fp32 matmul throughput through TensorFlow (the ceiling a conv net can approach)."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n]) / float(n) ** 0.5  # keeps the chained products finite

    @tf.function
    def run():
        acc = a
        for _ in range(reps):  # a chain: each product needs the last, so none can be skipped or merged
            acc = tf.matmul(acc, b)
        return acc

    run().numpy()  # trace and warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        run().numpy()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 * reps / best


def forward_flops(model, height: int, width: int) -> float:
    """Multiply-adds x 2 of every convolution and dense layer for one image (other layers are noise)."""
    import keras

    layers = [l for l in model._flatten_layers(include_self=False) if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    probe = keras.Model(model.input, [l.output for l in layers])
    outs = probe(np.zeros((1, height, width, 3), np.float32), training=False)
    total = 0.0
    for layer, out in zip(layers, outs):
        k = layer.kernel.shape  # (kh, kw, cin, cout) or (cin, cout)
        total += 2.0 * float(np.prod(k)) * float(np.prod(out.shape[1:-1]))
    return total


def _time_fit(model, ds, steps: int) -> float:
    """Median seconds per training step in steady state (after tracing and the input's start-up)."""
    import keras

    stamps = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: stamps.append(time.perf_counter()))
    model.fit(ds, epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[clock])
    return float(np.median(np.diff(stamps[1:])))  # the first steps trace, compile and fill buffers


def bench_train(args) -> None:
    import tensorflow as tf

    from mcof_tf import training
    from mcof_tf.config import load_config
    from mcof_tf.data import ensure_dataset

    ceiling = matmul_flops_per_second()
    print(f"fp32 matmul ceiling (2048x2048, TensorFlow): {ceiling / 1e9:.1f} GFLOP/s", flush=True)
    strategy = training.make_strategy()
    for label, config, overrides in (("CPU config", "synthetic", []),
                                     ("paper 321 crop", "voc2012_vgg16", ["model.weights=none"])):
        cfg = load_config(config, overrides + args.overrides)
        num_classes = 21 if config == "voc2012_vgg16" else 7
        crop, batch = cfg.input.crop_size, args.batch or cfg.train.pixelnet.batch_size
        model = training.compiled_network("pixelnet", cfg, num_classes, 1000, strategy)
        flops = 3.0 * forward_flops(model, crop, crop) * batch  # backward ~ 2x forward
        rng = np.random.default_rng(0)
        x = rng.normal(0, 50, (batch, crop, crop, 3)).astype(np.float32)
        y = rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32)
        t_mem = _time_fit(model, tf.data.Dataset.from_tensors((x, y)).repeat(), args.steps)
        line = (f"{label}: PixelNet {cfg.model.backbone} crop {crop} batch {batch}: {t_mem:.3f} s/step, "
                f"{batch / t_mem:.2f} images/s, {flops / 1e9:.1f} GFLOP/step, {flops / t_mem / 1e9:.1f} GFLOP/s "
                f"= {flops / t_mem / ceiling:.2f} of the matmul ceiling")
        if args.records or config == "synthetic":
            pattern = args.records or _synthetic_records(cfg, ensure_dataset(cfg.data))
            cfg.train.pixelnet.batch_size = batch
            ds = training.input_dataset("pixelnet", pattern, cfg, num_classes, batch)
            t_pipe = _time_fit(model, ds, args.steps)
            line += f"; from TFRecords {t_pipe:.3f} s/step (input pipeline {max(t_pipe - t_mem, 0) / t_pipe:.1%} of the step)"
        print(line, flush=True)


def _synthetic_records(cfg, root: str) -> str:
    """Preprocessed records of the benchmark's train split (made once under the experiment's workdir)."""
    from beam_jobs import preprocess

    out = os.path.join(cfg.experiment.workdir, "records", cfg.data.train_split)
    preprocess.run(root, cfg.data.train_split, out, cfg)
    return os.path.join(out, "*.tfrecord")


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
    pt = sub.add_parser("train", help="PixelNet training-step throughput and efficiency")
    pt.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    pt.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    pt.add_argument("--records", default=None, help="TFRecords for the input-pipeline measurement")
    pt.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    {"preprocess": bench_preprocess, "saliency": bench_saliency, "train": bench_train}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
