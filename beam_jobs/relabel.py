"""Beam job: records + a trained model → the same records with the next stage's labels.

    python -m beam_jobs.relabel --records GLOB --model DIR --stage {cam,regionnet,pixelnet,groundtruth}
                                --out DIR [--config C] [--set k=v] [--iteration T] [--refine] [--no-tags]
                                [--prior-correction [S]] [--saliency-background TAU] [--agreement]
                                [--region-crf [CONFIDENCE]] [--refine-posterior P] [--refine-connected]
                                [--scales S,S] [--flip] [Beam options]

Stages (the rule applied to each image's prediction):
  cam          CAM → per-superpixel seeds (§4.1)
  regionnet    RegionNet → one label per superpixel, tags enforced (config labels) (§4.2);
               with --refine, single-tag images get saliency-guided refinement + CRF (§4.3)
  pixelnet     PixelNet → a pixel mask at image resolution, tags enforced (§5); config `labels.crf` /
               `labels.min_confidence` refine it with a dense CRF / leave unsure pixels unlabelled;
               --no-tags skips the tag rule and keeps the network's own mask (validation: tags are
               not known at test time; with `labels.crf` the CRF's mask is evaluated too)
  groundtruth  no model: the ground truth becomes the labels (the fully-supervised upper bound)

--prior-correction [STRENGTH] (regionnet, pixelnet): the network's logits get + STRENGTH (default 1) *
class_balance * log(share) of the classes in the labels it was trained on (its train.json), so that its
labels keep those shares instead of the class-balanced loss's shift towards rare classes (see
`mcof_tf.training.prior_offsets`); the loop's validation uses labels.prediction_correction (0.5).

--agreement (regionnet): the regions are kept only where they agree with the labels the records arrive
with (the previous PixelNet's masks, from iteration 2 on), unlabelled (255) elsewhere (config
labels.agreement; `mcof_tf.method.labels.agreement`), evaluated as "agreed".

--region-crf [CONFIDENCE] (regionnet): RegionNet's per-superpixel probabilities, painted over the image,
are refined by a dense CRF (config labels.region_crf / region_crf_confidence) whose labels replace those of
the superpixels whose top probability is at most CONFIDENCE (default 1: all), evaluated as
"regionnet_crf"; what follows (--refine, --agreement) starts from the CRF's labels. Superpixel features
pooled from a stride-8 feature map carry an object's look into the background superpixels around it; the
CRF's colour and position terms cut that halo back to the object's edges.

--refine-posterior P (with --refine): RegionNet's own object pixels stay in the refined region only where
the saliency-guided posterior p(obj|v) exceeds P (config labels.refine_posterior; default 0: all of them,
the paper's supplement): non-salient pixels of another colour than the object's leave the region.

--refine-connected (with --refine): the refinement adds only the parts of its CRF object that touch
RegionNet's object region (config labels.refine_connected): salient distractors elsewhere stay background.

--scales S,S [--flip] (pixelnet): PixelNet's logits are averaged over the image at these scales (and
mirrored), each resized back to the image's size (config labels.mask_scales / mask_flip for the training
images' masks; DeepLab's multi-scale inference, as IRN and psa compute their pseudo-labels).

--saliency-background TAU (pixelnet, training images): object labels on pixels whose saliency is below
TAU (0..1) become background in the masks written for the next stage (config labels.saliency_background;
`mcof_tf.method.labels.saliency_background`), evaluated as "masks".

The network runs under `RunInference` (`NetworkHandler`: the model, `DIR/model.keras` or a `.keras`
path, is loaded once per worker process); `LabelRules` turns its scores into labels (on the local
runner's threads, its dense CRFs run in worker processes: `mcof_tf.vision.crf.in_processes`). Where records
carry ground truth, the job also sums confusion matrices of what it produced (and, with --refine, of the
unrefined RegionNet labels), reported in `OUT/manifest.json` under "metrics". As every job of the
project: rejected records go to `OUT/rejected.jsonl` and read == written + rejected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict
from typing import Literal, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from beam_jobs import common
from mcof_tf import fileio, usage
from mcof_tf import log as log_setup
from mcof_tf.config import Config, check_scales
from mcof_tf.fileio import check_output_apart, file_digest, folder_lock

log = logging.getLogger(__name__)

Stage = Literal["cam", "regionnet", "pixelnet", "groundtruth"]  # which labels a relabel job makes
STAGES: tuple[Stage, ...] = typing.get_args(Stage)
CONFUSION = "confusion"
STATS = "stats"  # label statistics that need no ground truth (evaluate.label_stats)
PREFIX = "records"


class SumPerName(beam.PTransform):
    """(name of a produced label map, per-image array) → one JSON line per name, {"name", <tag>: sum}:
    confusion matrices and label statistics summed over the images while the job writes the labels."""

    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag

    def expand(self, pairs):
        tag = self.tag
        return (
            pairs
            | "Sum" >> beam.CombinePerKey(sum)
            | "ToJson"
            >> beam.MapTuple(lambda name, m: json.dumps({"name": name, tag: np.asarray(m).tolist()}))
        )


class NetworkHandler(ModelHandler):
    """RunInference's model handler for one stage's Keras network: loaded once per worker process and
    shared by its threads; one record per call (images differ in size). Its output per record is the
    network's raw scores for the label rules (`LabelRules`): CAMs (C-1, H, W) for "cam", one row of
    logits per superpixel (n, C) for "regionnet", logits at image size (H, W, C) for "pixelnet".
    Beam's own TF handler (`apache_beam.ml.inference.tensorflow_inference.TFModelHandlerNumpy`) loads
    with `tf.keras.models.load_model`, which reads neither Keras-3 `.keras` files with this project's
    custom layers nor two-input models fed a dict of differently sized arrays. A record that cannot be
    parsed or run is a result carrying its rejection, not an exception: the job counts it and goes on."""

    def __init__(
        self,
        model_path: str,
        stage: Stage,
        num_classes: int,
        mean_rgb: Sequence[float],
        max_regions: int,
        seed_params: dict,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ):
        super().__init__(max_batch_size=1)  # images differ in size: one per call
        self.model_path, self.stage, self.num_classes = model_path, stage, num_classes
        self.mean_rgb, self.max_regions = list(mean_rgb), max_regions
        self.seed_params = dict(seed_params)
        self.scales, self.flip = [float(x) for x in scales], flip  # PixelNet's views (--scales, --flip)

    def load_model(self):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # one worker process per core; see beam_jobs.preprocess
        import tensorflow as tf

        from mcof_tf import training

        model = training.load_model(self.model_path)
        # one trace for images of any size (without a signature: one for the first size, one more for
        # the next, generalised)
        spec = tf.TensorSpec([1, None, None, 3], tf.float32)  # an image; RegionNet's input adds superpixels
        if self.stage == "cam":
            from mcof_tf.models.cam import CLASSIFIER, cam_extractor, class_activation_maps

            extractor, kernel = cam_extractor(model), model.get_layer(CLASSIFIER).kernel
            scales, flip = self.seed_params.get("scales", [1.0]), self.seed_params.get("flip", False)
            return tf.function(
                lambda x: class_activation_maps(extractor, kernel, x, scales, flip), input_signature=[spec]
            )
        if self.stage == "regionnet":
            spec = {"image": spec, "superpixels": tf.TensorSpec([1, None, None], tf.int32)}
        return tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def run_inference(self, batch, model, inference_args=None):
        from mcof_tf.data import records

        for serialized in batch:
            rec = None
            try:
                rec = records.parse_example(serialized)
                yield PredictionResult(rec, {"scores": self._scores(rec, model)})
            except Exception as e:  # noqa: BLE001 - counted and reported by LabelRules, never dropped
                yield PredictionResult(rec, {"rejected": f"{type(e).__name__}: {e}"})

    def get_metrics_namespace(self) -> str:
        return "relabel"

    def _scores(self, rec, forward) -> np.ndarray:
        import tensorflow as tf

        image = tf.constant((rec.image.astype(np.float32) - np.asarray(self.mean_rgb, np.float32))[None])
        if self.stage == "cam":
            return np.asarray(forward(image))[0]
        if self.stage == "pixelnet":
            return pixel_logits(forward, image, self.scales, self.flip)
        # regionnet: images with more superpixels than the model's max_regions go in chunks of ids
        n = rec.num_superpixels
        out = np.zeros((n, self.num_classes), np.float32)
        for start in range(0, n, self.max_regions):
            sp = rec.superpixels - start
            sp = np.where((sp >= 0) & (sp < self.max_regions), sp, -1).astype(np.int32)
            logits = forward({"image": image, "superpixels": tf.constant(sp[None])})
            stop = min(start + self.max_regions, n)
            out[start:stop] = np.asarray(logits[0])[: stop - start]
        return out


def pixel_logits(forward, image, scales: Sequence[float] = (1.0,), flip: bool = False) -> np.ndarray:
    """PixelNet's logits (H, W, C) for one image (1, H, W, 3), bilinearly resized to the image's size,
    averaged over the image at `scales` and, with `flip`, its mirror image (mirrored back)."""
    import tensorflow as tf

    size = tf.shape(image)[1:3]
    total, views = 0.0, 0
    for scale in scales:
        scaled = size if scale == 1 else tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
        x = image if scale == 1 else tf.image.resize(image, scaled, method="bilinear")
        for mirrored in (False, True) if flip else (False,):
            out = forward(x[:, :, ::-1] if mirrored else x)
            out = tf.image.resize(out, size, method="bilinear")
            total, views = total + (out[:, :, ::-1] if mirrored else out), views + 1
    return np.asarray(total / views)[0]


def parsed(serialized: bytes) -> PredictionResult:
    """The "groundtruth" stage's stand-in for RunInference (no network): the parsed record."""
    from mcof_tf.data import records

    try:
        return PredictionResult(records.parse_example(serialized), {"scores": None})
    except Exception as e:  # noqa: BLE001 - counted and reported by LabelRules
        return PredictionResult(None, {"rejected": f"{type(e).__name__}: {e}"})


