"""Run MCOF end to end: python -m mcof_tf.train [--config C] [--iter N] [...] [Beam options]

With no arguments: configs/synthetic.yaml on the embedded benchmark (generated on first use), 3
iterations, report in runs/synthetic/report.{json,md}, final PixelNet exported to saved_models/synthetic/.
Re-running the same command after a kill resumes at the first unfinished stage.

Variants (each writes the same report, to its own workdir <workdir>-<variant>):
  --no-saliency        no saliency-guided refinement (the paper's Table 4)
  --direct-iterative   after iteration 1, PixelNet is retrained on its own masks (Fig. 8's baseline)
  --fully-supervised   PixelNet trained on the ground-truth masks (the ceiling to compare against)
"""

from __future__ import annotations

import argparse
import sys
import time

from mcof_tf import log as log_setup


def main(argv=None) -> int:
    # TensorFlow and Beam load after the workdir's lock is taken: a second run on a workdir in use is
    # refused at once, not after their imports (about 6 s)
    from mcof_tf.config import ConfigError, load_config
    from mcof_tf.data.voc import DatasetError
    from mcof_tf.fileio import folder_lock

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/synthetic.yaml)")
    p.add_argument("--data-root", default=None, help="VOC-layout dataset root (default: the config's)")
    p.add_argument("--workdir", default=None, help="run folder (default: the config's experiment.workdir)")
    p.add_argument("--iter", dest="iterations", type=int, default=3, help="MCOF iterations (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--no-saliency", dest="variant", action="store_const", const="no_saliency")
    v.add_argument("--direct-iterative", dest="variant", action="store_const", const="direct_iterative")
    v.add_argument("--fully-supervised", dest="variant", action="store_const", const="fully_supervised")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    log_setup.add_verbose_flag(p)
    args, beam_args = p.parse_known_args(argv)  # the rest is Beam's (beam_jobs.common.split_args)
    log_setup.setup(args.verbose, load_libraries=False)
    if args.iterations < 1:
        p.error("--iter must be at least 1")
    started = time.time()
    variant = args.variant or "mcof"
    try:
        cfg = load_config(args.config, args.overrides)
        workdir = args.workdir or cfg.workdir_for(variant)
        with folder_lock(workdir):  # the loop takes it again (held already)
            log_setup.quiet_start(args.verbose)
            from apache_beam.options.pipeline_options import PipelineOptions

            from mcof_tf import loop

            rep = loop.run_all(
                cfg,
                args.iterations,
                workdir,
                args.data_root,
                variant,
                PipelineOptions(beam_args),
                export=not args.no_export,
            )
    except (
        ConfigError,
        DatasetError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as e:  # RuntimeError: a job lost or rejected every input
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mcof_tf.report import summary_line

    print("\nMCOF report:")
    for r in rep["stages"]:
        print("  " + summary_line(r))
    # where the time went (the last attempt's, for stages resumed after a kill): mcof_tf.usage
    for key, what in (
        ("seconds", "wall time (s)"),
        ("cpu_percent", "CPU (%)"),
        ("peak_rss_mb", "peak RSS (MB)"),
    ):
        if rep.get(key):
            print(f"  {what} per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in rep[key].items()))
    if rep.get("export"):
        print(f"exported: {rep['export']}")
    print(f"wall time {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
