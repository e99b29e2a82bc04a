"""Crash-safe resume, for real: `python -m mcof_tf.train` is SIGKILLed inside a Beam job and inside a
training epoch, re-run, and must finish with the same report as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_loop import TINY_RUN

pytestmark = pytest.mark.slow  # end-to-end runs: pytest -m "not slow" skips them

# PixelNet gets 4 epochs so that a kill can land inside one (after epoch 2's backup: one after every
# epoch, as these take milliseconds)
ARGS = ["--iter", "1", "--no-export"] + [
    a for kv in TINY_RUN + ["train.pixelnet.epochs=4", "train.backup_seconds=0"] for a in ("--set", kv)
]


def _command(root, workdir):
    return [sys.executable, "-m", "mcof_tf.train", "--data-root", root, "--workdir", str(workdir)] + ARGS


def _run(root, workdir):
    t0 = time.time()
    # the run's story is logged to stderr, Keras' epoch lines go to stdout: both, in order
    r = subprocess.run(
        _command(root, workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    assert r.returncode == 0, r.stdout[-3000:]
    return r.stdout, time.time() - t0


def _run_and_kill(root, workdir, when, delay=0.0):
    """Start the command, SIGKILL its whole process group `delay` s after `when(line)` is true for a
    line of its output (stdout and stderr)."""
    t0 = time.time()
    p = subprocess.Popen(
        _command(root, workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in p.stdout:
        seen.append(line)
        if when(line):
            time.sleep(delay)
            os.killpg(p.pid, signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(seen[-20:])
    return "".join(seen), time.time() - t0


def _stages(workdir):
    return [
        (r["iteration"], r["stage"], r["split"], r["miou"])
        for r in json.loads((workdir / "report.json").read_text())["stages"]
    ]


def _leftovers(workdir):
    return [os.path.join(d, f) for d, _, files in os.walk(workdir) for f in files if ".tmp" in f]


@pytest.fixture(scope="module")
def reference(reference_run):
    work, seconds = reference_run
    return _stages(work), seconds


def test_kill_inside_a_beam_job_then_resume(tiny_root, tmp_path, reference):
    work = tmp_path / "work"
    # the regionnet relabel job: CAM, seeds and RegionNet are finished by then
    killed, t_killed = _run_and_kill(
        tiny_root, work, lambda line: "relabel regionnet:" in line, delay=1.0
    )  # the job prints its start line, then runs its pipeline
    assert not (work / "iter1" / "regions" / "manifest.json").exists()
    out, t_resumed = _run(tiny_root, work)
    for done in ("cam: trained already", "iter1/regionnet: trained already", "relabel cam: ", "preprocess: "):
        assert done in out, done
    assert "complete already" in out and "train cam:" not in out and "train regionnet:" not in out
    assert _stages(work) == reference[0]
    assert _leftovers(work) == []
    print(
        f"Beam-job kill: uninterrupted {reference[1]:.1f}s; killed run {t_killed:.1f}s + resumed run "
        f"{t_resumed:.1f}s = {t_killed + t_resumed:.1f}s (lost {t_killed + t_resumed - reference[1]:.1f}s)"
    )


def test_kill_inside_a_training_epoch_then_resume(tiny_root, tmp_path, reference):
    work = tmp_path / "work"
    state = {"pixelnet": False}

    def when(line):
        state["pixelnet"] |= "train pixelnet:" in line
        return state["pixelnet"] and line.startswith("Epoch 3/4")  # epochs 1-2 are backed up

    killed, t_killed = _run_and_kill(tiny_root, work, when)
    assert not (work / "iter1" / "pixelnet" / "model.keras").exists()  # no half-written model is used
    out, t_resumed = _run(tiny_root, work)
    assert "train pixelnet: resuming after epoch 2" in out
    assert "iter1/regionnet: trained already" in out and "train regionnet:" not in out
    assert _stages(work) == reference[0]  # exact: the resumed stream continues where it stopped
    assert _leftovers(work) == []
    print(
        f"training kill: uninterrupted {reference[1]:.1f}s; killed run {t_killed:.1f}s + resumed run "
        f"{t_resumed:.1f}s = {t_killed + t_resumed:.1f}s (lost {t_killed + t_resumed - reference[1]:.1f}s)"
    )


def test_a_second_run_on_a_live_workdir_is_refused_and_a_dead_runs_lock_is_taken_over(
    tiny_root, tmp_path, reference
):
    """Two real processes: while the first trains, a second on the same workdir exits 2 naming the
    first; after the first is killed (its lock left behind), the next run takes the lock over and
    finishes with the uninterrupted run's report."""
    work = tmp_path / "work"
    second = {}

    def when(line):
        if "train cam:" in line and not second:  # the first run holds the workdir from its start
            r = subprocess.run(
                _command(tiny_root, work),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
            )
            second.update(rc=r.returncode, out=r.stdout, holder=json.loads((work / ".lock").read_text()))
            return True
        return False

    _run_and_kill(tiny_root, work, when)
    assert second["rc"] == 2, second["out"][-2000:]
    assert f"is in use by pid {second['holder']['pid']}" in second["out"]
    assert (work / ".lock").exists()  # SIGKILL leaves the lock behind
    out, _ = _run(tiny_root, work)
    assert f"taking over the lock of pid {second['holder']['pid']}" in out
    assert _stages(work) == reference[0]
    assert not (work / ".lock").exists()