class LabelRules(beam.DoFn):
    """A record and its network's scores → the record with the next stage's labels (main output), and
    per produced label map its confusion matrix (where the record has ground truth) and its label
    statistics on side outputs; a rejected record goes to the `rejected` output."""

    def __init__(
        self,
        stage: Stage,
        num_classes: int,
        seed_params: dict,
        iteration: int,
        refine: bool,
        use_tags: bool,
        label_rules: Optional[dict] = None,
        prior_offsets: Optional[Sequence[float]] = None,
        progress: Optional[common.Progress] = None,
        saliency_background: float = 0.0,
        agreement: bool = False,
        region_crf: float = 0.0,
        refine_posterior: float = 0.0,
        refine_connected: bool = False,
    ):
        self.stage = stage
        self.num_classes = num_classes
        self.seed_params = dict(seed_params)
        self.iteration = iteration
        self.refine = refine
        self.use_tags = use_tags
        self.label_rules = dict(label_rules or {})  # config `labels`: tag_rule, keep_tags, crf, ...
        # added to the network's logits before any rule (None: none); see --prior-correction
        self.prior_offsets = None if prior_offsets is None else np.asarray(prior_offsets, np.float32)
        self.saliency_background = saliency_background  # see --saliency-background
        self.agreement = agreement  # see --agreement
        self.region_crf = region_crf  # see --region-crf
        self.refine_posterior = refine_posterior  # see --refine-posterior
        self.refine_connected = refine_connected  # see --refine-connected
        self.written = Metrics.counter("relabel", "written")
        self.rejected = Metrics.counter("relabel", "rejected")
        self.region_crf_images = Metrics.counter("relabel", "region_crf_images")  # that needed the CRF
        self.latency = Metrics.distribution("relabel", "ms_per_image")  # of the rules (CRF included)
        self.progress = progress or common.Progress(f"relabel {stage}")

    def setup(self):
        self.progress.start()

    def process(self, result: PredictionResult):
        from mcof_tf.data import records
        from mcof_tf.evaluate import confusion, label_stats

        rec, inference = result.example, result.inference
        try:
            if "rejected" in inference:
                raise ValueError(inference["rejected"])
            previous = labels_of(rec)
            self._confidence = None
            started = time.perf_counter()
            out, produced = self._relabel(rec, inference["scores"], previous)
            self.latency.update(int(1000 * (time.perf_counter() - started)))
            yield records.encode(out)
            self.written.inc()
            tags = rec.tag_indices if self.use_tags and self.stage != "groundtruth" else None
            for name, labels in produced.items():
                stats = label_stats(
                    labels, self.num_classes, tags, previous, self._confidence if name == "pixelnet" else None
                )
                yield beam.pvalue.TaggedOutput(STATS, (name, stats))
                if rec.groundtruth is not None:
                    yield beam.pvalue.TaggedOutput(
                        CONFUSION, (name, confusion(rec.groundtruth, labels, self.num_classes))
                    )
        except Exception as e:  # noqa: BLE001 - counted and reported, never silently dropped
            self.rejected.inc()
            message = str(e) if "rejected" in inference else f"{type(e).__name__}: {e}"
            yield beam.pvalue.TaggedOutput(
                common.REJECTED, common.rejection(rec.id if rec is not None else "?", message)
            )
        self.progress.tick()

    def _relabel(self, rec, scores, previous=None):
        """→ (new Record, {name: pixel labels to evaluate}); `previous`: the labels it arrived with."""
        from mcof_tf.method.labels import paint

        tags = rec.tag_indices
        rec.labels, rec.superpixel_labels = None, None
        rec.label_iteration = self.iteration
        if self.stage == "groundtruth":
            if rec.groundtruth is None:
                raise ValueError("no ground truth to copy")
            rec.labels, rec.label_stage = rec.groundtruth, "groundtruth"
            return rec, {}
        if self.stage == "cam":
            from mcof_tf.method.seeds import cam_seeds

            rule = {
                k: v for k, v in self.seed_params.items() if k not in ("scales", "flip")
            }  # CAM inference's
            rec.superpixel_labels = cam_seeds(scores, rec.superpixels, tags, **rule)
            rec.label_stage = "seeds"
            return rec, {"seeds": paint(rec.superpixel_labels, rec.superpixels)}
        enforce = tags if self.use_tags else None
        if self.prior_offsets is not None:
            scores = scores + self.prior_offsets
        if self.stage == "regionnet":
            region = self._tag_argmax(scores, enforce)
            pixels = paint(region, rec.superpixels)
            produced = {"regionnet": pixels}
            if self.region_crf:
                from mcof_tf.method.refine import crf_regions, softmax

                # only superpixels RegionNet is unsure of (top probability <= region_crf) take the CRF's
                # labels; an image with none is left as it is, without running the CRF. Pixels of no
                # superpixel are never unsure: they keep paint's unlabelled value.
                unsure = (softmax(scores, enforce).max(-1) <= self.region_crf)[np.maximum(rec.superpixels, 0)]
                unsure &= rec.superpixels >= 0
                if unsure.any():
                    self.region_crf_images.inc()
                    probs = crf_regions(rec.image, rec.superpixels, scores, enforce)
                    crf = self._tag_argmax(np.log(np.maximum(probs, 1e-12)), enforce).astype(np.uint8)
                    pixels = np.where(unsure, crf, pixels)
                produced["regionnet_crf"], region = pixels, None  # labels per pixel from here on
            if self.refine and len(tags) == 1:
                from mcof_tf.method.refine import refine_single_tag

                rec.labels = refine_single_tag(
                    rec.image,
                    rec.saliency,
                    pixels,
                    tags[0],
                    keep_posterior=self.refine_posterior,
                    connected=self.refine_connected,
                )
                rec.label_stage = "refined"
            else:
                rec.superpixel_labels, rec.label_stage = region, "regionnet"
                if region is None:
                    rec.labels = pixels
            if self.refine:
                produced["refined"] = rec.labels if rec.labels is not None else pixels
            if self.agreement:
                from mcof_tf.method.labels import agreement

                if previous is None:
                    raise ValueError("--agreement: the record has no labels to agree with")
                mined = rec.labels if rec.labels is not None else pixels
                rec.labels, rec.superpixel_labels = agreement(mined, previous), None
                produced["agreed"], rec.label_stage = rec.labels, "agreed"
            return rec, produced
        # pixelnet
        from mcof_tf.method.labels import leave_unsure, saliency_background
        from mcof_tf.method.refine import crf_probabilities, softmax

        probs = softmax(scores, enforce)
        self._confidence = probs.max(-1)  # how sure the network is (report, no GT needed)
        raw = mask = self._tag_argmax(scores, enforce).astype(np.uint8)
        produced = {"pixelnet": raw}
        if self.label_rules.get("crf", False):
            probs = crf_probabilities(rec.image, scores, enforce)
            mask = self._tag_argmax(np.log(np.maximum(probs, 1e-12)), enforce).astype(np.uint8)
            produced["pixelnet_crf"] = mask
        min_confidence = self.label_rules.get("min_confidence", 0.0)
        if not self.use_tags:  # validation: the labels stay the network's own prediction
            mask = raw
        else:  # what the next iteration learns from (Algorithm 1, line 10)
            if min_confidence > 0:
                mask = produced["masks"] = leave_unsure(mask, probs, min_confidence)
            if self.saliency_background > 0:
                mask = produced["masks"] = saliency_background(mask, rec.saliency, self.saliency_background)
        rec.labels, rec.label_stage = mask, ("pixelnet" if mask is raw else "masks")
        return rec, produced

    def _tag_argmax(self, scores, tags):
        from mcof_tf.method.labels import tag_argmax

        return tag_argmax(
            scores,
            tags,
            self.label_rules.get("tag_rule", "restrict"),
            self.label_rules.get("keep_tags", False),
        )


