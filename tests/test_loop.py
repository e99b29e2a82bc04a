"""The MCOF loop end to end on the tiny benchmark: stages, report, export, resume, refusal to mix."""

import json
import logging
import math
import os

import pytest

from mcof_tf import loop
from mcof_tf.config import load_config

pytestmark = pytest.mark.slow  # end-to-end runs: pytest -m "not slow" skips them

TINY_RUN = [
    "superpixels.scale=300",
    "superpixels.min_size=50",
    "records.num_shards=1",
    "input.crop_size=48",
    "model.width=0.125",
    "model.max_regions=64",
    "model.region_fc=16",
    "train.cam.epochs=1",
    "train.regionnet.epochs=1",
    "train.pixelnet.epochs=1",
    "train.cam.batch_size=4",
    "train.regionnet.batch_size=4",
    "train.pixelnet.batch_size=4",
]


@pytest.fixture(scope="module")
def finished(tiny_root, tmp_path_factory):
    """One tiny MCOF run with 2 iterations, shared by the tests below."""
    base = tmp_path_factory.mktemp("run")
    cwd = os.getcwd()
    os.chdir(base)  # exports land in ./saved_models
    try:
        over = ["experiment.name=tiny", "labels.prior_correction=all", "labels.mask_correction=0.75"]
        over += ["labels.mask_flip=true"]
        cfg = load_config("synthetic", TINY_RUN + over)
        rep = loop.run_all(cfg, 2, str(base / "work"), tiny_root)
        yield cfg, base, rep
    finally:
        os.chdir(cwd)


def test_report_has_every_stage_of_table_3(finished):
    cfg, base, rep = finished
    got = [(r["iteration"], r["stage"], r["split"]) for r in rep["stages"]]
    assert got == [
        (0, "seeds", "train"),
        (1, "regionnet", "train"),
        (1, "regionnet_crf", "train"),  # labels.region_crf (on in the synthetic config)
        (1, "refined", "train"),
        (1, "pixelnet", "train"),
        (1, "pixelnet_crf", "train"),
        (1, "pixelnet", "val"),
        (1, "pixelnet_crf", "val"),
        (2, "regionnet", "train"),
        (2, "regionnet_crf", "train"),
        (2, "agreed", "train"),  # labels.agreement (on in the synthetic config): what PixelNet₂ learns
        (2, "pixelnet", "train"),
        (2, "pixelnet_crf", "train"),
        (2, "pixelnet", "val"),
        (2, "pixelnet_crf", "val"),
    ]
    for r in rep["stages"]:
        assert 0 <= r["miou"] <= 100 and set(r["per_class"]) == set(rep["classes"])
    work = base / "work"
    on_disk = json.load(open(work / "report.json"))
    assert on_disk["stages"] == rep["stages"]
    assert "| 2 | pixelnet | val |" in (work / "report.md").read_text()
    # every stage's wall time, in the loop's order
    assert list(rep["seconds"]) == ["records/train", "records/val", "cam", "seeds"] + [
        f"iter{t}/{f}" for t in (1, 2) for f in ("regionnet", "regions", "pixelnet", "masks", "val")
    ]
    assert (
        all(s > 0 for s in rep["seconds"].values())
        and "| iter2/pixelnet |" in (work / "report.md").read_text()
    )
    # and its peak memory: a training stage holds TensorFlow, so more than the 100 MB of Python alone
    assert list(rep["peak_rss_mb"]) == list(rep["cpu_percent"]) == list(rep["seconds"])
    assert all(rep["peak_rss_mb"][f] > 100 for f in ("cam", "iter1/pixelnet", "iter2/regionnet"))
    assert (work / "miou_progress.png").stat().st_size > 0 and (work / "stages.png").stat().st_size > 0


