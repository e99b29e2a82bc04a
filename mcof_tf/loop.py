"""The MCOF loop (Algorithm 1 of the paper) as resumable stages under one workdir.

    WORKDIR/config.json                 the config (and variant) the workdir belongs to
    WORKDIR/records/{train,val}/        preprocess (Beam)
    WORKDIR/cam/                        CAM training          → WORKDIR/seeds/      (Beam relabel)
    WORKDIR/iter<t>/regionnet/          RegionNet training    → iter<t>/regions/   (Beam relabel [+ refinement])
    WORKDIR/iter<t>/pixelnet/           PixelNet training     → iter<t>/masks/     (Beam relabel, train)
                                                              → iter<t>/val/       (Beam relabel, val, no tags)
    WORKDIR/SegmentationClassAug/<id>.png  the last iteration's training-set masks (mcof_tf.export_masks)
    WORKDIR/report.{json,md}, miou_progress.png, stages.png

Every stage marks its completion last (a training stage: `model.keras` renamed into place; a Beam
stage: `manifest.json` with its fingerprint), so re-running the same command after a kill resumes at
the first unfinished stage, and inside a training stage from its last epoch backup.
"""

from __future__ import annotations

import json
import logging
import os
import typing
from dataclasses import dataclass
from typing import Literal, Optional

from beam_jobs import common, preprocess, relabel
from mcof_tf import fileio, training
from mcof_tf.config import Config
from mcof_tf.data import ensure_dataset
from mcof_tf.export_masks import export_masks
from mcof_tf.fileio import file_digest, folder_lock, read_json, writable_dir, write_json_atomic
from mcof_tf.report import report as write_run_report

log = logging.getLogger(__name__)

Variant = Literal[
    "mcof", "no_saliency", "direct_iterative", "fully_supervised"
]  # Algorithm 1 and its ablations
VARIANTS: tuple[Variant, ...] = typing.get_args(Variant)
MASKS_FOLDER = "SegmentationClassAug"  # the final training-set masks as palette PNGs


@dataclass
class Run:
    """One run's settings and where it writes."""

    cfg: Config
    workdir: str
    data_root: str
    variant: Variant = "mcof"
    beam_options: object = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)


# ------------------------------------------------------------------------------------------- stages


def check_splits(data_root: str, data_cfg) -> None:
    """Refuse split lists that would score the model on what it learnt from: one split used twice,
    ids in both splits, ids listed twice."""
    from collections import Counter

    from mcof_tf.data.voc import VocDataset

    train, val = data_cfg.train_split, data_cfg.val_split
    if train == val:
        raise ValueError(
            f"data.train_split and data.val_split are both '{train}': val would be the training set"
        )
    ds = VocDataset(data_root, data_cfg.classes, data_cfg.mask_dirs)
    ids = {split: ds.split_ids(split) for split in (train, val)}
    for split, listed in ids.items():
        twice = sorted(i for i, n in Counter(listed).items() if n > 1)
        if twice:
            raise ValueError(
                f"ImageSets/Segmentation/{split}.txt lists {len(twice)} id(s) twice, e.g. {twice[0]}"
            )
    both = sorted(set(ids[train]) & set(ids[val]))
    if both:
        raise ValueError(
            f"{len(both)} id(s) are in both {train}.txt and {val}.txt, e.g. {both[0]}: val mIoU would be inflated"
        )


def preprocess_split(run: Run, split: str) -> tuple[str, dict]:
    out = run.path("records", split)
    manifest = preprocess.run(run.data_root, split, out, run.cfg, run.beam_options)
    return os.path.join(out, "*.tfrecord"), manifest


def train_network(
    run: Run,
    network: training.NetworkName,
    records: str,
    folder: str,
    num_classes: int,
    previous: Optional[str] = None,
    backbone: Optional[str] = None,
) -> str:
    """Train unless `folder/model.keras` exists; returns the folder. With `train.warm_start`, the
    network starts from `previous` (the same network of the iteration before) when there is one;
    its backbone from `backbone` (another network's folder) when given."""
    out = run.path(folder)
    init = os.path.join(previous, training.MODEL_FILE) if previous and run.cfg.train.warm_start else None
    backbone = os.path.join(backbone, training.MODEL_FILE) if backbone else None
    if fileio.exists(os.path.join(out, training.MODEL_FILE)):
        why = training.stale_reason(
            out, training.training_inputs(network, records, run.cfg, num_classes, init, backbone)
        )
        if why is None:
            log.info(f"{folder}: trained already")
            training.ensure_label_shares(out, network, records, run.cfg, num_classes)
            return out
        log.info(f"redoing {folder}: {why}")  # the new model.keras replaces the old one when it is done
    training.train(network, records, out, run.cfg, num_classes, init_from=init, backbone_from=backbone)
    fileio.rmtree(os.path.join(out, "backup"))
    return out


