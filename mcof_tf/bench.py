"""Benchmarks (not tests): they print their figures, which the docs quote with the command.

python -m mcof_tf.bench preprocess [--config C] [--workers 1,2]   Beam preprocess throughput
python -m mcof_tf.bench saliency --records GLOB                   saliency MAE / max F vs ground truth
python -m mcof_tf.bench train [--steps 3]                          PixelNet training step: images/s,
                                                                  FLOPs, fraction of the matmul ceiling
python -m mcof_tf.bench serve [--images 10]                        SavedModel latency vs a direct Keras
                                                                  forward, CPU config and paper size
python -m mcof_tf.bench method [--config C] [--seeds 0,1,2]        the MCOF loop under several experiment
    [--variants mcof,no_saliency,direct_iterative,fully_supervised] seeds: mean ± std of every stage,
    [--iter 3] [--root runs/bench]                                 the ratio to full supervision and each
                                                                  ablation's difference (finished
                                                                  workdirs are reused, killed ones resume)
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from mcof_tf import fileio
from mcof_tf import log as log_setup
from mcof_tf.config import Config
from mcof_tf.fileio import read_json, write_json_atomic

log = logging.getLogger(__name__)


def bench_preprocess(args) -> None:
    from mcof_tf.config import load_config
    from mcof_tf.data import ensure_dataset

    cfg = load_config(args.config, args.overrides)
    root = ensure_dataset(cfg.data)
    split = args.split or cfg.data.train_split
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                "-m",
                "beam_jobs.preprocess",
                "--data-root",
                root,
                "--split",
                split,
                "--out",
                out,
                "--direct_num_workers",
                str(workers),
            ]
            if args.config:
                cmd += ["--config", args.config]
            for o in args.overrides:
                cmd += ["--set", o]
            if workers > 1:
                cmd += ["--direct_running_mode", "multi_processing"]
            t0 = time.time()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.time() - t0
            m = read_json(os.path.join(out, "manifest.json"))
        mode = "multi_processing" if workers > 1 else "in_memory"
        print(
            f"preprocess workers={workers} ({mode}): {m['written']} images, pipeline {m['seconds']:.1f}s "
            f"= {m['written'] / m['seconds']:.2f} images/s; whole command {wall:.1f}s "
            f"= {m['written'] / wall:.2f} images/s",
            flush=True,
        )


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
    print(
        f"saliency ({', '.join(sorted(sources))}) on {len(maes)} images: MAE {np.mean(maes):.4f}, "
        f"max F-measure (beta^2=0.3) {max_f_measure(np.array(ps), np.array(rs)):.4f}",
        flush=True,
    )


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
    return 2.0 * n**3 * reps / best


def forward_flops(model, height: int, width: int) -> float:
    """Multiply-adds x 2 of every convolution and dense layer for one image (other layers are noise)."""
    import keras

    from mcof_tf.training import all_layers

    layers = [l for l in all_layers(model)[1:] if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
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
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: stamps.append(time.perf_counter())
    )
    model.fit(ds, epochs=1, steps_per_epoch=steps + 2, verbose=0, callbacks=[clock], shuffle=False)
    return float(np.median(np.diff(stamps[1:])))  # the first steps trace, compile and fill buffers


def bench_train(args) -> None:
    import tensorflow as tf

    from mcof_tf import precision, training
    from mcof_tf.config import load_config
    from mcof_tf.data import ensure_dataset

    ceiling = matmul_flops_per_second()
    print(f"fp32 matmul ceiling (2048x2048, TensorFlow): {ceiling / 1e9:.1f} GFLOP/s", flush=True)
    policies = (args.precision,)
    if args.precision == "all":  # fp16 only where it can pay: CPUs have no fast fp16 (TF emulates it)
        gpus = precision.gpu_capabilities()
        policies = ("float32", "mixed_bfloat16") + (("mixed_float16",) if gpus else ())
    print(f"auto picks {' because '.join(precision.resolve('auto'))}", flush=True)
    strategy = training.make_strategy()
    for (label, config, overrides), policy in itertools.product(
        (("CPU config", "synthetic", []), ("paper 321 crop", "voc2012_vgg16", ["model.weights=none"])),
        policies,
    ):
        cfg = load_config(config, overrides + args.overrides + [f"train.mixed_precision={policy}"])
        num_classes = 21 if config == "voc2012_vgg16" else 7
        crop, batch = cfg.input.crop_size, args.batch or cfg.train.pixelnet.batch_size
        model = training.compiled_network("pixelnet", cfg, num_classes, 1000, strategy)
        flops = 3.0 * forward_flops(model, crop, crop) * batch  # backward ~ 2x forward
        rng = np.random.default_rng(0)
        x = rng.normal(0, 50, (batch, crop, crop, 3)).astype(np.float32)
        y = rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32)
        t_mem = _time_fit(model, tf.data.Dataset.from_tensors((x, y)).repeat(), args.steps)
        line = (
            f"{label}, {model.dtype_policy.name}, XLA {'on' if model.jit_compile else 'off'}: "
            f"PixelNet {cfg.model.backbone} crop {crop} batch {batch}: "
            f"{t_mem:.3f} s/step, "
            f"{batch / t_mem:.2f} images/s, {flops / 1e9:.1f} GFLOP/step, {flops / t_mem / 1e9:.1f} GFLOP/s "
            f"= {flops / t_mem / ceiling:.2f} of the matmul ceiling"
        )
        if args.records or config == "synthetic":
            pattern = args.records or _synthetic_records(cfg, ensure_dataset(cfg.data))
            cfg.train.pixelnet.batch_size = batch
            ds = training.input_dataset("pixelnet", pattern, cfg, num_classes, batch)
            t_pipe = _time_fit(model, ds, args.steps)
            share = max(t_pipe - t_mem, 0) / t_pipe
            line += f"; from TFRecords {t_pipe:.3f} s/step (input pipeline {share:.1%} of the step)"
        print(line, flush=True)


def _median_seconds(fn, items, repeats: int) -> float:
    """Median seconds per item over `repeats` passes, after one warm-up pass."""
    for it in items:
        fn(it)
    times = []
    for _ in range(repeats):
        for it in items:
            t0 = time.perf_counter()
            fn(it)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_serve(args) -> None:
    """Per-image latency of the exported SavedModel against the same Keras model called directly."""
    import tensorflow as tf

    from mcof_tf import training
    from mcof_tf.config import load_config
    from mcof_tf.export import export_saved_model

    for label, config, (h, w) in (
        ("CPU config", "synthetic", (128, 160)),
        ("paper size", "voc2012_vgg16", (375, 500)),
    ):
        cfg = load_config(config, ["model.weights=none"] + args.overrides)
        num_classes = 21 if config == "voc2012_vgg16" else 7
        model = training.NETWORKS["pixelnet"].build(num_classes, cfg)
        mean = tf.constant(cfg.input.mean_rgb, tf.float32)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (h, w, 3), np.uint8) for _ in range(args.images)]
        encoded = [tf.io.encode_png(im).numpy() for im in images]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pixelnet.keras")
            training.save_model(model, path)
            version = export_saved_model(
                path, os.path.join(tmp, "export"), [str(i) for i in range(num_classes)], cfg.input.mean_rgb
            )
            served = tf.saved_model.load(version)
            logits_sig, default_sig = (
                served.signatures["predict_logits"],
                served.signatures["serving_default"],
            )

            def keras_forward(im):
                return model(tf.constant(im[None], tf.float32) - mean, training=False).numpy()

            def keras_end_to_end(data):  # what serving_default does, written with the Keras model
                im = tf.cast(tf.io.decode_png(data, channels=3), tf.float32)
                logits = model(im[None] - mean, training=False)
                labels = tf.argmax(tf.image.resize(logits, [h, w])[0], -1)
                return tf.io.encode_png(tf.cast(labels, tf.uint8)[..., None]).numpy()

            compiled = tf.function(lambda x: model(x - mean, training=False))  # Keras model, traced once

            t_keras = _median_seconds(keras_forward, images, args.repeats)
            t_traced = _median_seconds(
                lambda im: compiled(tf.constant(im[None], tf.float32)).numpy(), images, args.repeats
            )
            t_logits = _median_seconds(
                lambda im: logits_sig(images=tf.constant(im[None], tf.float32))["logits"].numpy(),
                images,
                args.repeats,
            )
            t_keras_e2e = _median_seconds(keras_end_to_end, encoded, args.repeats)
            t_default = _median_seconds(
                lambda d: default_sig(images=tf.constant([d]))["label_png_bytes"].numpy(),
                encoded,
                args.repeats,
            )
        print(
            f"{label}: PixelNet {cfg.model.backbone} on {h}x{w} images ({args.images} images x {args.repeats}, "
            f"median per image): Keras forward eager {t_keras * 1e3:.1f} ms, in a tf.function "
            f"{t_traced * 1e3:.1f} ms; SavedModel predict_logits {t_logits * 1e3:.1f} ms "
            f"({t_logits / min(t_keras, t_traced):.2f}x the faster Keras); Keras decode+forward+resize+argmax+PNG "
            f"{t_keras_e2e * 1e3:.1f} ms, SavedModel serving_default {t_default * 1e3:.1f} ms "
            f"({t_default / t_keras_e2e:.2f}x)",
            flush=True,
        )


def _synthetic_records(cfg: Config, root: str) -> str:
    """Preprocessed records of the benchmark's train split (made once under the experiment's workdir)."""
    from beam_jobs import preprocess

    out = os.path.join(cfg.experiment.workdir, "records", cfg.data.train_split)
    preprocess.run(root, cfg.data.train_split, out, cfg)
    return os.path.join(out, "*.tfrecord")


METHOD_VARIANTS = ("mcof", "no_saliency", "direct_iterative", "fully_supervised")  # = loop.VARIANTS


def _mean_std(values) -> tuple[float, float, int]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else 0.0), len(v)


def summarize_method(reports: dict) -> dict:
    """reports: {(variant, seed): report.json dict} → per-variant rows of mean/std over seeds of every
    (iteration, stage, split) figure, the final val / fully supervised ratio, and each ablation's
    per-seed difference from "mcof" at the last iteration (mean/std over the seeds both have)."""
    table: dict = {}
    for (variant, seed), rep in sorted(reports.items()):
        for r in rep["stages"]:
            key = (variant, r["iteration"], r["stage"], r["split"])
            for metric in ("miou", "object_precision", "object_recall"):
                if r.get(metric) is not None:
                    table.setdefault(key, {}).setdefault(metric, {})[seed] = r[metric]
    from mcof_tf.evaluate import STAGE_ORDER

    def order(item):  # variants as listed, then iterations, stages in pipeline order, train before val
        variant, it, stage, split = item[0]
        return (
            METHOD_VARIANTS.index(variant) if variant in METHOD_VARIANTS else 99,
            it,
            STAGE_ORDER.index(stage) if stage in STAGE_ORDER else 99,
            split != "train",
        )

    rows = []
    for (variant, it, stage, split), metrics in sorted(table.items(), key=order):
        row = {"variant": variant, "iteration": it, "stage": stage, "split": split}
        for metric, by_seed in metrics.items():
            row[metric], row[metric + "_std"], row["seeds"] = _mean_std(list(by_seed.values()))
        rows.append(row)

    def final_val(variant):
        vals = [
            r for r in rows if r["variant"] == variant and r["split"] == "val" and r["stage"] == "pixelnet"
        ]
        return max(vals, key=lambda r: r["iteration"]) if vals else None

    out = {
        "rows": rows,
        "differences": [],
        "table3": table3_steps(table),
        "table3_handed_on": table3_steps(table, handed_on=True),
    }
    mcof, full = final_val("mcof"), final_val("fully_supervised")
    if mcof and full and full["miou"] > 0:
        out["ratio_to_fully_supervised"] = mcof["miou"] / full["miou"]
    if mcof:
        base = table[("mcof", mcof["iteration"], "pixelnet", "val")]["miou"]
        for variant in METHOD_VARIANTS[1:3]:
            key = (variant, mcof["iteration"], "pixelnet", "val")
            step = _paired_step(table[key]["miou"], base) if key in table else None
            if step:  # Table 4 / Fig. 8's sign, beyond its spread
                mean, std, n, holds = step
                out["differences"].append(
                    {
                        "variant": variant,
                        "iteration": mcof["iteration"],
                        "mcof_minus_variant": mean,
                        "std": std,
                        "seeds": n,
                        "holds": holds,
                    }
                )
    return out


def _paired_step(before: dict, after: dict, minimum: float = 0.0) -> Optional[tuple[float, float, int, bool]]:
    """{seed: value} before and after → (mean, std, seeds, holds) of each seed's own difference over the
    seeds both have (None when they share none); it holds when the mean reaches `minimum` and exceeds its std."""
    common = sorted(set(before) & set(after))
    if not common:
        return None
    mean, std, n = _mean_std([after[s] - before[s] for s in common])
    return mean, std, n, mean >= minimum and mean > std


# What each network's stage hands on where the config refines its raw output (labels.region_crf:
# RegionNet's regions after the CRF, which the refinement starts from; labels.crf: PixelNet's masks,
# the next seeds), for Table 3 read as the labels the loop passes along rather than the raw networks.
HANDED_ON = {"regionnet": "regionnet_crf", "pixelnet": "pixelnet_crf"}


def table3_steps(table: dict, handed_on: bool = False) -> list:
    """The paper's Table 3 as steps of MCOF's train mIoU: seeds → RegionNet₁ → refined₁ → PixelNet₁, then
    PixelNet₁ → the last PixelNet (which should gain at least 3). Each step is the mean ± std over seeds of
    the per-seed difference (paired: the seed's own run), and holds when it reaches its minimum and
    exceeds its std. `handed_on`: each network's row is what its stage hands on (HANDED_ON) where the
    runs have it. `table`: {(variant, iteration, stage, split): {"miou": {seed: value}}}."""
    runs = {
        (it, stage): m["miou"]
        for (v, it, stage, split), m in table.items()
        if v == "mcof" and split == "train"
    }
    last = max((it for it, stage in runs if stage == "pixelnet"), default=None)
    chain = [(0, "seeds", 0.0), (1, "regionnet", 0.0), (1, "refined", 0.0), (1, "pixelnet", 0.0)]
    if last is not None and last > 1:
        chain.append((last, "pixelnet", 3.0))
    if handed_on:  # a network's refined row where the runs have one, else its raw row
        chain = [(it, HANDED_ON[st] if (it, HANDED_ON.get(st)) in runs else st, m) for it, st, m in chain]
    nodes = [(it, stage, minimum) for it, stage, minimum in chain if (it, stage) in runs]
    steps = []
    for (it0, stage0, _), (it1, stage1, minimum) in zip(nodes, nodes[1:]):
        step = _paired_step(runs[(it0, stage0)], runs[(it1, stage1)], minimum)
        if step:
            mean, std, n, holds = step
            steps.append(
                {
                    "from": f"{stage0} {it0}",
                    "to": f"{stage1} {it1}",
                    "step": mean,
                    "std": std,
                    "seeds": n,
                    "minimum": minimum,
                    "holds": holds,
                }
            )
    return steps


def method_figure(summary: dict, path: str) -> None:
    """The variants side by side (the paper's Fig. 8): mean ± std train mIoU through the stages, and the
    PixelNet's val mIoU of each iteration; fully supervised as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if r.get("miou") is not None]
    order = []  # every (iteration, stage) of the train rows, in pipeline order
    for r in rows:
        if (
            r["split"] == "train"
            and r["variant"] != "fully_supervised"
            and (r["iteration"], r["stage"]) not in order
        ):
            order.append((r["iteration"], r["stage"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for variant in METHOD_VARIANTS[:3]:
        for split, style in (("train", "o-"), ("val", "s--")):
            pts = [
                (order.index((r["iteration"], r["stage"])), r)
                for r in rows
                if r["variant"] == variant
                and r["split"] == split
                and (r["iteration"], r["stage"]) in order
                and (split == "train" or r["stage"] == "pixelnet")
            ]
            if pts:
                ax.errorbar(
                    [x for x, _ in pts],
                    [r["miou"] for _, r in pts],
                    [r.get("miou_std", 0) for _, r in pts],
                    fmt=style,
                    capsize=3,
                    label=f"{variant} ({split})",
                )
    full = [r for r in rows if r["variant"] == "fully_supervised" and r["split"] == "val"]
    if full:
        ax.axhline(full[0]["miou"], color="grey", ls=":", label="fully supervised (val)")
    ax.set_xticks(
        range(len(order)), [f"{it}:{stage}" for it, stage in order], rotation=45, ha="right", fontsize=8
    )
    ax.set_ylabel("mIoU (%)")
    ax.set_title("mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fileio.save_figure(fig, path, dpi=100)
    plt.close(fig)


def bench_method(args) -> None:
    from mcof_tf.config import load_config

    cfg = load_config(args.config, args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(METHOD_VARIANTS))
    if unknown:
        raise SystemExit(
            f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(METHOD_VARIANTS)}"
        )
    flags = {
        "mcof": [],
        "no_saliency": ["--no-saliency"],
        "direct_iterative": ["--direct-iterative"],
        "fully_supervised": ["--fully-supervised"],
    }

    def one_run(variant, seed):
        workdir = os.path.join(args.root, cfg.experiment.name, f"{variant}-seed{seed}")
        cmd = [
            sys.executable,
            "-m",
            "mcof_tf.train",
            "--workdir",
            workdir,
            "--no-export",
            "--iter",
            str(1 if variant == "fully_supervised" else args.iterations),
            "--set",
            f"experiment.seed={seed}",
            *flags[variant],
        ]
        if args.config:
            cmd += ["--config", args.config]
        for o in args.overrides:
            cmd += ["--set", o]
        t0 = time.time()
        log.info(f"bench method: {variant} seed {seed} → {workdir}")
        fileio.makedirs(os.path.dirname(workdir))
        # the run's own output, kept beside its workdir (a local file: the child writes it as it goes)
        with open(workdir + ".log", "a") as out:  # fileio-exempt: a subprocess writes it
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        if code:  # said now, not when the runs beside it end; the others still finish and are summarised
            log.error(f"bench method: {variant} seed {seed} failed (exit {code}); its output: {workdir}.log")
            return None
        log.info(f"bench method: {variant} seed {seed} done in {time.time() - t0:.0f} s")
        return read_json(os.path.join(workdir, "report.json"))

    from mcof_tf.data import ensure_dataset

    ensure_dataset(cfg.data)  # once, before runs side by side would each generate the benchmark
    # --jobs runs side by side: one small-network run leaves part of a 2-core machine idle
    runs = [(variant, seed) for variant in variants for seed in seeds]
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        reports = dict(zip(runs, pool.map(lambda vs: one_run(*vs), runs)))
    failed = [f"{variant} seed {seed}" for (variant, seed), r in reports.items() if r is None]
    reports = {k: r for k, r in reports.items() if r is not None}
    if not reports:
        raise SystemExit(f"error: every run failed ({', '.join(failed)}); see the .log beside each workdir")
    summary = summarize_method(reports)
    write_json_atomic(os.path.join(args.root, cfg.experiment.name, "summary.json"), summary)
    method_figure(summary, os.path.join(args.root, cfg.experiment.name, "method.png"))
    print(
        f"\n{cfg.experiment.name}: mean ± std over seeds {args.seeds} (mIoU %, object precision / recall %)"
    )
    print(
        f"{'variant':17s} {'it':>2s} {'stage':13s} {'split':5s} {'mIoU':>13s} {'precision':>13s} {'recall':>13s}"
    )
    for r in summary["rows"]:

        def ms(metric):
            return f"{r[metric]:6.2f} ± {r[metric + '_std']:4.2f}" if metric in r else f"{'-':>13s}"

        print(
            f"{r['variant']:17s} {r['iteration']:2d} {r['stage']:13s} {r['split']:5s} {ms('miou')} "
            f"{ms('object_precision')} {ms('object_recall')}"
        )
    if "ratio_to_fully_supervised" in summary:
        print(f"final val / fully supervised: {summary['ratio_to_fully_supervised']:.3f}")
    for key, rows_are in (
        ("table3", "the networks' raw output"),
        ("table3_handed_on", "what each stage hands on"),
    ):
        for t in summary[key]:
            print(
                f"Table 3 step {t['from']} → {t['to']} (train, {rows_are}, paired per seed): {t['step']:+.2f} ± "
                f"{t['std']:.2f} over {t['seeds']} seeds (needs ≥ {t['minimum']:g} and above its std): "
                f"{'holds' if t['holds'] else 'fails'}"
            )
    for d in summary["differences"]:
        print(
            f"mcof - {d['variant']} (val, iteration {d['iteration']}): {d['mcof_minus_variant']:+.2f} ± "
            f"{d['std']:.2f} over {d['seeds']} seeds: {'holds' if d['holds'] else 'fails'} (positive beyond its std)"
        )
    if failed:  # the summary above leaves them out
        raise SystemExit(
            f"error: {len(failed)} of {len(runs)} runs failed and are not in the summary: {', '.join(failed)} "
            "(their output: the .log beside each workdir; a rerun resumes them)"
        )


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
    pt.add_argument(
        "--precision",
        default="auto",
        choices=("all", "auto", "float32", "mixed_bfloat16", "mixed_float16"),
        help="dtype policy to time (all: float32 and mixed_bfloat16 side by side, and mixed_float16 on GPUs)",
    )
    pv = sub.add_parser("serve", help="SavedModel latency per image vs a direct Keras forward")
    pv.add_argument("--images", type=int, default=10)
    pv.add_argument("--repeats", type=int, default=3)
    pv.add_argument("--set", dest="overrides", action="append", default=[])
    pm = sub.add_parser("method", help="the MCOF loop under several seeds: mean ± std per stage and variant")
    pm.add_argument("--config", default=None)
    pm.add_argument("--set", dest="overrides", action="append", default=[])
    pm.add_argument("--seeds", default="0,1,2", help="experiment seeds, comma-separated")
    pm.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1)")
    pm.add_argument(
        "--variants",
        default=",".join(METHOD_VARIANTS),
        help="comma-separated, of " + ", ".join(METHOD_VARIANTS),
    )
    pm.add_argument("--iter", dest="iterations", type=int, default=3)
    pm.add_argument(
        "--root", default="runs/bench", help="workdirs go to ROOT/<experiment name>/<variant>-seed<s>"
    )
    log_setup.add_verbose_flag(p)
    args = p.parse_args(argv)
    log_setup.setup(args.verbose)
    {
        "preprocess": bench_preprocess,
        "saliency": bench_saliency,
        "train": bench_train,
        "serve": bench_serve,
        "method": bench_method,
    }[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
