"""Datasets (VOC layout, the embedded benchmark), the TFRecord schema and tf.data pipelines."""

from __future__ import annotations

import logging
import os

from mcof_tf import fileio

log = logging.getLogger(__name__)


def ensure_dataset(data_cfg, root: str | None = None) -> str:
    """The dataset root to use: an explicit `root` as given, else `data_cfg.root`, where the embedded
    benchmark is generated first when the config asks for it (`data.synthetic`)."""
    if root:
        return root
    root = data_cfg.root
    if data_cfg.synthetic is not None and not fileio.is_remote(root):  # generated on local disk only
        from mcof_tf.data import synthetic

        spec = data_cfg.synthetic
        if not synthetic.is_complete(root, spec):
            if fileio.exists(os.path.join(root, synthetic.MARKER)):
                raise FileExistsError(
                    f"{root} holds the benchmark generated with other parameters than "
                    "data.synthetic; delete it or point data.root elsewhere"
                )
            if fileio.isdir(os.path.join(root, "JPEGImages")):
                return root  # a real dataset put where the benchmark would go: use it as it is
            log.info(f"generating the embedded benchmark in {root} ...")
            synthetic.write_dataset(root, spec)
    return root