def relabel_records(
    run: Run,
    stage: relabel.Stage,
    model: Optional[str],
    records: str,
    folder: str,
    classes: list,
    iteration: int,
    refine: bool = False,
    use_tags: bool = True,
    prior_correction: float = 0.0,
    saliency_background: float = 0.0,
    agreement: bool = False,
    region_crf: float = 0.0,
    refine_posterior: float = 0.0,
    refine_connected: bool = False,
    views: bool = False,
) -> str:
    """`views`: PixelNet's logits averaged over labels.mask_scales / mask_flip (training-set masks)."""
    out = run.path(folder)
    relabel.run(
        records,
        model,
        stage,
        out,
        run.cfg,
        classes=classes,
        pipeline_options=run.beam_options,
        iteration=iteration,
        refine=refine,
        use_tags=use_tags,
        prior_correction=prior_correction,
        saliency_background=saliency_background,
        agreement=agreement,
        region_crf=region_crf,
        refine_posterior=refine_posterior,
        refine_connected=refine_connected,
        scales=run.cfg.labels.mask_scales if views else (1.0,),
        flip=run.cfg.labels.mask_flip and views,
    )
    return os.path.join(out, "*.tfrecord")


# --------------------------------------------------------------------------------------------- loop


def corrects(prior_correction: str, network: str, t: int) -> bool:
    """Whether the labels that `network` (regionnet, pixelnet) makes at iteration t (from 0) undo its
    class-balanced loss's lean, under `labels.prior_correction` (see config.py)."""
    if network == "pixelnet":
        return prior_correction != "none"
    if t == 0:  # the first RegionNet learns from seeds; later ones from PixelNet's dense masks
        return prior_correction in ("first_regionnet", "every")
    return prior_correction in ("all", "every")


def validate(run: Run, pixelnet: str, val_records: str, folder: str, classes: list, iteration: int) -> str:
    """PixelNet's predictions on the validation split, as it predicts once exported: without tags, with
    labels.prediction_correction of its loss's lean undone."""
    strength = run.cfg.labels.prediction_correction
    return relabel_records(
        run,
        "pixelnet",
        pixelnet,
        val_records,
        folder,
        classes,
        iteration,
        use_tags=False,
        prior_correction=strength,
    )


def mcof(run: Run, iterations: int) -> str:
    """Algorithm 1. Returns the folder of the last PixelNet."""
    train_records, manifest = preprocess_split(run, run.cfg.data.train_split)
    val_records, _ = preprocess_split(run, run.cfg.data.val_split)
    classes = manifest["classes"]
    C = len(classes)

    if run.variant == "fully_supervised":  # the upper bound: PixelNet on ground-truth masks
        gt = relabel_records(run, "groundtruth", None, train_records, "groundtruth", classes, 0)
        pixelnet = train_network(run, "pixelnet", gt, "iter1/pixelnet", C)
        validate(run, pixelnet, val_records, "iter1/val", classes, 1)
        return pixelnet

    # Initialize: initial object seeds S from CAM (§4.1)
    cam = train_network(run, "cam", train_records, "cam", C)
    seeds = relabel_records(run, "cam", cam, train_records, "seeds", classes, 0)
    pixelnet = regionnet = None
    # labels.prior_correction (see config.py): which networks' labels undo their loss's lean
    prior = run.cfg.labels.prior_correction
    # labels.saliency_background: in PixelNet's masks, objects where saliency says background become it
    guard = 0.0 if run.variant == "no_saliency" else run.cfg.labels.saliency_background
    for t in range(iterations):  # 1: while iteration is effective
        it = f"iter{t + 1}"
        if run.variant == "direct_iterative" and t > 0:
            regions = seeds  # baseline: PixelNet retrained on its own masks
        else:
            # 2: train RegionNet with R and S;  3: predict object regions O
            # (train.regionnet_backbone: pixelnet: its backbone from the PixelNet just trained)
            features = pixelnet if run.cfg.train.regionnet_backbone == "pixelnet" else None
            regionnet = train_network(run, "regionnet", seeds, f"{it}/regionnet", C, regionnet, features)
            refine = (t == 0 or run.cfg.labels.refine_every_iteration) and run.variant != "no_saliency"
            # 4-8: at t = 0 refine O with saliency maps (single-tag images); else O^R = O (unless
            # labels.refine_every_iteration; with labels.agreement, O only where it agrees with S;
            # labels.region_crf: O refined by a dense CRF first)
            regions = relabel_records(
                run,
                "regionnet",
                regionnet,
                seeds,
                f"{it}/regions",
                classes,
                t + 1,
                refine=refine,
                prior_correction=corrects(prior, "regionnet", t),
                agreement=t > 0 and run.cfg.labels.agreement,
                region_crf=run.cfg.labels.region_crf_confidence if run.cfg.labels.region_crf else 0.0,
                refine_posterior=run.cfg.labels.refine_posterior if refine else 0.0,
                refine_connected=run.cfg.labels.refine_connected and refine,
            )
        pixelnet = train_network(
            run, "pixelnet", regions, f"{it}/pixelnet", C, pixelnet
        )  # 9: train PixelNet with O^R
        seeds = relabel_records(
            run,
            "pixelnet",
            pixelnet,
            regions,
            f"{it}/masks",
            classes,
            t + 1,
            prior_correction=run.cfg.labels.mask_correction if corrects(prior, "pixelnet", t) else 0.0,
            saliency_background=guard,
            views=True,
        )  # 10-11: S <- M
        validate(run, pixelnet, val_records, f"{it}/val", classes, t + 1)
    return pixelnet


