"""The bad-input suite of the command lines, in one place: every case must end with exit code 2 and a
one-line message naming the problem, never a traceback or a half-done output.

Per-image bad input (corrupt/truncated/odd-mode images, wrong-size masks, unknown classes, missing
files, ids escaping the root) is exercised through the Beam jobs in test_preprocess.py and
test_voc.py, the served model's (non-image bytes, empty batch, huge image) in test_serving.py,
predict-time unreadable files in test_serving.py, and a workdir's refusal to mix runs in test_loop.py
as well as here.
"""

import json
import os

import pytest

from beam_jobs import predict as beam_predict
from beam_jobs import preprocess, relabel
from mcof_tf import export, predict, report, train

UNWRITABLE = "/proc/mcof_tf_test_out"  # cannot be created, even by root


@pytest.fixture(scope="module")
def records(tiny_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bad") / "records")
    assert (
        preprocess.main(
            ["--data-root", tiny_root, "--split", "val", "--out", out, "--set", "records.num_shards=1"]
        )
        == 0
    )
    return os.path.join(out, "*.tfrecord")


@pytest.fixture
def other_workdir(tmp_path):
    """A workdir claimed by another config."""
    work = tmp_path / "claimed"
    work.mkdir()
    (work / "config.json").write_text(
        json.dumps({"config": {"experiment": {"seed": 99}}, "variant": "mcof", "data_root": "/elsewhere"})
    )
    return str(work)


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


CASES = {
    # config loading
    "missing config": (train, ["--config", "/nonexistent.yaml"], "config file not found"),
    "unknown key": (train, ["--set", "model.nope=1"], "unknown config key 'model.nope'"),
    "wrong type": (train, ["--set", "train.cam.epochs=abc"], "train.cam.epochs: expected an integer"),
    "bad choice": (train, ["--set", "labels.tag_rule=maybe"], "labels.tag_rule"),
    "no shards": (train, ["--set", "records.num_shards=0"], "records.num_shards: expected at least 1"),
    "unsafe yaml": (train, ["--config", "YAML:model: !!python/object/apply:os.system ['true']"], "c.yaml"),
    "yaml not a mapping": (train, ["--config", "YAML:- a\n- b\n"], "c.yaml"),
    # paths given to the CLIs
    "no dataset root": (
        train,
        ["--data-root", "/nonexistent", "--workdir", "TMP/w"],
        "/nonexistent is not a directory",
    ),
    "unwritable workdir": (train, ["--data-root", "TINY", "--workdir", UNWRITABLE], "cannot write to"),
    "workdir of another config": (train, ["--data-root", "TINY", "--workdir", "OTHER"], "different config"),
    "val split = train split": (
        train,
        ["--data-root", "TINY", "--workdir", "TMP/w", "--set", "data.val_split=train"],
        "are both 'train'",
    ),
    "preprocess: no root": (
        preprocess,
        ["--data-root", "/nonexistent", "--out", "TMP/o"],
        "is not a directory",
    ),
    "preprocess: no split list": (
        preprocess,
        ["--data-root", "TINY", "--split", "nosuch", "--out", "TMP/o"],
        "nosuch",
    ),
    "preprocess: unwritable out": (
        preprocess,
        ["--data-root", "TINY", "--out", UNWRITABLE],
        "cannot write to",
    ),
    "relabel: no records": (
        relabel,
        ["--records", "/nonexistent/*.tfrecord", "--stage", "groundtruth", "--out", "TMP/o"],
        "no TFRecord files match",
    ),
    "relabel: no model": (
        relabel,
        ["--records", "RECORDS", "--stage", "pixelnet", "--model", "/nonexistent", "--out", "TMP/o"],
        "no trained model",
    ),
    "relabel: unwritable out": (
        relabel,
        ["--records", "RECORDS", "--stage", "groundtruth", "--out", UNWRITABLE],
        "cannot write to",
    ),
    "export: no model": (export, ["--checkpoint", "/nonexistent", "--out", "TMP/o"], "no trained model"),
    "predict: no model": (
        predict,
        ["--model", "/nonexistent", "--images", "TMP", "--out", "TMP/o"],
        "holds no SavedModel",
    ),
    "beam predict: no model": (
        beam_predict,
        ["--model", "/nonexistent", "--input", "TMP", "--output", "TMP/o"],
        "holds no SavedModel",
    ),
    "report: not a workdir": (report, ["--workdir", "/nonexistent"], "not an mcof_tf workdir"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_bad_input_exits_2_with_a_clear_message(
    case, tiny_root, records, other_workdir, tmp_path, capsys
):
    module, args, message = CASES[case]
    subst = {"TINY": tiny_root, "OTHER": other_workdir, "RECORDS": records}
    argv = []
    for a in args:
        a = subst.get(a, a).replace("TMP", str(tmp_path))
        argv.append(_yaml(tmp_path, a[5:]) if a.startswith("YAML:") else a)
    assert module.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


def test_workdir_refusal_leaves_the_other_run_untouched(tiny_root, other_workdir, capsys):
    before = sorted(os.listdir(other_workdir)), open(os.path.join(other_workdir, "config.json")).read()
    assert train.main(["--data-root", tiny_root, "--workdir", other_workdir]) == 2
    assert (
        sorted(os.listdir(other_workdir)),
        open(os.path.join(other_workdir, "config.json")).read(),
    ) == before