def test_prior_correction_is_applied_to_the_networks_trained_on_masks(finished):
    """labels.prior_correction: PixelNet's training-set labels and those of RegionNets after the first
    undo their network's class balance, from the label shares recorded with each network; the first
    RegionNet (partial seeds) is left as it is; PixelNet's masks undo labels.mask_correction of its
    lean, validation and the export labels.prediction_correction (a half)."""
    cfg, base, rep = finished
    work = base / "work"

    def offsets(folder):
        return json.load(open(work / folder / "manifest.json"))["prior_offsets"]

    assert offsets("iter1/regions") is None and cfg.labels.prediction_correction == 0.5
    exported = json.load(open(base / rep["export"] / "logit_offsets.json"))
    for folder, network, strength in (
        ("iter1/masks", "iter1/pixelnet", 0.75),
        ("iter2/masks", "iter2/pixelnet", 0.75),
        ("iter2/regions", "iter2/regionnet", 1.0),
        ("iter1/val", "iter1/pixelnet", 0.5),
        ("iter2/val", "iter2/pixelnet", 0.5),
    ):
        done = json.load(open(work / network / "train.json"))
        shares = done["label_shares"]
        assert abs(sum(shares) - 1) < 1e-6 and len(shares) == len(offsets(folder)) == 7
        floor = min(s for s in shares if s > 0)
        expected = [strength * cfg.train.class_balance * math.log(max(s, floor)) for s in shares]
        assert offsets(folder) == pytest.approx(expected, abs=1e-5)
    assert exported == pytest.approx(offsets("iter2/val"), abs=1e-5)  # serves as validation measured
    assert json.load(open(work / "cam" / "train.json"))["label_shares"] is None
    # labels.mask_flip: PixelNet's views for the training-set masks only, not validation
    masks, val = (json.load(open(work / f / "manifest.json")) for f in ("iter1/masks", "iter1/val"))
    assert (masks["flip"], val["flip"]) == (True, False)


@pytest.mark.parametrize(
    "prior, corrected",
    [
        ("none", []),
        ("pixelnet", ["pixelnet0", "pixelnet1", "pixelnet2"]),
        ("all", ["regionnet1", "regionnet2", "pixelnet0", "pixelnet1", "pixelnet2"]),
        ("first_regionnet", ["regionnet0", "pixelnet0", "pixelnet1", "pixelnet2"]),
        ("every", ["regionnet0", "regionnet1", "regionnet2", "pixelnet0", "pixelnet1", "pixelnet2"]),
    ],
)
def test_which_networks_labels_are_prior_corrected(prior, corrected):
    got = [f"{n}{t}" for n in ("regionnet", "pixelnet") for t in range(3) if loop.corrects(prior, n, t)]
    assert got == corrected


def test_final_pixelnet_is_exported_in_tf_serving_layout(finished):
    cfg, base, rep = finished
    export = rep["export"]
    assert export.endswith(os.path.join("saved_models", "tiny", "1"))
    assert os.path.exists(os.path.join(base, export, "saved_model.pb"))


def test_rerun_resumes_without_redoing_anything(finished, tiny_root, caplog):
    caplog.set_level(logging.INFO)
    cfg, base, rep = finished
    stamps = {
        p: os.path.getmtime(base / "work" / p)
        for p in ("cam/model.keras", "iter2/pixelnet/model.keras", "iter2/val/manifest.json")
    }
    again = loop.run_all(cfg, 2, str(base / "work"), tiny_root)
    out = caplog.text
    assert "trained already" in out and "complete already" in out and "train cam:" not in out
    assert again["stages"] == rep["stages"] and again["export"] == rep["export"]
    assert stamps == {p: os.path.getmtime(base / "work" / p) for p in stamps}


@pytest.mark.parametrize("change", ["seeds.fg_threshold=0.7", "experiment.seed=1"])
def test_a_workdir_made_by_another_config_is_refused(finished, tiny_root, change):
    cfg, base, rep = finished
    other = load_config("synthetic", TINY_RUN + ["experiment.name=tiny", change])
    with pytest.raises(ValueError, match="different config"):
        loop.run_all(other, 2, str(base / "work"), tiny_root)


