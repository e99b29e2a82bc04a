"""Fully connected CRF (Krähenbühl & Koltun 2011) through pydensecrf, numpy in and out.

Defaults are the ones weakly-supervised segmentation code commonly uses: 10 mean-field iterations,
a smoothness kernel (sxy 3, compat 3) and an appearance kernel (sxy 80, srgb 13, compat 10).
"""

from __future__ import annotations

import numpy as np


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 3,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
) -> np.ndarray:
    """image H×W×3 uint8, probs K×H×W (each pixel sums to 1) → refined K×H×W marginals (float32)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and probabilities {(h, w)} differ in size")
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.clip(probs, 1e-5, 1.0).astype(np.float32))))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    # pydensecrf takes writable C-contiguous buffers only (decoded images are often read-only views)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy,
        srgb=bilateral_srgb,
        rgbim=np.array(image, np.uint8, order="C"),
        compat=bilateral_compat,
    )
    q = crf.inference(iterations)
    return np.asarray(q, np.float32).reshape(k, h, w)
