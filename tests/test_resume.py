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
    """Start the command, SIGKILL its whole process group `delay` s after `when(line, process)` is true
    for a line of its output (stdout and stderr)."""
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
        if when(line, p):
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


@pytest.fixture(scope="module")
def killed_twice(tiny_root, tmp_path_factory, reference):
    """One workdir, three real processes, as a user would live it: run A, while it trains the CAM, is
    joined by a second run on the same workdir (refused), then SIGKILLed inside the regionnet relabel
    job; run B takes A's lock over, resumes, and is SIGKILLed inside a PixelNet epoch; run C resumes and
    finishes. The tests below check each step; C must end with the uninterrupted run's report."""
    work = tmp_path_factory.mktemp("killed") / "work"
    got = {"work": work}

    def second_run_then_kill_in_beam(line, a):
        if "train cam:" in line and "second" not in got:  # A holds the workdir from its start
            # A is stopped meanwhile (alive, its lock held), so that it is still in its CAM, not past
            # the relabel job it is to be killed in, when the refused run returns
            os.killpg(a.pid, signal.SIGSTOP)
            r = subprocess.run(
                _command(tiny_root, work),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
            )
            got["second"] = dict(
                rc=r.returncode, out=r.stdout, holder=json.loads((work / ".lock").read_text())
            )
            os.killpg(a.pid, signal.SIGCONT)
        return "relabel regionnet:" in line  # the job prints its start line, then runs its pipeline

    got["a"], t_a = _run_and_kill(tiny_root, work, second_run_then_kill_in_beam, delay=1.0)
    got["after_a"] = {
        "lock": (work / ".lock").exists(),
        "regions": (work / "iter1" / "regions" / "manifest.json").exists(),
    }
    state = {"pixelnet": False}

    def in_epoch_3(line, _):
        state["pixelnet"] |= "train pixelnet:" in line
        return state["pixelnet"] and line.startswith("Epoch 3/4")  # epochs 1-2 are backed up

    got["b"], t_b = _run_and_kill(tiny_root, work, in_epoch_3)
    got["after_b"] = {"model": (work / "iter1" / "pixelnet" / "model.keras").exists()}
    got["c"], t_c = _run(tiny_root, work)
    print(
        f"uninterrupted {reference[1]:.1f}s; killed in a Beam job {t_a:.1f}s (with the refused second run) "
        f"+ killed in an epoch {t_b:.1f}s + finished {t_c:.1f}s = {t_a + t_b + t_c:.1f}s"
    )
    return got


def test_a_second_run_on_a_live_workdir_is_refused_and_a_dead_runs_lock_is_taken_over(killed_twice):
    """While the first run trains, a second on the same workdir exits 2 naming the first; after the
    first is killed (its lock left behind), the next run takes the lock over; the last one leaves none."""
    second = killed_twice["second"]
    assert second["rc"] == 2, second["out"][-2000:]
    assert f"is in use by pid {second['holder']['pid']}" in second["out"]
    assert killed_twice["after_a"]["lock"]  # SIGKILL leaves the lock behind
    assert f"taking over the lock of pid {second['holder']['pid']}" in killed_twice["b"]
    assert not (killed_twice["work"] / ".lock").exists()


def test_kill_inside_a_beam_job_then_resume(killed_twice):
    assert not killed_twice["after_a"]["regions"]  # the regionnet relabel job had not finished
    resumed = killed_twice["b"]  # CAM, seeds and RegionNet were finished by then
    for done in ("cam: trained already", "iter1/regionnet: trained already", "relabel cam: ", "preprocess: "):
        assert done in resumed, done
    assert "complete already" in resumed and "train cam:" not in resumed and "train regionnet:" not in resumed
    assert "relabel regionnet:" in resumed and "train pixelnet:" in resumed  # the job was redone


def test_kill_inside_a_training_epoch_then_resume(killed_twice, reference):
    assert not killed_twice["after_b"]["model"]  # no half-written model is used
    out = killed_twice["c"]
    assert "train pixelnet: resuming after epoch 2" in out
    assert "iter1/regionnet: trained already" in out and "train regionnet:" not in out
    # exact: the resumed stream continues where it stopped
    assert _stages(killed_twice["work"]) == reference[0]
    assert _leftovers(killed_twice["work"]) == []
