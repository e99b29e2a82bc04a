"""Logging for the command-line tools: one timestamped format on stderr, the project's own story at
INFO, and other libraries' start-up noise hidden unless the user asks for it (-v).

Library code only calls `logging.getLogger(__name__)`; a program that embeds mcof_tf configures
logging its own way. Every CLI calls `setup(verbose)` first thing in `main`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

FORMAT = "%(asctime)s %(message)s"
OURS = ("mcof_tf", "beam_jobs", "__main__")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest and notebooks swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


class _OnlyOurs(logging.Filter):
    """At default verbosity: our records, and anyone's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OURS or record.levelno >= logging.ERROR


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block. TensorFlow >= 2.19 writes its start-up lines
    (oneDNN, CUDA probing, CPU features) through absl's C++ logging, which TF_CPP_MIN_LOG_LEVEL no longer
    silences (tensorflow/tensorflow#100442); Python-level errors still surface, as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_start(verbose: int = 0) -> None:
    """Import TensorFlow and Beam with their start-up noise hidden (call before anything imports them);
    with verbose >= 1 nothing: their start-up lines are shown as they come."""
    if verbose or "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        __import__("apache_beam")  # its "apitools not found" warning goes to the filtered handler
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs on the first device query
        list(tf.data.TFRecordDataset(os.devnull))  # so does the first TFRecord reader (an empty one here)


def setup(verbose: int = 0, load_libraries: bool = True) -> None:
    """INFO and up of our loggers on stderr; with verbose >= 1 every library's messages too and
    TensorFlow's start-up lines (when TensorFlow is not imported yet), with verbose >= 2 DEBUG.
    `load_libraries`: import TensorFlow and Beam now (`quiet_start`); a command with something to
    check first passes False and calls `quiet_start(verbose)` itself."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    if not verbose:
        handler.addFilter(_OnlyOurs())
    root = logging.getLogger()
    # ours from an earlier call, and plain console handlers a library's basicConfig() added (they would
    # print every line twice); subclasses such as pytest's capture handlers stay
    for old in [
        h for h in root.handlers if isinstance(h, _StderrHandler) or type(h) is logging.StreamHandler
    ]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    if load_libraries:
        quiet_start(verbose)


def add_verbose_flag(parser) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="also show other libraries' messages and TensorFlow's start-up lines (-vv: debug)",
    )
