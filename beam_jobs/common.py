"""What every Beam job of the project shares: outputs, dead letters, the manifest, completion.

A job writes into its output folder:
    <prefix>-SSSSS-of-NNNNN.tfrecord    the records: shard = crc32(id) mod N, sorted by id inside, so the
                                        same inputs give the same files whatever the runner's order
                                        (training data order then depends on the seed alone); each shard
                                        is written to a temporary name and renamed when complete
    rejected.jsonl                      one {"id": ..., "reason": ...} per input that was not used
    manifest.json                       written last, atomically: the job's completion marker

`manifest.json` holds "read", "written" and "rejected" (the list), checked so that
read == written + len(rejected); "written" is counted from the shards on disk, not trusted from the job.
A folder whose manifest matches the job's fingerprint is complete and is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from typing import Optional

import apache_beam as beam
import tensorflow as tf

from mcof_tf import fileio, usage
from mcof_tf.data.records import MANIFEST, count_records, example_id
from mcof_tf.fileio import is_remote, read_json, writable_dir, write_json_atomic

REJECTED = "rejected"
SHARD_SUFFIX = ".tfrecord"
log = logging.getLogger(__name__)


def join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def fingerprint(spec: dict) -> str:
    """A short, stable hash of what a job's output depends on."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def check_filesystems(*paths: Optional[str]) -> None:
    """Refuse at once, in one line, a URL that Beam cannot open here: gs:// needs Beam's GCS filesystem
    (google-cloud-storage), which the project's `gcp` extra installs."""
    from apache_beam.io.filesystems import FileSystems

    for path in paths:
        if path and is_remote(path):
            try:
                FileSystems.get_filesystem(path)
            except ValueError:
                raise ValueError(
                    f"{path}: Beam has no filesystem for it on this machine; for gs:// install the gcp "
                    "extra: pip install 'mcof_tf[gcp]' (apache-beam[gcp])"
                ) from None


def read_manifest(out_dir: str) -> Optional[dict]:
    return read_json(join(out_dir, MANIFEST))


def is_complete(out_dir: str, fingerprint: str) -> bool:
    """The folder's manifest has this fingerprint and every shard it lists is there with its size (a
    deleted or truncated shard makes the job run again)."""
    m = read_manifest(out_dir)
    if m is None or m.get("fingerprint") != fingerprint:
        return False
    sizes = m.get("shard_bytes", {})
    for name in m.get("shards", []):
        path = join(out_dir, name)
        if not fileio.exists(path) or (name in sizes and fileio.size(path) != sizes[name]):
            log.info(f"{out_dir}: shard {name} is missing or changed; redoing the job")
            return False
    return True


def prepare_output(out_dir: str, prefix: str) -> None:
    """Empty the folder of an earlier, unfinished attempt: stale shards must never be mixed in."""
    writable_dir(out_dir)
    for pattern in (f"{prefix}-*{SHARD_SUFFIX}*", f"{REJECTED}*", f"{MANIFEST}*"):
        for path in fileio.glob(join(out_dir, pattern)):
            fileio.remove(path)
    for path in fileio.glob(join(out_dir, "beam-temp-*")):  # a killed sink's leftovers
        fileio.rmtree(path)


def read_rejected(out_dir: str) -> list[dict]:
    rows = []
    for path in sorted(fileio.glob(join(out_dir, f"{REJECTED}*.jsonl"))):
        with fileio.open_file(path, "r") as f:
            rows += [json.loads(line) for line in f.read().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["id"])


def rejection(image_id, reason: str) -> str:
    return json.dumps({"id": str(image_id), "reason": reason})


def shard_name(out_dir: str, prefix: str, shard: int, num_shards: int) -> str:
    return join(out_dir, f"{prefix}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")


class WriteShard(beam.DoFn):
    """(shard, serialized examples) → one TFRecord file, examples sorted by id, renamed into place
    when complete (a killed or retried worker never leaves a partial shard under the final name)."""

    def __init__(self, out_dir: str, prefix: str, num_shards: int):
        self.out_dir, self.prefix, self.num_shards = out_dir, prefix, num_shards

    def process(self, element):
        shard, examples = element
        path = shard_name(self.out_dir, self.prefix, shard, self.num_shards)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with tf.io.TFRecordWriter(tmp) as w:
            for _, serialized in sorted((example_id(e), e) for e in examples):
                w.write(serialized)
        fileio.replace(tmp, path)
        yield path


