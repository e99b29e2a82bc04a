"""What a stage used (wall time, CPU, peak memory), as the run report prints it, and the memory it gives back."""

import os
import sys

import numpy as np
import pytest

from mcof_tf import usage


def test_a_stage_peak_counts_what_the_stage_held_and_not_what_came_before():
    if not sys.platform.startswith("linux"):
        pytest.skip("only Linux resets a process's peak RSS (/proc/self/clear_refs)")
    started = usage.stage_clock()
    big = np.ones(300 * 2**20, np.uint8)  # 300 MB, touched
    held = usage.stage_usage(started)
    del big
    after = usage.stage_usage(
        usage.stage_clock()
    )  # the next stage: the 300 MB freed before it are not its peak
    assert held["peak_rss_scope"] == after["peak_rss_scope"] == "stage"
    assert held["peak_rss_mb"] - after["peak_rss_mb"] > 250, (held, after)


def test_a_stage_cpu_figure_is_its_cpu_time_over_its_wall_time():
    import time

    started = usage.stage_clock()
    wall0, cpu0 = time.time(), time.process_time()  # after the clock's own work (gc, trim)
    # spin on the wall clock: process_time counts every thread of the process (pytest-xdist's
    # too), so a spin on it may end before 0.3 s of wall time have passed
    spin = time.monotonic() + 0.3
    while time.monotonic() < spin:  # one thread busy
        pass
    time.sleep(0.3)  # then idle: under 100 % however loaded the machine is
    got = usage.stage_usage(started)
    expected = 100 * (time.process_time() - cpu0) / (time.time() - wall0)
    assert got["seconds"] >= 0.59 and 0 < got["cpu_percent"] < 100, got  # 0.59: rounded to ms
    assert abs(got["cpu_percent"] - expected) < 10, (got, expected)


def test_a_stage_cpu_figure_counts_the_worker_processes_it_reaped():
    """A stage whose work runs in a child process (the relabel job's CRF workers) is not idle."""
    import subprocess
    import sys

    started = usage.stage_clock()
    busy = "import time\nt = time.process_time() + 0.5\nwhile time.process_time() < t: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)  # this process waits, the child works
    got = usage.stage_usage(started)
    assert got["cpu_percent"] * got["seconds"] / 100 > 0.45, got  # CPU seconds: the child's 0.5 s in them


def test_the_stage_clock_frees_and_resets_the_peak_and_returns_the_time(monkeypatch):
    import time

    calls = []
    monkeypatch.setattr(usage, "release_free_memory", lambda: calls.append("free"))
    monkeypatch.setattr(usage, "reset_peak", lambda: calls.append("reset") or True)
    before = time.time()
    assert before <= usage.stage_clock() <= time.time() and calls == ["free", "reset"]


def test_onednn_is_turned_on_for_x86_cpus_unless_the_user_chose(monkeypatch):
    """TensorFlow itself leaves oneDNN off on x86 CPUs without AVX-512 (2.3x slower training step)."""
    for machine, user, expected in [
        ("x86_64", None, "1"),
        ("AMD64", None, "1"),
        ("x86_64", "0", "0"),  # the user's choice stays
        ("aarch64", None, None),  # TensorFlow's own default elsewhere
    ]:
        monkeypatch.setattr(usage.platform, "machine", lambda m=machine: m)
        if user is None:
            monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
        else:
            monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", user)
        usage.use_onednn()
        assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == expected, machine


def test_the_projects_commands_start_tensorflow_with_onednn_chosen():
    import platform
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    # `python -m mcof_tf.<tool>`: the package's start-up runs before the tool imports TensorFlow
    code = "import sys; sys.argv = ['-m']; import mcof_tf, os; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    x86 = platform.machine().lower() in usage.X86
    assert r.stdout.split()[-1] == ("1" if x86 else "None"), r.stdout


_PROBE = """
import sys
from mcof_tf import usage
if sys.argv[1] == "releasable":
    usage.use_releasable_allocator()
import tensorflow as tf

def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

before = rss_mb()
x = tf.random.uniform([256, 1024, 1024])  # 1 GB, as a stage's activations
peak = rss_mb()
del x
usage.release_free_memory()
print(round(before), round(peak), round(rss_mb()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and oneDNN's CPU allocator")
def test_a_finished_stage_gives_its_memory_back_to_the_next():
    """TensorFlow's default CPU allocator keeps a freed 1 GB (the loop's later stages were measured on
    top of CAM training's peak); the releasable one hands it back to the OS."""
    import subprocess

    got = {}
    # oneDNN on, as TensorFlow sets it on CPUs with AVX-512 features; on others (an AMD EPYC with avx2
    # only) it is off by default, and TensorFlow's own allocator then hands the memory back by itself
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    for mode in ("default", "releasable"):
        r = subprocess.run(
            [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120, env=env
        )
        assert r.returncode == 0, r.stderr[-2000:]
        got[mode] = [int(v) for v in r.stdout.split()[-3:]]
    for before, peak, _ in got.values():
        assert peak - before > 900, got  # the tensor was there
    before, peak, after = got["releasable"]
    assert after - before < 200, got
    before, peak, after = got["default"]
    assert after - before > 900, got  # what the loop did before: the stage after starts 1 GB up


_FREEZE_PROBE = """
import gc, sys, weakref
from mcof_tf import usage
if sys.argv[1] == "releasable":
    usage.use_releasable_allocator()
import tensorflow as tf

usage.release_free_memory()  # the first stage
frozen = gc.get_freeze_count()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a stage's model: a reference cycle
gone = weakref.ref(a)
del a, b
usage.release_free_memory()  # the next stage
print(frozen, gc.get_freeze_count(), gone() is None)
"""


@pytest.mark.parametrize("mode", ["default", "releasable"])
def test_stages_collect_their_cycles_without_rescanning_the_imports(mode):
    """Where memory is handed back, the first stage start moves what is alive then (TensorFlow's
    objects) out of the collector's sight, once: each later full collection took 0.6 s with them in.
    A cycle made after it is still collected. TensorFlow's own pool keeps what it frees anyway, so
    without the releasable allocator nothing is collected or frozen."""
    import subprocess

    r = subprocess.run(
        [sys.executable, "-c", _FREEZE_PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    first, later, collected = r.stdout.split()[-3:]
    if mode == "releasable":
        assert int(first) > 100_000 and later == first and collected == "True", r.stdout
    else:
        assert first == later == "0", r.stdout
