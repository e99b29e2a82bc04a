"""Per-image inference with an exported SavedModel, shared by `python -m mcof_tf.predict` (one
process) and `beam_jobs.predict` (Beam workers): which files are inputs, where each output goes,
the model's class probabilities (multi-scale, optional dense CRF) and the palette PNG / overlay written
for one image.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Sequence

import numpy as np

from mcof_tf import fileio
from mcof_tf.config import check_scales
from mcof_tf.export import CLASSES_FILE, MAX_SIDE
from mcof_tf.fileio import pattern_folder, write_bytes_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
OVERLAYS = "overlays"


def list_inputs(images: str) -> tuple[str, list[str]]:
    """DIR or GLOB (local or gs://) → (base folder, sorted image paths). A folder is searched
    recursively for image extensions; a glob is taken as given."""

    if fileio.isdir(images):
        base = images.rstrip("/")
        found = [
            os.path.join(d, f) if "://" not in d else f"{d.rstrip('/')}/{f}"
            for d, _, files in fileio.walk(base)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    else:
        is_glob = any(c in images for c in "*?[")
        base = pattern_folder(images) if is_glob else (os.path.dirname(images) or ".")
        found = [p for p in fileio.glob(images) if not fileio.isdir(p)]
    if not found:
        raise FileNotFoundError(f"no images found at {images}")
    return base, sorted(found)


def output_name(path: str, base: str) -> str:
    """The input's path relative to `base`, extension dropped; never leads outside OUT."""
    rel = path[len(base) :].lstrip("/") if base != "." and path.startswith(base) else path
    rel = os.path.splitext(rel)[0]
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"cannot name an output for {path}")
    return "/".join(parts)


MARKER = "predict.json"  # which model and options made the label maps of an output folder


def claim_output(out_dir: str, model: str, scales: Sequence[float], crf: bool) -> None:
    """Label maps already in `out_dir` are kept on a re-run (resume), so they must come from the same
    model and options: refuse a folder made by another (or holding PNGs predict did not write), else
    record this run's model and options there."""

    from mcof_tf.fileio import file_digest, read_json, write_json_atomic

    mine = {
        "model": file_digest(f"{model.rstrip('/')}/saved_model.pb"),
        "scales": [float(s) for s in scales],
        "crf": bool(crf),
    }
    path = f"{out_dir.rstrip('/')}/{MARKER}"
    theirs = read_json(path)
    if theirs is None and fileio.glob(f"{out_dir.rstrip('/')}/*.png"):
        raise ValueError(f"{out_dir} holds PNGs that predict did not write; choose another --out")
    if theirs is not None and theirs != mine:
        differ = ", ".join(k for k in mine if theirs.get(k) != mine[k])
        raise ValueError(f"{out_dir} holds label maps made with another {differ}; choose another --out")
    write_json_atomic(path, mine)


def unique_outputs(paths: Sequence[str], base: str) -> tuple[list[str], list[dict]]:
    """Inputs whose output names are free (the first, in sorted order, of `a.jpg` and `a.png` keeps
    `a.png`), and a rejection with the reason for each of the others."""
    taken: dict = {}
    kept, rejected = [], []
    for path in paths:
        name = output_name(path, base)
        if name in taken:
            rejected.append({"id": path, "reason": f"its output {name}.png is taken by {taken[name]}"})
        else:
            taken[name] = path
            kept.append(path)
    return kept, rejected


def check_saved_model(model_dir: str) -> str:
    """Fail early and clearly when `model_dir` is not an exported SavedModel version folder."""

    if not fileio.exists(f"{model_dir.rstrip('/')}/saved_model.pb"):
        raise FileNotFoundError(f"{model_dir} holds no SavedModel (saved_model.pb)")
    return model_dir


