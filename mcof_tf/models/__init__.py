"""The three networks of MCOF (Keras 3) and their losses: `build_cam` (§4.1), `build_regionnet` with the
masked RoI pooling layer `MaskedRoIPooling` (§4.2), `deeplab_largefov` (PixelNet, §4.4)."""

from mcof_tf.models.cam import build_cam, class_activation_maps
from mcof_tf.models.deeplab import deeplab_largefov
from mcof_tf.models.losses import MaskedCrossEntropy, SegmentationMeanIoU, TagCrossEntropy
from mcof_tf.models.regionnet import MaskedRoIPooling, build_regionnet, region_labels

__all__ = [
    "build_cam",
    "class_activation_maps",
    "deeplab_largefov",
    "build_regionnet",
    "MaskedRoIPooling",
    "region_labels",
    "MaskedCrossEntropy",
    "SegmentationMeanIoU",
    "TagCrossEntropy",
]
