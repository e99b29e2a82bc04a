"""The seeds-averaged method benchmark's arithmetic (the runs themselves are benchmarks, not tests)."""

import numpy as np
import pytest

from mcof_tf.bench import main, summarize_method


def _report(seeds_miou, final_val, precision=None):
    rows = [
        {
            "iteration": 0,
            "stage": "seeds",
            "split": "train",
            "miou": seeds_miou,
            "object_precision": precision,
            "object_recall": 20.0,
        },
        {"iteration": 1, "stage": "pixelnet", "split": "val", "miou": final_val - 5},
        {"iteration": 2, "stage": "pixelnet", "split": "val", "miou": final_val},
    ]
    return {"stages": rows}


def test_summary_means_stds_ratio_and_differences():
    reports = {
        ("mcof", 0): _report(20.0, 50.0, 90.0),
        ("mcof", 1): _report(24.0, 54.0, 80.0),
        ("no_saliency", 0): _report(20.0, 47.0),
        ("no_saliency", 1): _report(24.0, 50.0),
        ("fully_supervised", 0): {
            "stages": [{"iteration": 1, "stage": "pixelnet", "split": "val", "miou": 60.0}]
        },
        ("fully_supervised", 1): {
            "stages": [{"iteration": 1, "stage": "pixelnet", "split": "val", "miou": 64.0}]
        },
    }
    s = summarize_method(reports)
    seeds = next(r for r in s["rows"] if r["variant"] == "mcof" and r["stage"] == "seeds")
    assert seeds["miou"] == 22.0 and abs(seeds["miou_std"] - np.std([20, 24], ddof=1)) < 1e-9
    assert seeds["object_precision"] == 85.0 and seeds["seeds"] == 2
    assert abs(s["ratio_to_fully_supervised"] - 52.0 / 62.0) < 1e-9
    (d,) = s["differences"]
    assert d["variant"] == "no_saliency" and d["iteration"] == 2
    assert d["mcof_minus_variant"] == 3.5 and abs(d["std"] - np.std([3, 4], ddof=1)) < 1e-9 and d["holds"]
    # mcof rows first, then the ablations, then the ceiling; stages in pipeline order
    assert [r["variant"] for r in s["rows"]][0] == "mcof" and s["rows"][-1]["variant"] == "fully_supervised"
    assert [(r["iteration"], r["stage"]) for r in s["rows"] if r["variant"] == "mcof"] == [
        (0, "seeds"),
        (1, "pixelnet"),
        (2, "pixelnet"),
    ]
    three = summarize_method(
        {
            ("mcof", 0): {
                "stages": [
                    {"iteration": 1, "stage": s_, "split": "train", "miou": 1.0}
                    for s_ in ("pixelnet", "refined", "regionnet")
                ]
            }
        }
    )
    assert [r["stage"] for r in three["rows"]] == ["regionnet", "refined", "pixelnet"]


def test_table_3_steps_are_paired_per_seed_and_judged_against_their_std():
    def run(seeds, regionnet, refined, pixelnet1, pixelnet3):
        train = [(0, "seeds", seeds), (1, "regionnet", regionnet), (1, "refined", refined)]
        train += [(1, "pixelnet", pixelnet1), (3, "pixelnet", pixelnet3)]
        rows = [{"iteration": i, "stage": st, "split": "train", "miou": m} for i, st, m in train]
        return {"stages": rows + [{"iteration": 3, "stage": "pixelnet", "split": "val", "miou": 0.0}]}

    # seed 1 is 10 points above seed 0 everywhere: paired steps do not see it (unpaired stds of 7 would)
    s = summarize_method(
        {
            ("mcof", 0): run(20.0, 60.0, 70.0, 69.0, 74.0),
            ("mcof", 1): run(30.0, 70.0, 81.0, 80.0, 82.0),
            ("no_saliency", 0): run(20.0, 60.0, 70.0, 69.0, 74.0),  # not MCOF's chain
        }
    )
    steps = {(t["from"], t["to"]): t for t in s["table3"]}
    assert list(steps) == [
        ("seeds 0", "regionnet 1"),
        ("regionnet 1", "refined 1"),
        ("refined 1", "pixelnet 1"),
        ("pixelnet 1", "pixelnet 3"),
    ]
    assert (
        steps[("seeds 0", "regionnet 1")]["step"] == 40.0 and steps[("seeds 0", "regionnet 1")]["std"] == 0.0
    )
    assert steps[("seeds 0", "regionnet 1")]["holds"]
    refine = steps[("regionnet 1", "refined 1")]  # +10, +11
    assert refine["step"] == 10.5 and abs(refine["std"] - np.std([10, 11], ddof=1)) < 1e-9 and refine["holds"]
    assert not steps[("refined 1", "pixelnet 1")]["holds"]  # -1 on both seeds
    last = steps[("pixelnet 1", "pixelnet 3")]  # +5, +2: mean 3.5 reaches the 3 points, std 2.1 below it
    assert last["minimum"] == 3.0 and last["step"] == 3.5 and last["holds"] and last["seeds"] == 2
    noisy = summarize_method(
        {("mcof", 0): run(20.0, 60.0, 70.0, 69.0, 80.0), ("mcof", 1): run(30.0, 70.0, 81.0, 80.0, 80.0)}
    )
    assert not noisy["table3"][-1]["holds"]  # +11 and 0: mean 5.5 ≥ 3, but std 7.8 above it
    # without refinement (the no-saliency chain) RegionNet₁ leads straight to PixelNet₁
    bare = summarize_method(
        {("mcof", 0): {"stages": [r for r in run(20, 60, 70, 69, 74)["stages"] if r["stage"] != "refined"]}}
    )
    assert [(t["from"], t["to"]) for t in bare["table3"]][1] == ("regionnet 1", "pixelnet 1")


