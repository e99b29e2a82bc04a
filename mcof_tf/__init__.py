"""mcof_tf: weakly-supervised semantic segmentation by iteratively mining common object features."""

import sys as _sys

__version__ = "0.1.0"

# `python -m mcof_tf.<tool>` (or beam_jobs.<job>): runpy imports this package while sys.argv[0] is
# still "-m", before the tool's own imports pull in TensorFlow and Beam, so this is the one moment
# their start-up noise can be hidden (mcof_tf.log). A library import never gets here.
# The same moment is the last one to choose TensorFlow's CPU kernels and allocator (mcof_tf.usage).
# mcof_tf.train loads them itself, once it holds its workdir's lock (a run refused at once).
if _sys.argv[:1] == ["-m"]:
    from mcof_tf import usage as _usage

    _usage.use_onednn()
    _usage.use_releasable_allocator()
    _module = _sys.orig_argv[_sys.orig_argv.index("-m") + 1] if "-m" in _sys.orig_argv else ""
    if not {"-v", "-vv", "--verbose"} & set(_sys.argv) and _module != "mcof_tf.train":
        from mcof_tf import log as _log

        _log.setup(0)