class WriteShards(beam.PTransform):
    """Serialized examples → `<prefix>-SSSSS-of-NNNNN.tfrecord` in `out_dir`: shard = crc32(id) mod N,
    examples sorted by id inside, so the files depend on the inputs only, not on the runner's order.
    Outputs the shard paths written."""

    def __init__(self, out_dir: str, prefix: str, num_shards: int):
        super().__init__()
        self.out_dir, self.prefix, self.num_shards = out_dir, prefix, num_shards

    def expand(self, examples):
        n = self.num_shards
        return (
            examples
            | "ShardById" >> beam.Map(lambda e: (zlib.crc32(example_id(e).encode()) % n, e))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShard(self.out_dir, self.prefix, n))
        )


class WriteLines(beam.PTransform):
    """Text lines → the single file `out_dir/<name><suffix>` (dead letters, summed statistics)."""

    def __init__(self, out_dir: str, name: str, suffix: str = ".jsonl"):
        super().__init__()
        self.path, self.suffix = join(out_dir, name), suffix

    def expand(self, lines):
        return lines | beam.io.WriteToText(self.path, file_name_suffix=self.suffix, shard_name_template="")


class WriteOutputs(beam.PTransform):
    """A job's results, {"records": serialized examples, "rejected": dead letters}, → its TFRecord
    shards and `rejected.jsonl`."""

    def __init__(self, out_dir: str, prefix: str, num_shards: int):
        super().__init__()
        self.out_dir, self.prefix, self.num_shards = out_dir, prefix, num_shards

    def expand(self, results: dict):
        return {
            "shards": results["records"]
            | "WriteShards" >> WriteShards(self.out_dir, self.prefix, self.num_shards),
            "rejected": results[REJECTED] | "WriteRejected" >> WriteLines(self.out_dir, REJECTED),
        }


def finish(
    out_dir: str,
    prefix: str,
    read: int,
    fingerprint: str,
    started: float,
    extra: Optional[dict] = None,
    written: Optional[int] = None,
) -> dict:
    """Count what was written (TFRecord shards, unless a job that writes other files counts them),
    check that nothing was lost, write the manifest last."""
    if written is None:
        written = count_records(join(out_dir, f"{prefix}-*{SHARD_SUFFIX}"))
    rejected = read_rejected(out_dir)
    shards = sorted(fileio.glob(join(out_dir, f"{prefix}-*{SHARD_SUFFIX}")))
    manifest = {
        "read": read,
        "written": written,
        "rejected": rejected,
        "shards": [p.rsplit("/", 1)[-1] for p in shards],
        "shard_bytes": {p.rsplit("/", 1)[-1]: fileio.size(p) for p in shards},
        "fingerprint": fingerprint,
        **usage.stage_usage(started),  # seconds, CPU, peak memory
        **(extra or {}),
    }
    if read != written + len(rejected):
        raise RuntimeError(
            f"{out_dir}: read {read} but wrote {written} and rejected {len(rejected)}; "
            "inputs were lost, the manifest is not written"
        )
    if read and not written:  # the same failure for every input is a bug or a wrong model, not bad data
        raise RuntimeError(
            f"{out_dir}: every one of the {read} inputs was rejected, e.g. "
            f"{rejected[0]['id']}: {rejected[0]['reason']}"
        )
    write_json_atomic(join(out_dir, MANIFEST), manifest)
    return manifest