def test_report_cli_recomputes_the_report(finished, capsys):
    from mcof_tf import report

    cfg, base, rep = finished
    os.remove(base / "work" / "report.json")
    assert report.main(["--workdir", str(base / "work")]) == 0
    assert json.load(open(base / "work" / "report.json"))["stages"] == rep["stages"]
    assert report.main(["--workdir", str(base / "nowhere")]) == 2


def test_fully_supervised_variant(tiny_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("synthetic", TINY_RUN + ["experiment.name=tiny"])
    rep = loop.run_all(cfg, 1, str(tmp_path / "fs"), tiny_root, variant="fully_supervised", export=False)
    assert [(r["stage"], r["split"]) for r in rep["stages"]] == [("pixelnet", "val"), ("pixelnet_crf", "val")]
    assert json.load(open(tmp_path / "fs" / "config.json"))["variant"] == "fully_supervised"


def test_the_mined_masks_are_written_as_palette_pngs(finished, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    import numpy as np
    from PIL import Image

    from mcof_tf import export_masks
    from mcof_tf.data import records

    cfg, base, rep = finished
    work = base / "work"
    masks = {r.id: r.labels for r in records.read_records(str(work / "iter2" / "masks" / "*.tfrecord"))}
    pngs = sorted(p.name for p in (work / loop.MASKS_FOLDER).glob("*.png"))
    assert pngs == sorted(f"{i}.png" for i in masks) and pngs
    for name in pngs[:3]:
        im = Image.open(work / loop.MASKS_FOLDER / name)
        assert im.mode == "P" and (np.asarray(im) == masks[name[:-4]]).all()
    marker = json.load(open(work / loop.MASKS_FOLDER / export_masks.MARKER))
    assert marker["iteration"] == 2 and marker["count"] == len(masks) and marker["classes"] == rep["classes"]

    # the CLI: another iteration into a new folder, then again (nothing to do)
    out = tmp_path / "it1"
    assert export_masks.main(["--workdir", str(work), "--out", str(out), "--iteration", "1"]) == 0
    first = {r.id: r.labels for r in records.read_records(str(work / "iter1" / "masks" / "*.tfrecord"))}
    some = next(iter(first))
    assert (np.asarray(Image.open(out / f"{some}.png")) == first[some]).all()
    assert export_masks.main(["--workdir", str(work), "--out", str(out), "--iteration", "1"]) == 0
    assert "nothing to do" in caplog.text
    # refused: an iteration that did not run, and a folder of PNGs it did not write (ground truth, say)
    assert export_masks.main(["--workdir", str(work), "--out", str(tmp_path / "x"), "--iteration", "3"]) == 2
    theirs = tmp_path / "gt"
    theirs.mkdir()
    (theirs / "a.png").write_bytes(b"mine")
    assert export_masks.main(["--workdir", str(work), "--out", str(theirs)]) == 2
    assert (theirs / "a.png").read_bytes() == b"mine" and "did not write" in capsys.readouterr().err


def test_report_without_ground_truth(finished, tmp_path):
    """What a user with tags only sees: label statistics per stage, strips without a ground-truth column."""
    import shutil

    cfg, base, rep = finished
    work = tmp_path / "work"
    shutil.copytree(base / "work", work, ignore=shutil.ignore_patterns("*.png", "report.*"))
    for path in work.rglob("manifest.json"):
        m = json.loads(path.read_text())
        m.pop("metrics", None)
        path.write_text(json.dumps(m))
    from mcof_tf.report import report

    no_gt = report(str(work))
    assert [(r["iteration"], r["stage"], r["split"]) for r in no_gt["stages"]] == [
        (r["iteration"], r["stage"], r["split"]) for r in rep["stages"]
    ]
    for r in no_gt["stages"]:
        st = r["stats"]
        assert "miou" not in r and st["images"] > 0 and 0 <= st["labelled"] <= 100
        assert abs(sum(st["share"].values()) + (100 - st["labelled"]) - 100) < 0.1
        assert (st["confidence"] is not None) == (r["stage"] == "pixelnet")
        assert (st["changed"] is None) == (r["stage"] == "seeds" or r["split"] == "val")
    text = (work / "report.md").read_text()
    assert "no ground-truth masks" in text and "| 2 | pixelnet | val |" in text
    assert (work / "stages.png").exists() and not (work / "miou_progress.png").exists()


# The stages an ablation computes as the MCOF run does (the `finished` run's config differs from TINY_RUN
# only in labels.* keys, which no stage up to the first RegionNet reads): copied into its workdir, as a
# user would to save the time, they are checked against what they consumed and reused
SHARED_WITH_MCOF = ("records", "cam", "seeds", "iter1/regionnet")


@pytest.mark.parametrize("flag", ["--no-saliency", "--direct-iterative"])
def test_ablation_variants_from_the_cli(flag, finished, tiny_root, tmp_path, capsys, caplog):
    """The paper's Table 4 (no saliency-guided refinement) and Fig. 8 baseline (PixelNet retrained on
    its own masks after iteration 1), each in its own workdir, starting from copies of the stages it
    shares with an MCOF run."""
    import shutil

    from mcof_tf import train
    from mcof_tf.data import records

    caplog.set_level(logging.INFO)
    _, base, _ = finished
    work = tmp_path / "w"
    for stage in SHARED_WITH_MCOF:
        shutil.copytree(base / "work" / stage, work / stage)
    iterations = "2" if flag == "--direct-iterative" else "1"
    args = ["--workdir", str(work), "--data-root", tiny_root, "--iter", iterations, "--no-export", flag]
    assert train.main(args + [a for o in TINY_RUN for a in ("--set", o)]) == 0
    rep = json.load(open(work / "report.json"))
    stages = [(r["iteration"], r["stage"], r["split"]) for r in rep["stages"]]
    variant = json.load(open(work / "config.json"))["variant"]
    if flag == "--no-saliency":
        assert variant == "no_saliency" and (1, "refined", "train") not in stages
        assert {
            r.label_stage for r in records.read_records(str(work / "iter1" / "regions" / "*.tfrecord"))
        } == {"regionnet"}
    else:
        assert variant == "direct_iterative" and (1, "refined", "train") in stages
        assert (2, "regionnet", "train") not in stages and not (work / "iter2" / "regionnet").exists()
        assert (2, "pixelnet", "val") in stages
    assert f"iteration {iterations}  pixelnet" in capsys.readouterr().out
    # the copies were reused: the train and val records and the seeds, the CAM and the first RegionNet
    assert caplog.text.count("complete already; nothing to do") == 3 and "redoing" not in caplog.text
    assert "cam: trained already" in caplog.text and "iter1/regionnet: trained already" in caplog.text


def test_run_record_differences_name_the_keys_and_accept_new_defaults():
    cfg = load_config("synthetic")
    mine = {"config": cfg.to_dict(), "variant": "mcof", "data_root": "/d"}
    older = json.loads(json.dumps(mine))
    del older["config"]["train"]["pixelnet"]["warm_epochs"]  # a key an older mcof_tf did not write
    older["config"]["experiment"]["workdir"] = "elsewhere"  # moved workdirs resume
    older["config"]["train"]["mixed_precision"] = False  # how stages ran (an older record's boolean)
    older["config"]["train"]["devices"] = ["/gpu:0"]
    assert loop.run_record_differences(older, mine) == []
    cfg.train.pixelnet.warm_epochs = 5  # ... but not when the new key is set to something else
    changed = {"config": cfg.to_dict(), "variant": "no_saliency", "data_root": "/d"}
    assert loop.run_record_differences(older, changed) == ["config.train.pixelnet.warm_epochs", "variant"]


def test_a_shorter_rerun_reports_and_exports_its_own_last_iteration(
    finished, tiny_root, tmp_path, monkeypatch, caplog
):
    import shutil

    caplog.set_level(logging.INFO)
    cfg, base, rep = finished
    work = tmp_path / "work"
    shutil.copytree(base / "work", work)
    monkeypatch.chdir(tmp_path)
    again = loop.run_all(cfg, 1, str(work), tiny_root)
    # a moved workdir: nothing is retrained or relabelled
    assert "redoing" not in caplog.text and "iter1/pixelnet: trained already" in caplog.text
    assert "train pixelnet:" not in caplog.text and "relabel pixelnet: 4 records" not in caplog.text
    # this run's report and export: iteration 1's, not the folders a longer run left
    assert max(r["iteration"] for r in again["stages"]) == 1 and "iter2/pixelnet" not in again["seconds"]
    marker = json.loads((work / "export.json").read_text())
    assert marker["pixelnet"].endswith(os.path.join("iter1", "pixelnet"))
    assert os.path.exists(os.path.join(again["export"], "saved_model.pb"))
    assert (work / "iter2" / "pixelnet" / "model.keras").exists()  # left as it was


def test_a_trained_stage_is_not_redone_for_how_it_ran(tmp_path):
    """The dtype policy, XLA, op determinism and devices are execution keys: a stage trained under
    another one (or recorded before mixed_precision took a policy name, or under jit_compile true, or
    without op determinism) is reused, and so is one trained from scratch when only warm_epochs or
    warm_learning_rate changed; a change of what it learns from is not."""
    from mcof_tf import training

    cfg = load_config("synthetic")
    records = str(tmp_path / "*.tfrecord")
    now = training.training_inputs("pixelnet", records, cfg, 7)
    assert not {"mixed_precision", "devices", "jit_compile", "deterministic"} & set(now["config"]["train"])
    before = json.loads(json.dumps(now))
    before["config"]["train"]["mixed_precision"] = False  # an inputs record of an older mcof_tf
    before["config"]["train"]["jit_compile"] = True
    before["config"]["train"]["deterministic"] = False
    (tmp_path / "train.json").write_text(json.dumps({"inputs": before}))
    assert training.stale_reason(str(tmp_path), now) is None
    assert training.inputs_difference(before, now) is None  # a killed stage's backup is kept alike
    init = tmp_path / "previous.keras"
    init.write_bytes(b"weights")
    warm = training.training_inputs("pixelnet", records, cfg, 7, str(init))
    older = json.loads(json.dumps(warm))
    del older["config"]["train"]["pixelnet"]["warm_learning_rate"]  # recorded before the key existed
    (tmp_path / "train.json").write_text(json.dumps({"inputs": older}))
    assert training.stale_reason(str(tmp_path), warm) is None  # at 0 it means the cold start's value
    (tmp_path / "train.json").write_text(json.dumps({"inputs": before}))
    cfg.train.pixelnet.warm_epochs = 5  # a stage trained from scratch never used them
    cfg.train.pixelnet.warm_learning_rate = 0.05
    assert training.stale_reason(str(tmp_path), training.training_inputs("pixelnet", records, cfg, 7)) is None
    for key, value in (("warm_epochs", 5), ("warm_learning_rate", 0.05)):
        cfg.train.pixelnet.warm_epochs, cfg.train.pixelnet.warm_learning_rate = 0, 0.0
        setattr(cfg.train.pixelnet, key, value)
        warm = training.training_inputs("pixelnet", records, cfg, 7, str(init))
        (tmp_path / "train.json").write_text(
            json.dumps({"inputs": {**before, "init_from": warm["init_from"]}})
        )
        assert training.stale_reason(str(tmp_path), warm) == "its config changed", key  # a warm one does
    (tmp_path / "train.json").write_text(json.dumps({"inputs": before}))
    cfg.train.pixelnet.warm_epochs, cfg.train.pixelnet.warm_learning_rate = 0, 0.0
    cfg.train.pixelnet.learning_rate *= 2
    later = training.training_inputs("pixelnet", records, cfg, 7)
    assert training.stale_reason(str(tmp_path), later) == "its config changed"


def test_a_regionnet_is_redone_when_the_network_its_backbone_came_from_changed(tmp_path):
    """train.regionnet_backbone itself is not part of a stage's inputs (a RegionNet that takes no backbone,
    the first, is reused when it changes); the file the backbone came from is."""
    from mcof_tf import training

    cfg = load_config("synthetic")
    records = str(tmp_path / "*.tfrecord")
    first = training.training_inputs("regionnet", records, cfg, 7)
    (tmp_path / "train.json").write_text(json.dumps({"inputs": first}))
    cfg.train.regionnet_backbone = "pixelnet"
    assert (
        training.stale_reason(str(tmp_path), training.training_inputs("regionnet", records, cfg, 7)) is None
    )
    pixelnet = tmp_path / "pixelnet.keras"
    pixelnet.write_bytes(b"weights")
    later = training.training_inputs("regionnet", records, cfg, 7, backbone_from=str(pixelnet))
    assert training.stale_reason(str(tmp_path), later) == "the network its backbone starts from changed"
    (tmp_path / "train.json").write_text(json.dumps({"inputs": later}))
    assert training.stale_reason(str(tmp_path), later) is None
    pixelnet.write_bytes(b"other weights")
    again = training.training_inputs("regionnet", records, cfg, 7, backbone_from=str(pixelnet))
    assert training.stale_reason(str(tmp_path), again) == "the network its backbone starts from changed"


def _relabel_jobs(monkeypatch, cfg, variant="mcof") -> list[tuple[str, dict]]:
    """The relabel jobs Algorithm 1 asks for over 3 iterations: (folder, keyword arguments), nothing run."""
    calls = []
    monkeypatch.setattr(loop, "preprocess_split", lambda run, split: (split, {"classes": ["bg", "a"]}))
    monkeypatch.setattr(loop, "train_network", lambda run, net, rec, folder, C, prev=None, bb=None: folder)
    monkeypatch.setattr(loop, "validate", lambda *a, **k: None)
    monkeypatch.setattr(
        loop, "relabel_records", lambda run, stage, m, r, folder, c, t, **k: calls.append((folder, k))
    )
    loop.mcof(loop.Run(cfg, "w", "d", variant), 3)
    return calls


@pytest.mark.parametrize("every, variant", [(False, "mcof"), (True, "mcof"), (True, "no_saliency")])
def test_which_iterations_refine_regions(every, variant, monkeypatch):
    """Algorithm 1 refines RegionNet's regions at iteration 1 only; labels.refine_every_iteration at
    every iteration; the no-saliency ablation never (its point). labels.saliency_background guards
    PixelNet's training-set masks (the next seeds) at every iteration, but not the no-saliency ablation's."""
    cfg = load_config(
        "synthetic", [f"labels.refine_every_iteration={str(every).lower()}", "labels.saliency_background=0.1"]
    )
    calls = [
        (f, k.get("refine", False), k.get("saliency_background", 0.0))
        for f, k in _relabel_jobs(monkeypatch, cfg, variant)
    ]
    regions = ["iter1/regions", "iter2/regions", "iter3/regions"]
    assert [f for f, _, _ in calls if f.endswith("/regions")] == regions
    expected = [] if variant == "no_saliency" else regions if every else regions[:1]
    assert [f for f, refine, _ in calls if refine] == expected
    guarded = [] if variant == "no_saliency" else [f"iter{t}/masks" for t in (1, 2, 3)]
    assert [f for f, _, guard in calls if guard == 0.1] == guarded
    assert all(guard == 0.0 for f, _, guard in calls if f not in guarded)  # seeds, regions


@pytest.mark.parametrize("on", [False, True])
def test_agreement_applies_from_the_second_iteration(on, monkeypatch):
    """labels.agreement: the regions of iterations >= 2 (mined from PixelNet's masks) agree with them;
    the first RegionNet's come from partial seeds and are left as they are."""
    cfg = load_config("synthetic", [f"labels.agreement={str(on).lower()}"])
    agreed = [f for f, k in _relabel_jobs(monkeypatch, cfg) if k.get("agreement")]
    assert agreed == (["iter2/regions", "iter3/regions"] if on else [])


@pytest.mark.parametrize("on", [False, True])
def test_region_crf_applies_to_every_iterations_regions(on, monkeypatch):
    """labels.region_crf: RegionNet's halo is not an iteration-1 matter, so every iteration's regions
    go through the CRF; no other job is asked for it."""
    cfg = load_config(
        "synthetic", [f"labels.region_crf={str(on).lower()}", "labels.region_crf_confidence=0.9"]
    )
    jobs = _relabel_jobs(monkeypatch, cfg)
    assert [(f, k["region_crf"]) for f, k in jobs if k.get("region_crf")] == (
        [("iter1/regions", 0.9), ("iter2/regions", 0.9), ("iter3/regions", 0.9)] if on else []
    )


@pytest.mark.parametrize("every, variant", [(False, "mcof"), (True, "mcof"), (False, "no_saliency")])
def test_refine_posterior_goes_with_the_refinement(every, variant, monkeypatch):
    """labels.refine_posterior is a setting of the saliency-guided refinement: it goes to the jobs that
    refine (iteration 1; every iteration with labels.refine_every_iteration), to no other (the relabel job
    refuses it without --refine), and to none in the no-saliency ablation."""
    cfg = load_config(
        "synthetic", ["labels.refine_posterior=0.2", f"labels.refine_every_iteration={str(every).lower()}"]
    )
    jobs = _relabel_jobs(monkeypatch, cfg, variant)
    assert [f for f, k in jobs if k.get("refine_posterior")] == [f for f, k in jobs if k.get("refine")]
    assert {k["refine_posterior"] for f, k in jobs if k.get("refine")} <= {0.2}
    expected = 0 if variant == "no_saliency" else 3 if every else 1
    assert sum(1 for f, k in jobs if k.get("refine_posterior") == 0.2) == expected


@pytest.mark.parametrize("source", ["own", "pixelnet"])
def test_where_the_regionnets_backbones_start(source, monkeypatch):
    """train.regionnet_backbone: own: each RegionNet starts from the previous one only (warm_start);
    pixelnet: RegionNets after the first also take the backbone of the PixelNet trained just before."""
    trained = []

    def train(run, net, rec, folder, C, prev=None, backbone=None):
        trained.append((folder, prev, backbone))
        return folder

    monkeypatch.setattr(loop, "preprocess_split", lambda run, split: (split, {"classes": ["bg", "a"]}))
    monkeypatch.setattr(loop, "train_network", train)
    monkeypatch.setattr(loop, "validate", lambda *a, **k: None)
    monkeypatch.setattr(loop, "relabel_records", lambda *a, **k: "records")
    cfg = load_config("synthetic", [f"train.regionnet_backbone={source}"])
    loop.mcof(loop.Run(cfg, "w", "d", "mcof"), 3)
    regionnets = [(prev, backbone) for folder, prev, backbone in trained if folder.endswith("/regionnet")]
    previous = [None, "iter1/regionnet", "iter2/regionnet"]
    backbones = [None, "iter1/pixelnet", "iter2/pixelnet"] if source == "pixelnet" else [None] * 3
    assert regionnets == list(zip(previous, backbones))
    assert [b for f, _, b in trained if not f.endswith("/regionnet")] == [None] * 4  # CAM, PixelNets
