"""mcof_tf: weakly-supervised semantic segmentation by iteratively mining common object features."""

__version__ = "0.1.0"