class Predictor:
    """A SavedModel from `python -m mcof_tf.export`, applied to one RGB image at a time."""

    def __init__(self, model_dir: str, max_side: int = MAX_SIDE):
        import tensorflow as tf

        from mcof_tf.data.voc import VOC_CLASSES, read_classes

        self.model = tf.saved_model.load(check_saved_model(model_dir))
        self.forward = self.model.signatures["predict_logits"]
        self.max_side = max_side  # as in the export's serving_default: larger images are scaled down
        names = os.path.join(model_dir, CLASSES_FILE)
        self.classes = read_classes(names) if fileio.exists(names) else list(VOC_CLASSES)

    def probabilities(
        self, image: np.ndarray, scales: Sequence[float] = (1.0,), crf: bool = False
    ) -> np.ndarray:
        """H×W×3 uint8 → H×W×C class probabilities, averaged over `scales`, optionally CRF-refined."""
        import tensorflow as tf

        h, w = image.shape[:2]
        fit = min(1.0, self.max_side / max(h, w))
        total = 0.0
        for s in (scale * fit for scale in scales):
            x = tf.constant(image[None], tf.float32)
            if s != 1.0:
                x = tf.image.resize(x, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)
            p = self.forward(images=x)["probabilities"]
            total += tf.image.resize(p, [h, w], method="bilinear")[0].numpy() if s != 1.0 else p[0].numpy()
        probs = total / len(scales)
        if crf:
            from mcof_tf.vision.crf import dense_crf

            probs = dense_crf(image, np.moveaxis(probs, -1, 0)).transpose(1, 2, 0)
        return probs

    def labels(self, image: np.ndarray, scales: Sequence[float] = (1.0,), crf: bool = False) -> np.ndarray:
        """H×W×3 uint8 → H×W uint8 class indices. An image larger than the network's input size is
        segmented at that size and its labels scaled up (nearest), so memory stays bounded by the
        network's size rather than growing with H×W×classes."""
        from PIL import Image

        h, w = image.shape[:2]
        fit = min(1.0, self.max_side / max(h, w))
        if fit == 1.0:
            return self.probabilities(image, scales, crf).argmax(-1).astype(np.uint8)
        size = (max(1, round(w * fit)), max(1, round(h * fit)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))  # antialiased by PIL
        labels = self.probabilities(small, scales, crf).argmax(-1).astype(np.uint8)
        return np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))


def overlay_jpeg(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> bytes:
    """The image with each labelled object pixel blended with its class colour (uint8 throughout)."""
    from PIL import Image

    from mcof_tf.data.voc import voc_palette

    base = Image.fromarray(image)
    colours = Image.fromarray(voc_palette()[labels])
    blend = Image.composite(
        Image.blend(base, colours, alpha), base, Image.fromarray((labels > 0).astype(np.uint8) * 255)
    )
    buf = io.BytesIO()
    blend.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def predict_file(
    predictor: Predictor,
    path: str,
    base: str,
    out_dir: str,
    scales: Sequence[float] = (1.0,),
    crf: bool = False,
    overlay: bool = False,
) -> tuple[str, bool]:
    """Segment one file → (its label PNG path, whether it was computed now; False: it existed).
    Raises RejectedInput for bytes that are not a usable image."""

    from mcof_tf.data.voc import decode_image, palette_png

    name = output_name(path, base)
    target = f"{out_dir.rstrip('/')}/{name}.png"
    blend = f"{out_dir.rstrip('/')}/{OVERLAYS}/{name}.jpg"
    if fileio.exists(target) and (not overlay or fileio.exists(blend)):
        return target, False
    with fileio.open_file(path, "rb") as f:
        image, _, _ = decode_image(f.read(), what=path)
    labels = predictor.labels(image, scales, crf)
    if overlay:  # first, so that the label PNG (the resume marker) is written last
        write_bytes_atomic(blend, overlay_jpeg(image, labels))
    write_bytes_atomic(target, palette_png(labels))
    return target, True


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--scales must be numbers separated by commas, not {text!r}") from None
    return check_scales(scales, "--scales")


def add_options(p: argparse.ArgumentParser) -> None:
    """The per-image options shared with `beam_jobs.predict`."""
    p.add_argument("--crf", action="store_true", help="dense-CRF post-processing")
    p.add_argument(
        "--scales", default="1", help="comma-separated input scales to average (0.25 to 4), e.g. 0.75,1,1.25"
    )
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<name>.jpg")