def test_table_3_read_as_what_each_stage_hands_on():
    # RegionNet's regions after the CRF and PixelNet's CRF masks stand in for the raw networks where the
    # runs have them; the raw chain is unchanged beside it
    train = [(0, "seeds", 20.0), (1, "regionnet", 50.0), (1, "regionnet_crf", 62.0), (1, "refined", 60.0)]
    train += [
        (1, "pixelnet", 58.0),
        (1, "pixelnet_crf", 70.0),
        (2, "pixelnet", 66.0),
        (2, "pixelnet_crf", 72.0),
    ]
    rows = [{"iteration": i, "stage": st, "split": "train", "miou": m} for i, st, m in train]
    s = summarize_method({("mcof", 0): {"stages": rows}})
    raw = [(t["from"], t["to"], t["step"]) for t in s["table3"]]
    assert raw == [
        ("seeds 0", "regionnet 1", 30.0),
        ("regionnet 1", "refined 1", 10.0),
        ("refined 1", "pixelnet 1", -2.0),
        ("pixelnet 1", "pixelnet 2", 8.0),
    ]
    on = [(t["from"], t["to"], t["step"], t["holds"]) for t in s["table3_handed_on"]]
    assert on == [
        ("seeds 0", "regionnet_crf 1", 42.0, True),
        ("regionnet_crf 1", "refined 1", -2.0, False),
        ("refined 1", "pixelnet_crf 1", 10.0, True),
        ("pixelnet_crf 1", "pixelnet_crf 2", 2.0, False),  # below the last step's 3 points
    ]
    # a config without the CRFs hands on the raw output: the two readings are the same
    bare = summarize_method({("mcof", 0): {"stages": [r for r in rows if not r["stage"].endswith("_crf")]}})
    assert bare["table3_handed_on"] == bare["table3"]


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["method", "--variants", "mcof,bogus", "--seeds", "0"])


def test_method_figure_draws_the_variants(tmp_path):
    from mcof_tf.bench import method_figure

    reports = {
        ("mcof", 0): _report(20.0, 50.0, 90.0),
        ("direct_iterative", 0): _report(20.0, 45.0),
        ("fully_supervised", 0): {
            "stages": [{"iteration": 1, "stage": "pixelnet", "split": "val", "miou": 60.0}]
        },
    }
    for rep in reports.values():  # train rows too, the figure's x axis
        rep["stages"] += [{"iteration": 1, "stage": "pixelnet", "split": "train", "miou": 40.0}]
    method_figure(summarize_method(reports), str(tmp_path / "method.png"))
    assert (tmp_path / "method.png").stat().st_size > 5000


def test_the_benchmark_knows_every_variant_of_the_loop():
    from mcof_tf import bench, loop

    assert bench.METHOD_VARIANTS == loop.VARIANTS


def test_a_failed_run_is_named_and_the_others_are_still_summarised(tmp_path, monkeypatch, capsys):
    import json
    import subprocess

    from mcof_tf import bench, data

    monkeypatch.setattr(data, "ensure_dataset", lambda cfg: None)

    def fake_train(cmd, stdout, stderr):  # `python -m mcof_tf.train`: seed 1 dies, the others report
        workdir, seed = cmd[cmd.index("--workdir") + 1], cmd[cmd.index("--set") + 1]
        if seed == "experiment.seed=1":
            return subprocess.CompletedProcess(cmd, 3)
        with open(f"{workdir}/report.json", "w") as f:
            json.dump(_report(20.0, 50.0 + int(seed[-1])), f)
        return subprocess.CompletedProcess(cmd, 0)

    for seed in (0, 2):
        (tmp_path / "synthetic" / f"mcof-seed{seed}").mkdir(parents=True)
    monkeypatch.setattr(bench.subprocess, "run", fake_train)
    with pytest.raises(SystemExit) as e:
        main(["method", "--root", str(tmp_path), "--seeds", "0,1,2", "--variants", "mcof", "--iter", "2"])
    assert "1 of 3 runs failed" in str(e.value) and "mcof seed 1" in str(e.value)
    out = capsys.readouterr().out
    assert "51.00 ± 1.41" in out  # final val of seeds 0 and 2 (50, 52) summarised without seed 1
    assert (tmp_path / "synthetic" / "summary.json").exists()
