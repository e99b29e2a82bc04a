"""What one stage used, for the run report: wall time, CPU time, peak memory; and what it freed handed
back before the next stage.

The loop runs its stages one after another in one process (Beam's local runner included), so a
stage's CPU figure is the process's user + system time over the stage's wall time (200 % = both
cores of a 2-core machine busy throughout), and its peak memory the process's high-water mark (VmHWM)
since the stage began. Linux lets a process reset that mark (`echo 5 > /proc/self/clear_refs`); where
it cannot (another OS, a locked-down /proc), the figure is the process's peak since it started, and
is labelled so.

A stage's memory is only its own if the stages before gave theirs back: see
`use_releasable_allocator`.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import sys
import time
from typing import Optional

_reset_worked = False
_cpu_at_start = 0.0
_releasing = False  # TensorFlow allocates with malloc (use_releasable_allocator), so freed memory can go
_frozen = False


def reset_peak() -> bool:
    """Start measuring a stage's peak here; False where the mark cannot be reset."""
    global _reset_worked
    try:
        with open("/proc/self/clear_refs", "w") as f:  # fileio-exempt: the kernel's, not user data
            f.write("5")
        _reset_worked = True
    except OSError:
        _reset_worked = False
    return _reset_worked


X86 = ("x86_64", "amd64", "i686", "x86")  # platform.machine(), lower case, of the CPUs oneDNN is for


def use_onednn() -> None:
    """Turn TensorFlow's oneDNN CPU kernels on for every x86 CPU. Call before TensorFlow is imported.

    TensorFlow turns them on by default only where the CPU has AVX-512 features; elsewhere (an AMD
    EPYC with AVX2 only) it runs its Eigen kernels, and the default config's PixelNet training step
    took 0.585 s instead of 0.250 s (`python -m mcof_tf.bench train`, same machine). A user's own
    TF_ENABLE_ONEDNN_OPTS (0 for bit-for-bit Eigen results) is kept."""
    if platform.machine().lower() in X86:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def use_releasable_allocator() -> None:
    """Let memory a finished stage freed go back to the OS, without slowing the training step. Call
    before TensorFlow is imported (`python -m mcof_tf.<tool>` does, in mcof_tf/__init__.py).

    TensorFlow's oneDNN CPU allocator keeps large buffers in a pool that never shrinks: the paper
    config's loop stayed at CAM training's 9.5 GB through every later stage (PixelNet alone peaks at
    5.5 GB). With TF_ONEDNN_USE_SYSTEM_ALLOCATOR it allocates with malloc instead, and glibc is told
    to keep freed memory in its heap rather than mmap and unmap each large buffer (page faults cost
    the small network's step 7–17 %); `release_free_memory` trims the heap between stages."""
    global _releasing
    if os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1").lower() not in ("1", "true"):
        return  # the user's TF_ONEDNN_USE_SYSTEM_ALLOCATOR=0 keeps TensorFlow's pool
    _releasing = True
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-4, 0)  # M_MMAP_MAX: large blocks from the heap, reused step after step
        libc.mallopt(-1, -1)  # M_TRIM_THRESHOLD = SIZE_MAX: no trimming inside a stage, however large
    except (OSError, AttributeError, TypeError):  # not glibc (Windows: no CDLL(None)): its own policy
        pass


def release_free_memory() -> None:
    """Give the memory that earlier stages freed back to the OS. glibc keeps freed blocks in its
    per-thread arenas, so without this the process stays at its largest stage's size for the rest of
    the loop and every later stage is measured (and needs the machine) on top of it. Only where
    TensorFlow allocates with malloc (`use_releasable_allocator`): its own pool keeps what it freed,
    and the collection would only cost time."""
    global _frozen
    if not _releasing:
        return
    gc.collect()  # a finished stage's models are reference cycles: their buffers go now
    if not _frozen:
        # What is alive at the first stage (TensorFlow's, Keras' and Beam's ~470k objects, the run's
        # own state) lives to the end: later collections skip it. Each stage's full collection took
        # 0.6 s, the tiny test loop's stages 8 % of their time.
        gc.freeze()
        _frozen = True
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        pass


def stage_clock() -> float:
    """A stage's start: frees what earlier stages left, resets the peak and the CPU clock, returns
    `time.time()` (what `stage_usage` takes)."""
    global _cpu_at_start
    release_free_memory()
    reset_peak()
    _cpu_at_start = _cpu_seconds()
    return time.time()


def _cpu_seconds() -> float:
    # with the worker processes this process started and has reaped (the relabel job's CRF workers)
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _vm_hwm_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:  # fileio-exempt: the kernel's, not user data
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def stage_usage(started: float) -> dict:
    """A finished stage's record: {"seconds", "cpu_percent", "peak_rss_mb", "peak_rss_scope": "stage" |
    "process"}, from `started = stage_clock()`. CPU time counts the worker processes the stage started
    and reaped (the relabel job's CRF workers, Beam's multi_processing workers); peak memory is this
    process's; remote workers (Dataflow) are not counted: their runner reports them."""
    seconds = time.time() - started
    kb = _vm_hwm_kb()
    scope = "stage" if _reset_worked and kb is not None else "process"
    if kb is None:  # ru_maxrss: kilobytes on Linux, bytes on macOS; never reset; none on Windows
        try:
            import resource
        except ImportError:
            resource = None
        if resource is not None:
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kb = kb // 1024 if sys.platform == "darwin" else kb
    return {
        "seconds": round(seconds, 3),
        "cpu_percent": round(100 * (_cpu_seconds() - _cpu_at_start) / max(seconds, 1e-9), 1),
        "peak_rss_mb": None if kb is None else round(kb / 1024, 1),
        "peak_rss_scope": scope,
    }
