"""Beam job: segment image files at scale with an exported SavedModel.

    python -m beam_jobs.predict --model saved_models/<name>/<version> --input GLOB|DIR --output DIR
                                [--crf] [--scales 0.75,1,1.25] [--overlay] [Beam options]

The same per-image work as `python -m mcof_tf.predict` (VOC-palette PNG per image at
OUTPUT/<path relative to the input folder>.png, optional CRF, scales, overlays), spread over Beam
workers by `RunInference` with this job's model handler (each worker process loads the SavedModel
once; Beam's built-in TF model handler cannot load these SavedModels under Keras 3). Files that are
not usable images go to OUTPUT/rejected.jsonl with the reason; OUTPUT/outputs.txt lists
"input<TAB>output" per image; OUTPUT/manifest.json (written last) has read == written + rejected.
Label PNGs already present are kept, so re-running a killed job only does the rest. The input list
is made on the launcher (fine for 10^5 files).

On Dataflow: add `--runner DataflowRunner --project P --region R --temp_location gs://B/tmp
--setup_file ./setup.py` (README, "Running on Dataflow"); --model may be a gs:// path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Optional

import apache_beam as beam
import tensorflow as tf
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from beam_jobs import common
from mcof_tf import fileio, usage
from mcof_tf import log as log_setup
from mcof_tf.fileio import check_output_apart, folder_lock

log = logging.getLogger(__name__)

OUTPUTS = "outputs"


class PredictorHandler(ModelHandler):
    """RunInference's model handler for an exported SavedModel: one `Predictor` per worker process,
    shared by its threads (RunInference's shared handle), one image per call (images differ in size),
    and the per-image work of `mcof_tf.predict` (label PNG, overlay). Beam's own TF handler loads
    models with `tf.keras`, which cannot read these Keras-3 SavedModels. An unusable file is a result
    carrying its rejection, not an exception: the job counts it and goes on."""

    def __init__(
        self, model: str, base: str, out_dir: str, scales: Sequence[float], crf: bool, overlay: bool
    ):
        super().__init__(max_batch_size=1)  # images differ in size: one per call
        self.model, self.base, self.out_dir = model, base, out_dir
        self.scales, self.crf, self.overlay = list(scales), crf, overlay

    def load_model(self):
        from mcof_tf.inference import Predictor

        return Predictor(self.model)

    def run_inference(self, batch, model, inference_args=None):
        from mcof_tf.data.voc import RejectedInput
        from mcof_tf.inference import predict_file

        for path in batch:
            try:
                target, computed = predict_file(
                    model, path, self.base, self.out_dir, self.scales, self.crf, self.overlay
                )
                yield PredictionResult(path, {"target": target, "computed": computed})
            except RejectedInput as e:
                yield PredictionResult(path, {"rejected": str(e)})
            except (OSError, tf.errors.OpError) as e:  # unreadable: a dangling link, no permission
                yield PredictionResult(path, {"rejected": f"cannot be read: {type(e).__name__}: {e}"})

    def get_metrics_namespace(self) -> str:
        return "predict"


class SplitResults(beam.DoFn):
    """PredictionResult → "input<TAB>label PNG path", or a rejection on the `rejected` output."""

    def __init__(self):
        self.computed = Metrics.counter("predict", "computed")
        self.rejected = Metrics.counter("predict", "rejected")

    def process(self, result: PredictionResult):
        out = result.inference
        if "rejected" in out:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(common.REJECTED, common.rejection(result.example, out["rejected"]))
            return
        self.computed.inc(int(out["computed"]))
        yield f"{result.example}\t{out['target']}"


def run(
    model: str,
    inputs: str,
    out_dir: str,
    pipeline_options,
    scales: Sequence[float] = (1.0,),
    crf: bool = False,
    overlay: bool = False,
) -> dict:
    from mcof_tf.inference import check_saved_model, claim_output, list_inputs, unique_outputs

    common.check_filesystems(inputs, out_dir)
    check_saved_model(model)  # on the launcher, before any worker starts
    base, paths = list_inputs(inputs)
    check_output_apart(out_dir, {"input images": base})  # the outputs are PNGs too: never read back
    common.writable_dir(out_dir)
    with folder_lock(out_dir):  # two runs on one folder would share their summary files
        claim_output(out_dir, model, scales, crf)
        paths, collisions = unique_outputs(paths, base)
        for pattern in (f"{common.REJECTED}*", f"{common.MANIFEST}*", f"{OUTPUTS}*"):  # not the PNGs: resume
            for path in fileio.glob(common.join(out_dir, pattern)):
                fileio.remove(path)
        started = usage.stage_clock()
        log.info(f"predict: {len(paths) + len(collisions)} images from {inputs} → {out_dir}")
        handler = PredictorHandler(model, base, out_dir, scales, crf, overlay)

        def build(p):
            results = (
                p
                | "Paths" >> beam.Create(paths)
                | "Spread" >> beam.Reshuffle()
                | "Predict" >> RunInference(handler)
                | "Split" >> beam.ParDo(SplitResults()).with_outputs(common.REJECTED, main="outputs")
            )
            results.outputs | "WriteOutputs" >> common.WriteLines(out_dir, OUTPUTS, ".txt")
            named = p | "NameCollisions" >> beam.Create([json.dumps(r) for r in collisions])
            (
                (results[common.REJECTED], named)
                | "AllRejected" >> beam.Flatten()
                | "WriteRejected" >> common.WriteLines(out_dir, common.REJECTED)
            )

        common.run_pipeline(pipeline_options, build, "predict")  # --crf: in worker processes, locally
        with fileio.open_file(common.join(out_dir, f"{OUTPUTS}.txt"), "r") as f:
            done = [line.split("\t") for line in f.read().splitlines() if line]
        missing = [target for _, target in done if not fileio.exists(target)]
        if missing:
            raise RuntimeError(f"{len(missing)} label maps listed as written are missing, e.g. {missing[0]}")
        fingerprint = common.fingerprint(
            {
                "job": "predict",
                "model": model,
                "inputs": paths,
                "scales": list(scales),
                "crf": crf,
                "overlay": overlay,
            }
        )
        manifest = common.finish(
            out_dir,
            "",
            len(paths) + len(collisions),
            fingerprint,
            started,
            {"model": model, "input": inputs},
            written=len(done),
        )
        log.info(
            f"predict: read {manifest['read']}, written {manifest['written']}, rejected "
            f"{len(manifest['rejected'])} in {manifest['seconds']:.1f}s"
        )
        return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    from mcof_tf.inference import add_options, parse_scales

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="saved_models/<name>/<version> (local or gs://)")
    parser.add_argument("--input", required=True, help="a folder (searched recursively) or a glob of images")
    parser.add_argument("--output", required=True)
    add_options(parser)
    log_setup.add_verbose_flag(parser)
    args, options = common.split_args(parser, argv)
    log_setup.setup(args.verbose)
    try:
        run(args.model, args.input, args.output, options, parse_scales(args.scales), args.crf, args.overlay)
    except (
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as e:  # RuntimeError: a job lost or rejected every input
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Import through the package so that Beam pickles `beam_jobs.predict.PredictFn`, not `__main__`'s.
    from beam_jobs.predict import main as _main

    sys.exit(_main())
