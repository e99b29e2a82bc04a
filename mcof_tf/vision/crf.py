"""Fully connected CRF (Krähenbühl & Koltun 2011) through pydensecrf, numpy in and out.

Defaults are the ones weakly-supervised segmentation code commonly uses: 10 mean-field iterations,
a smoothness kernel (sxy 3, compat 3) and an appearance kernel (sxy 80, srgb 13, compat 10).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

log = logging.getLogger(__name__)

_pool = None  # the worker processes of `in_processes`, when inside it


@contextlib.contextmanager
def in_processes(n: int):
    """Inside it, `dense_crf` calls run in up to n worker processes (started at the first call). pydensecrf's
    inference holds Python's lock, so CRFs called from several threads of one process (Beam's local
    runner) otherwise take turns: 8 CRFs of 320² × 7 classes took 12.6 s on one thread and 11.9 s on two.
    Workers are spawned, not forked (TensorFlow's threads are running); they import numpy and pydensecrf
    only. n < 2, or a main module run from a file path (see `_spawn_reruns_main`): no processes."""
    global _pool
    if n < 2 or _spawn_reruns_main():
        yield
        return
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
    previous, _pool = _pool, pool
    try:
        yield
    finally:
        _pool = previous
        pool.shutdown(cancel_futures=True)


def _spawn_reruns_main() -> bool:
    """A spawned worker first runs the parent's main module again when it is a script named by its path
    (`python script.py`), which is harmless only behind `if __name__ == "__main__"`, and that cannot be
    seen from here; a module run with `python -m` (the project's commands), an interactive session or
    a notebook is safe."""
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__spec__", None) is None and bool(getattr(main, "__file__", None))


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
    args = (
        image,
        probs,
        iterations,
        gaussian_sxy,
        gaussian_compat,
        bilateral_sxy,
        bilateral_srgb,
        bilateral_compat,
    )
    pool = _pool
    if pool is not None:
        try:
            return pool.submit(_dense_crf, *args).result()
        except BrokenProcessPool as e:  # a worker died (killed, out of memory): this thread does the work
            log.warning(f"dense CRF worker processes lost ({e}); running the CRF in this process")
    return _dense_crf(*args)


def _dense_crf(
    image, probs, iterations, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat
) -> np.ndarray:
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