# ------------------------------------------------------------------------------------------- driver


def _flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def run_record_differences(theirs: dict, mine: dict) -> list[str]:
    """Keys (a.b.c) whose values differ between a workdir's config.json and this run's. Not counted:
    where the workdir is and how stages run (training.EXECUTION_KEYS: devices, dtype policy, XLA, backup
    interval; they may change between a run and its resumption), and keys an older mcof_tf did not
    write that hold their default value now."""

    def as_stored(d):  # as JSON has it (tuples are lists)
        return _flat(json.loads(json.dumps(d)))

    a, b, defaults = as_stored(theirs), as_stored(mine), as_stored({"config": Config().to_dict()})
    missing = object()
    return sorted(
        k
        for k in a.keys() | b.keys()
        if k not in ("config.experiment.workdir", *(f"config.train.{e}" for e in training.EXECUTION_KEYS))
        and a.get(k, missing) != b.get(k, missing)
        and not (k not in a and b[k] == defaults.get(k, missing))
    )


def claim_workdir(run: Run) -> None:
    """Record which config and variant own the workdir; refuse to mix runs of different ones."""

    writable_dir(run.workdir)
    path = run.path("config.json")
    mine = {"config": run.cfg.to_dict(), "variant": run.variant, "data_root": fileio.absolute(run.data_root)}

    if fileio.exists(path):
        try:
            theirs = read_json(path)
        except ValueError as e:
            raise ValueError(f"{e}; use another --workdir") from e
        differ = run_record_differences(theirs, mine)
        if differ:
            raise ValueError(
                f"{run.workdir} was made by a different config, variant or dataset ({', '.join(differ[:5])}"
                f"{', ...' if len(differ) > 5 else ''}); use another --workdir (or delete it) rather "
                "than mixing runs"
            )
        return
    write_json_atomic(path, mine)


def export_final(run: Run, pixelnet: str, classes: list) -> str:
    """Export the last PixelNet once per workdir to saved_models/<name>/<version>/ (TF Serving layout):
    the project's saved_models/ for a local workdir, the workdir's own for a remote (gs://) one, so that
    a run on object storage keeps its model next to its report."""
    from mcof_tf.export import export_saved_model

    marker = run.path("export.json")
    model = os.path.join(pixelnet, training.MODEL_FILE)
    strength = run.cfg.labels.prediction_correction  # as validation measured it
    offsets = training.recorded_prior_offsets(model, strength) if strength else None
    offsets = None if offsets is None else [round(float(o), 6) for o in offsets]
    done = read_json(marker) or {}
    if (done.get("model"), done.get("logit_offsets")) == (file_digest(model), offsets) and fileio.exists(
        os.path.join(done.get("path", ""), "saved_model.pb")
    ):
        return done["path"]
    if done:  # another PixelNet than the one exported before (more iterations): a new version
        log.info(
            f"exporting {pixelnet} as a new version (the last export, {done.get('path')}, is another model "
            "or prior correction)"
        )
    name = run.cfg.experiment.name + ("" if run.variant == "mcof" else f"-{run.variant}")
    path = export_saved_model(
        os.path.join(pixelnet, training.MODEL_FILE),
        os.path.join(run.workdir if fileio.is_remote(run.workdir) else "", "saved_models", name),
        classes,
        run.cfg.input.mean_rgb,
        logit_offsets=offsets,
    )
    write_json_atomic(
        marker, {"path": path, "model": file_digest(model), "pixelnet": pixelnet, "logit_offsets": offsets}
    )
    return path


def run_all(
    cfg: Config,
    iterations: int,
    workdir: Optional[str] = None,
    data_root: Optional[str] = None,
    variant: Variant = "mcof",
    beam_options=None,
    export: bool = True,
) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant}")
    workdir = workdir or cfg.workdir_for(variant)
    root = ensure_dataset(cfg.data, data_root)
    check_splits(root, cfg.data)
    run = Run(cfg, workdir, root, variant, beam_options)
    common.check_filesystems(workdir, root)
    writable_dir(workdir)
    with folder_lock(workdir):  # two runs on one workdir would delete each other's shards
        claim_workdir(run)
        pixelnet = mcof(run, iterations)
        last = 1 if variant == "fully_supervised" else iterations
        if variant != "fully_supervised":  # the mined masks as a product (python -m mcof_tf.export_masks)
            export_masks(workdir, run.path(MASKS_FOLDER), last)
        rep = write_run_report(workdir, last)  # this run's iterations, not folders of a longer earlier run
        if export:
            classes = common.read_manifest(run.path("records", cfg.data.train_split))["classes"]
            rep["export"] = export_final(run, pixelnet, classes)
    return rep