def labels_of(rec):
    """The pixel labels a record arrives with (the previous stage's), None when it has none."""
    from mcof_tf.method.labels import paint

    if rec.labels is not None:
        return rec.labels
    return None if rec.superpixel_labels is None else paint(rec.superpixel_labels, rec.superpixels)


# labels.* keys that choose what the loop asks of each relabel job, not how a job labels: a job's own
# arguments (refine, prior_correction, saliency_background, agreement) say that, so changing them does not redo
# unaffected stages
LOOP_CHOICES = (
    "prior_correction",
    "mask_correction",
    "prediction_correction",
    "refine_every_iteration",
    "saliency_background",
    "agreement",
    "region_crf",
    "region_crf_confidence",
    "refine_posterior",
    "refine_connected",
    "mask_scales",
    "mask_flip",
)


def run(
    records: str,
    model: Optional[str],
    stage: Stage,
    out_dir: str,
    cfg: Config,
    *,
    classes: Sequence[str],
    pipeline_options=None,
    iteration: int = 0,
    refine: bool = False,
    use_tags: bool = True,
    prior_correction: float = 0.0,
    saliency_background: float = 0.0,
    agreement: bool = False,
    region_crf: float = 0.0,
    refine_posterior: float = 0.0,
    refine_connected: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict:
    """Run the job (or find it complete) and return its manifest."""
    common.check_filesystems(records, out_dir)
    num_classes = len(classes)

    from mcof_tf.evaluate import metrics_entry, stats_entry

    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {', '.join(STAGES)}")
    if stage != "groundtruth" and model is None:
        raise ValueError(f"--model is required for stage {stage}")
    if not 0.0 <= saliency_background < 1.0:
        raise ValueError(f"--saliency-background: expected a number in [0, 1), got {saliency_background}")
    if saliency_background and stage != "pixelnet":
        raise ValueError(f"--saliency-background applies to the pixelnet stage, not {stage}")
    if agreement and stage != "regionnet":
        raise ValueError(f"--agreement applies to the regionnet stage, not {stage}")
    if region_crf and stage != "regionnet":
        raise ValueError(f"--region-crf applies to the regionnet stage, not {stage}")
    scales = check_scales(scales, "--scales")
    views = scales != [1.0] or flip  # PixelNet's inference over several views
    if views and stage != "pixelnet":
        raise ValueError(f"--scales / --flip apply to the pixelnet stage, not {stage}")
    if not 0.0 <= region_crf <= 1.0:
        raise ValueError(f"--region-crf: expected a confidence in [0, 1], got {region_crf}")
    if refine_posterior and not refine:
        raise ValueError("--refine-posterior applies with --refine")
    if refine_connected and not refine:
        raise ValueError("--refine-connected applies with --refine")
    if not 0.0 <= refine_posterior < 1.0:
        raise ValueError(f"--refine-posterior: expected a probability in [0, 1), got {refine_posterior}")
    from mcof_tf.training import model_file

    model_path = model_file(model) if stage != "groundtruth" else None
    offsets = _prior_offsets(model_path, stage, float(prior_correction)) if prior_correction else None
    fingerprint_offsets = None if offsets is None else [round(float(o), 6) for o in offsets]
    files = sorted(fileio.glob(records))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {records}")
    check_output_apart(out_dir, {"input records": records})
    fingerprint = common.fingerprint(
        {
            "job": "relabel",
            "files": [f.rsplit("/", 1)[-1] for f in files],  # names: a moved workdir is not redone
            "input": (common.read_manifest(os.path.dirname(files[0])) or {}).get("fingerprint"),
            "model": file_digest(model_path) if model_path else None,
            "stage": stage,
            "iteration": iteration,
            "refine": refine,
            "use_tags": use_tags,
            # the labels rules; the loop's choices per stage are in refine and prior_offsets
            "labels": {k: v for k, v in asdict(cfg.labels).items() if k not in LOOP_CHOICES},
            "seeds": asdict(cfg.seeds),
            "num_classes": num_classes,
            "mean_rgb": list(cfg.input.mean_rgb),  # the model's input normalisation
            "max_regions": cfg.model.max_regions,  # RegionNet's chunking of superpixels
            "prior_offsets": fingerprint_offsets,
            # only when on: a workdir labelled before the guard existed is not redone
            **({"saliency_background": saliency_background} if saliency_background else {}),
            **({"agreement": True} if agreement else {}),
            **({"region_crf": region_crf} if region_crf else {}),
            **({"refine_posterior": refine_posterior} if refine_posterior else {}),
            **({"refine_connected": True} if refine_connected else {}),
            **({"scales": scales, "flip": flip} if views else {}),
        }
    )
    with folder_lock(out_dir):  # two jobs on one folder would delete each other's shards
        if common.is_complete(out_dir, fingerprint):
            log.info(f"relabel {stage}: {out_dir} is complete already; nothing to do")
            return common.read_manifest(out_dir)
        common.prepare_output(out_dir, PREFIX)
        for tag in (CONFUSION, STATS):
            for path in fileio.glob(common.join(out_dir, f"{tag}*")):
                fileio.remove(path)
        read = common.count_records(records)
        started = usage.stage_clock()
        log.info(f"relabel {stage}: {read} records from {records} → {out_dir}")
        rules = LabelRules(
            stage,
            num_classes,
            asdict(cfg.seeds),
            iteration,
            refine,
            use_tags,
            asdict(cfg.labels),
            offsets,
            common.Progress(f"relabel {stage}", common.expected_per_worker(pipeline_options, read)),
            saliency_background,
            agreement,
            region_crf,
            refine_posterior,
            refine_connected,
        )
        scores = (
            beam.Map(parsed)
            if stage == "groundtruth"
            else RunInference(
                NetworkHandler(
                    model_path,
                    stage,
                    num_classes,
                    cfg.input.mean_rgb,
                    cfg.model.max_regions,
                    asdict(cfg.seeds),
                    scales,
                    flip,
                )
            )
        )

        def build(p):
            results = (
                p
                | "Read" >> beam.io.ReadFromTFRecord(records)
                | "Spread" >> beam.Reshuffle()
                | "Network" >> scores
                | "Relabel"
                >> beam.ParDo(rules).with_outputs(common.REJECTED, CONFUSION, STATS, main="records")
            )
            {
                "records": results.records,
                common.REJECTED: results[common.REJECTED],
            } | "Write" >> common.WriteOutputs(out_dir, PREFIX, cfg.records.num_shards)
            for tag in (CONFUSION, STATS):  # summed over images per produced label map
                (
                    results[tag]
                    | f"Sum{tag}" >> SumPerName(tag)
                    | f"Write{tag}" >> common.WriteLines(out_dir, tag)
                )

        common.run_pipeline(pipeline_options, build, "relabel")  # its CRFs in worker processes, locally
        metrics, stats = {}, {}
        for tag, entries, entry in ((CONFUSION, metrics, metrics_entry), (STATS, stats, stats_entry)):
            for path in fileio.glob(common.join(out_dir, f"{tag}*.jsonl")):
                with fileio.open_file(path, "r") as f:
                    for line in f.read().splitlines():
                        row = json.loads(line)
                        entries[row["name"]] = entry(np.asarray(row[tag]), classes)
        manifest = common.finish(
            out_dir,
            PREFIX,
            read,
            fingerprint,
            started,
            {
                "stage": stage,
                "iteration": iteration,
                "refine": refine,
                "use_tags": use_tags,
                "prior_offsets": fingerprint_offsets,
                "saliency_background": saliency_background,
                "agreement": agreement,
                "region_crf": region_crf,
                "refine_posterior": refine_posterior,
                "refine_connected": refine_connected,
                "scales": scales,
                "flip": flip,
                "classes": list(classes),
                "metrics": metrics,
                "stats": stats,
            },
        )
        summary = ", ".join(f"{k} mIoU {v['miou']:.2f}" for k, v in sorted(metrics.items()))
        log.info(
            f"relabel {stage}: read {manifest['read']}, written {manifest['written']}, rejected "
            f"{len(manifest['rejected'])} in {manifest['seconds']:.1f}s" + (f"; {summary}" if summary else "")
        )
        return manifest


def _prior_offsets(model_path: str, stage: Stage, strength: float) -> np.ndarray:
    """--prior-correction: the offsets from the class shares recorded next to the model (train.json)."""
    from mcof_tf.training import recorded_prior_offsets

    if stage not in ("regionnet", "pixelnet"):
        raise ValueError(f"--prior-correction applies to the regionnet and pixelnet stages, not {stage}")
    return recorded_prior_offsets(model_path, strength)


def main(argv=None) -> int:
    from mcof_tf.config import ConfigError, load_config
    from mcof_tf.data.voc import VOC_CLASSES

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", required=True, help="glob of input TFRecords")
    parser.add_argument("--model", default=None, help="training folder (with model.keras) or a .keras file")
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iteration", type=int, default=0)
    parser.add_argument(
        "--refine", action="store_true", help="saliency-guided refinement of single-tag images"
    )
    parser.add_argument("--no-tags", action="store_true", help="do not enforce image tags (validation)")
    parser.add_argument(
        "--prior-correction",
        nargs="?",
        type=float,
        const=1.0,
        default=0.0,
        metavar="STRENGTH",
        help="undo the class-balanced loss's shift of the network's decisions (its train.json shares): "
        "all of it (no value, or 1), a part (e.g. 0.5: labels.prediction_correction), none (0, default)",
    )
    parser.add_argument(
        "--saliency-background",
        type=float,
        default=0.0,
        metavar="TAU",
        help="object labels on pixels of saliency below TAU (0..1) become background (default 0: off)",
    )
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="regionnet: keep the regions only where they agree with the records' labels (255 elsewhere)",
    )
    parser.add_argument(
        "--region-crf",
        nargs="?",
        type=float,
        const=1.0,
        default=0.0,
        metavar="CONFIDENCE",
        help="regionnet: refine the regions with a dense CRF over RegionNet's probabilities, on the "
        "superpixels whose top probability is at most CONFIDENCE (no value or 1: all of them)",
    )
    parser.add_argument(
        "--refine-posterior",
        type=float,
        default=0.0,
        metavar="P",
        help="with --refine: RegionNet's object pixels stay in the refined region only where the "
        "saliency-guided posterior exceeds P (default 0: all, the paper's supplement)",
    )
    parser.add_argument(
        "--refine-connected",
        action="store_true",
        help="with --refine: only the parts of the refinement's object that touch RegionNet's region",
    )
    parser.add_argument(
        "--scales",
        default="1",
        help="pixelnet: comma-separated image scales whose logits are averaged (default 1)",
    )
    parser.add_argument("--flip", action="store_true", help="pixelnet: average with the mirrored image too")
    parser.add_argument("--classes", default=None, help="classes.txt (default: the first input manifest's)")
    log_setup.add_verbose_flag(parser)
    args, options = common.split_args(parser, argv)
    log_setup.setup(args.verbose)
    try:
        cfg = load_config(args.config, args.overrides)
        classes = _classes(args.records, args.classes) or list(VOC_CLASSES)
        from mcof_tf.inference import parse_scales

        run(
            args.records,
            args.model,
            args.stage,
            args.out,
            cfg,
            classes=classes,
            pipeline_options=options,
            iteration=args.iteration,
            refine=args.refine,
            use_tags=not args.no_tags,
            prior_correction=args.prior_correction,
            saliency_background=args.saliency_background,
            agreement=args.agreement,
            region_crf=args.region_crf,
            refine_posterior=args.refine_posterior,
            refine_connected=args.refine_connected,
            scales=parse_scales(args.scales),
            flip=args.flip,
        )
    except (
        ConfigError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as e:  # RuntimeError: a job lost or rejected every input
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _classes(records: str, classes_file: Optional[str]) -> Optional[list]:
    """Class names: a classes.txt, else those recorded by the preprocess job that made the records."""

    if classes_file:
        from mcof_tf.data.voc import read_classes

        return read_classes(classes_file)
    for path in sorted(fileio.glob(records))[:1]:
        m = common.read_manifest(os.path.dirname(path))
        if m and m.get("classes"):
            return m["classes"]
    return None


if __name__ == "__main__":
    from beam_jobs.relabel import main as _main  # picklable DoFn names (see beam_jobs.preprocess)

    sys.exit(_main())