def split_args(parser, argv: Optional[Iterable[str]]):
    """Parse the job's own flags; everything else is handed to Beam's PipelineOptions.

    Not `PipelineOptions` subclasses, on purpose: Beam parses every subclass imported in the process
    with one shared parser. Tried with Beam 2.77: two subclasses both declaring `--out` share one value
    (the first declaration's type wins, silently), and one subclass's `required=True` flag makes every
    other job's `view_as` exit ("the following arguments are required"); the loop imports all jobs."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args, beam_args = parser.parse_known_args(argv)
    return args, PipelineOptions(beam_args)


class Progress:
    """A worker's progress line with rate and ETA, at most every `every` seconds and at its last
    expected element: "relabel cam: worker 812: 120/200 images, 6.1 images/s, ETA 13 s".

    `expected`: the elements this worker should see, known on DirectRunner (the job's count shared
    among --direct_num_workers processes, an estimate when they are several); None on other runners,
    where the line has no ETA (their own UIs show progress)."""

    def __init__(self, what: str, expected: Optional[int] = None, every: float = 10.0):
        self.what, self.expected, self.every = what, expected, every

    def start(self):
        """Call in DoFn.setup (the clock starts there, per worker)."""
        import threading

        # the thread's id: the process id for a process's main thread, another for each local thread
        self.worker, self.count = threading.get_native_id(), 0
        self.started = self.last = time.monotonic()

    def tick(self) -> Optional[str]:
        self.count += 1
        now = time.monotonic()
        if now - self.last < self.every and self.count != self.expected:
            return None
        self.last = now
        rate = self.count / max(now - self.started, 1e-9)
        line = f"{self.what}: worker {self.worker}: {self.count}"
        if self.expected:
            left = max(self.expected - self.count, 0)
            line += f"/{self.expected} images, {rate:.1f} images/s, ETA {left / rate:.0f} s"
        else:
            line += f" images, {rate:.1f} images/s"
        log.info(line)
        return line


LOCAL_THREADS = 2  # the local runner's default worker threads (see `local_options`)


def local_options(options=None):
    """The options a job runs with (the same object, completed): where no --runner is named, Beam's
    in-process FnApiRunner, and where its running mode is left at Beam's default (in_memory, one
    worker), two worker threads. Beam 2.77's default DirectRunner would first download the Go Prism
    runner from GitHub and run there (ignoring --direct_num_workers); the FnApiRunner is the local
    runner the project is tested with, offline included. Two threads overlap one image's network
    forward pass (TensorFlow releases Python's lock) with another's dense CRF and label rules (which
    hold it): the default loop's relabel stages ran at 101 % CPU on one thread (Intel Xeon, 2 cores;
    a masks stage 12.0 s against 10.0 s on two, preprocess 6.5 s against 4.7 s); `run_pipeline` also runs
    the threads' dense CRFs in worker processes (`mcof_tf.vision.crf.in_processes`). Explicit options are
    respected: --direct_num_workers 1 for one in-memory worker, --direct_running_mode multi_processing
    for worker processes."""
    import os

    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    options = options if options is not None else PipelineOptions([])
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"
        direct = options.view_as(DirectOptions)
        # Beam's defaults read the same as flags that name them (--direct_num_workers 1): the flags
        # the options were made from (Beam keeps them in `_flags`) tell them apart
        named = [f.split("=")[0] for f in getattr(options, "_flags", None) or ()]
        chosen = {"--direct_running_mode", "--direct_num_workers"} & set(named)
        if not chosen and direct.direct_running_mode == "in_memory" and (direct.direct_num_workers or 1) == 1:
            direct.direct_running_mode = "multi_threading"
            direct.direct_num_workers = min(LOCAL_THREADS, os.cpu_count() or 1)
    return options


def expected_per_worker(options, total: int) -> Optional[int]:
    """`total` elements shared among the local runner's workers; None on another runner."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    options = local_options(options)
    if options.view_as(StandardOptions).runner not in ("DirectRunner", "FnApiRunner"):
        return None
    workers = max(options.view_as(DirectOptions).direct_num_workers or 1, 1)
    return -(-total // workers)


def local_threads(options) -> int:
    """How many worker threads of this process run the job's DoFns: the local runner's in
    multi_threading mode, else 1 (worker processes or a remote runner)."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    options = local_options(options)
    direct = options.view_as(DirectOptions)
    if options.view_as(StandardOptions).runner not in ("DirectRunner", "FnApiRunner"):
        return 1
    return max(direct.direct_num_workers or 1, 1) if direct.direct_running_mode == "multi_threading" else 1


def run_pipeline(options, build: Callable[[beam.Pipeline], None], namespace: str = ""):
    """Build and run a pipeline to completion (`local_options` completes the options); then log the
    job's Beam metrics (`namespace`: its counters and per-image latency), which every runner reports,
    Dataflow included."""
    from mcof_tf.vision import crf

    pipeline = beam.Pipeline(options=local_options(options))
    build(pipeline)
    # the dense CRFs of the local runner's threads (relabel, predict --crf) run side by side in worker
    # processes (they hold Python's lock); the workers start at a job's first CRF: none without one
    with crf.in_processes(local_threads(options)):
        result = pipeline.run()
        result.wait_until_finish()
    if namespace:
        log.info(f"{namespace}: Beam metrics: {metrics_summary(result, namespace)}")
    return result


def metrics_summary(result, namespace: str) -> str:
    """The counters (summed over steps) and distributions of `namespace` as one line."""
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(namespace))
    counters: dict = {}
    for c in found["counters"]:
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + (c.committed or 0)
    parts = [f"{name} {n}" for name, n in sorted(counters.items())]
    for d in found["distributions"]:
        r = d.committed
        if r is not None and r.count:
            parts.append(f"{d.key.metric.name} mean {r.mean:.0f} (min {r.min}, max {r.max}, n {r.count})")
    return ", ".join(parts) or "none"
