"""The embedded benchmark: a synthetic dataset in VOC layout that is hard in the ways real data is.

    python -m mcof_tf.data.synthetic --out data/synthetic [--seed 0] [--num-train 200] [--num-val 60]

What makes weak supervision hard here, as on VOC:
- Parts: each object is a large body plus one small, strongly class-specific "badge" (a patterned
  patch). Bodies are only weakly class-specific: classes come in pairs sharing one body texture with
  close hues, so a classifier finds the badge most discriminative and its CAM is strongest there.
  (A small from-scratch CAM network is still blurry at this image size: the precise, partial seeds
  of VOC's regime come from seeding only the CAMs' cores, configs/synthetic.yaml `seeds`.)
- Presets (`data.synthetic`): number of classes (up to ten), object size, background set (colour or
  tinted greyscale photographs) and share of distractors; `configs/synthetic_small_objects.yaml` is a
  second preset with ten classes and small objects.
- Clutter: backgrounds are crops of real photographs shipped with scikit-image, with extra texture
  patches pasted on them.
- Salient distractors: bright, saturated shapes of no class (labelled background), which a saliency
  method happily marks as foreground (the paper's Fig. 5).
- A mix of single-class images (one or two instances) and multi-class images (two or three classes).
- Varied, non-square sizes; soft edges, lighting changes, sensor noise and JPEG compression.
- VOC-style ground truth: palette PNGs with a void (255) ring along every object boundary.

Each image is drawn from its own `numpy.random.default_rng([seed, index])`, so the dataset is the same
for a seed whatever order or process builds it. The root is written to a temporary folder and renamed
into place when complete, so a half-written dataset is never used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw, segmentation, transform

from mcof_tf import fileio
from mcof_tf import log as log_setup
from mcof_tf.config import SyntheticConfig as SyntheticSpec  # the generator's parameters are the config's
from mcof_tf.data.voc import IGNORE_LABEL, voc_palette

log = logging.getLogger(__name__)

ALL_CLASSES = (
    "background",
    "beetle",
    "crab",
    "kite",
    "lamp",
    "snail",
    "turtle",
    "frog",
    "moth",
    "shell",
    "vase",
)
CLASSES = ALL_CLASSES[:7]  # the default benchmark's (data.synthetic.num_classes: 6)
GENERATOR_VERSION = 2
MARKER = ".complete"

# body texture and hue per class: pairs (beetle, crab), (kite, lamp), (snail, turtle), (frog, moth),
# (shell, vase) share a texture and have close hues, so bodies alone barely tell the classes of a pair
# apart: the badge does, and a classifier's CAM is strongest there.
_BODY = {
    1: ("brick", 0.02),
    2: ("brick", 0.07),
    3: ("gravel", 0.58),
    4: ("gravel", 0.63),
    5: ("grass", 0.30),
    6: ("grass", 0.35),
    7: ("moon", 0.80),
    8: ("moon", 0.85),
    9: ("cell", 0.12),
    10: ("cell", 0.17),
}
# body outline per class
_SHAPE = {
    1: "ellipse",
    2: "blob",
    3: "diamond",
    4: "rectangle",
    5: "ellipse",
    6: "blob",
    7: "blob",
    8: "diamond",
    9: "ellipse",
    10: "rectangle",
}
# badge: (pattern, colour A, colour B); small and unmistakable
_BADGE = {
    1: ("stripes", (250, 220, 20), (20, 20, 20)),
    2: ("checker", (240, 30, 200), (255, 255, 255)),
    3: ("dots", (30, 230, 230), (130, 0, 0)),
    4: ("rings", (255, 120, 0), (0, 40, 160)),
    5: ("checker", (40, 200, 40), (90, 0, 120)),
    6: ("stripes", (255, 255, 255), (200, 0, 40)),
    7: ("dots", (255, 255, 0), (0, 0, 200)),
    8: ("rings", (255, 255, 255), (0, 120, 0)),
    9: ("stripes", (0, 200, 255), (120, 60, 0)),
    10: ("checker", (255, 160, 160), (0, 0, 0)),
}
# background sets: colour photographs, or greyscale ones tinted per image (another kind of clutter)
_PHOTOS = {
    "photos": ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"),
    "grey": ("camera", "coins", "page", "retina", "brick", "moon"),
}


def classes(spec: SyntheticSpec) -> tuple[str, ...]:
    """Class names of the dataset `spec` describes, background first."""
    return ALL_CLASSES[: spec.num_classes + 1]


@cache
def _texture(name: str) -> np.ndarray:
    """A grayscale texture in [0, 1] at 256x256 (downscaled so that its grain suits small images)."""
    img = getattr(skdata, name)().astype(np.float64) / 255.0
    return transform.resize(img, (256, 256), anti_aliasing=True)


@cache
def _photo(name: str) -> np.ndarray:
    img = getattr(skdata, name)().astype(np.float64) / 255.0
    return img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)


def _hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _crop(tex: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random h×w window of `tex` (tiled only when the texture is smaller than the window)."""
    reps = (int(np.ceil(h / tex.shape[0])), int(np.ceil(w / tex.shape[1]))) + (1,) * (tex.ndim - 2)
    big = np.tile(tex, reps) if max(reps) > 1 else tex
    y = rng.integers(0, big.shape[0] - h + 1)
    x = rng.integers(0, big.shape[1] - w + 1)
    return big[y : y + h, x : x + w]


def _shape_mask(
    kind: str,
    h: int,
    w: int,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    if kind == "ellipse":
        rr, cc = draw.ellipse(cy, cx, ry, rx, shape=(h, w), rotation=angle)
    elif kind == "rectangle":
        corners = np.array([[-ry, -rx], [-ry, rx], [ry, rx], [ry, -rx]]) * 0.85
        rr, cc = _rotated_polygon(corners, cy, cx, angle, h, w)
    elif kind == "diamond":
        corners = np.array([[-ry, 0], [0, rx], [ry, 0], [0, -rx]]) * 1.1
        rr, cc = _rotated_polygon(corners, cy, cx, angle, h, w)
    else:  # blob: a star-convex polygon with a smooth random radius
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        phase = rng.uniform(0, 2 * np.pi, 3)
        r = (
            1
            + 0.18 * np.sin(2 * t + phase[0])
            + 0.12 * np.sin(3 * t + phase[1])
            + 0.06 * np.sin(5 * t + phase[2])
        )
        corners = np.stack([ry * r * np.sin(t), rx * r * np.cos(t)], 1)
        rr, cc = _rotated_polygon(corners, cy, cx, angle, h, w)
    mask[rr, cc] = True
    return mask


def _rotated_polygon(corners, cy, cx, angle, h, w):
    c, s = np.cos(angle), np.sin(angle)
    ys = cy + corners[:, 0] * c - corners[:, 1] * s
    xs = cx + corners[:, 0] * s + corners[:, 1] * c
    return draw.polygon(ys, xs, shape=(h, w))


def _badge_pattern(kind: str, h: int, w: int, a, b, period: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "stripes":
        sel = (np.floor((xx + yy) / period) % 2) == 0
    elif kind == "checker":
        sel = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0
    elif kind == "dots":
        sel = ((xx % (2 * period) - period) ** 2 + (yy % (2 * period) - period) ** 2) < (0.6 * period) ** 2
    else:  # rings
        cy, cx = h / 2, w / 2
        sel = (np.floor(np.hypot(yy - cy, xx - cx) / period) % 2) == 0
    return np.where(sel[..., None], np.array(a) / 255.0, np.array(b) / 255.0)


def _paste(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, soft: float = 0.7) -> None:
    """Alpha-blend `colour` (H×W×3) into `canvas` inside `mask`, with slightly soft edges."""
    alpha = ndimage.gaussian_filter(mask.astype(np.float64), soft)[..., None]
    canvas[:] = canvas * (1 - alpha) + colour * alpha


def render(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Image `index` of the dataset: (H×W×3 uint8, H×W uint8 mask with void ring, objects)."""
    rng = np.random.default_rng([spec.seed, index])
    h = int(rng.integers(spec.min_side, spec.max_side + 1))
    w = int(rng.integers(spec.min_side, spec.max_side + 1))
    # background: a real photograph, partly desaturated and dimmed so objects stay findable
    photos = _PHOTOS[spec.backgrounds]
    photo = _photo(photos[rng.integers(len(photos))])
    if spec.backgrounds == "grey":  # a random tint per image
        photo = photo * (0.55 + 0.45 * _hsv_colour(rng.uniform(), 1.0, 1.0))
    zoom = rng.uniform(0.35, 0.8)
    ph, pw = int(photo.shape[0] * zoom), int(photo.shape[1] * zoom)
    photo = transform.resize(photo, (max(ph, h), max(pw, w)), anti_aliasing=True)
    canvas = _crop(photo, h, w, rng)
    grey = canvas.mean(-1, keepdims=True)
    sat = rng.uniform(0.3, 0.8)
    canvas = (grey + sat * (canvas - grey)) * rng.uniform(0.6, 1.0)
    label = np.zeros((h, w), np.uint8)

    # clutter: texture patches of no class
    for _ in range(rng.integers(1, 4)):
        tex = _texture(("camera", "moon", "text", "grass", "gravel")[rng.integers(5)])
        ry, rx = rng.uniform(0.08, 0.2) * h, rng.uniform(0.08, 0.2) * w
        m = _shape_mask(
            ("ellipse", "rectangle")[rng.integers(2)],
            h,
            w,
            rng.uniform(0, h),
            rng.uniform(0, w),
            ry,
            rx,
            rng.uniform(0, np.pi),
            rng,
        )
        col = _hsv_colour(rng.uniform(), rng.uniform(0, 0.3), 1.0)
        _paste(canvas, m, _crop(tex, h, w, rng)[..., None] * col * rng.uniform(0.5, 0.9))

    # objects: single-class (1-2 instances) or multi-class (2-3 classes)
    num_classes = spec.num_classes
    if rng.uniform() < 0.6:
        cls = [int(rng.integers(1, num_classes + 1))] * int(rng.integers(1, 3))
    else:
        cls = [
            int(c) for c in rng.choice(np.arange(1, num_classes + 1), int(rng.integers(2, 4)), replace=False)
        ]

    # a salient distractor, drawn before or after the objects
    distractor_first = rng.uniform() < 0.5
    has_distractor = rng.uniform() < spec.distractors

    def distractor():
        m = _shape_mask(
            ("ellipse", "blob", "rectangle")[rng.integers(3)],
            h,
            w,
            rng.uniform(0.15, 0.85) * h,
            rng.uniform(0.15, 0.85) * w,
            rng.uniform(0.1, 0.22) * min(h, w),
            rng.uniform(0.1, 0.22) * min(h, w),
            rng.uniform(0, np.pi),
            rng,
        )
        col = _hsv_colour(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.85, 1.0))
        shade = 0.85 + 0.15 * _crop(_texture("moon"), h, w, rng)[..., None]
        _paste(canvas, m, col * shade)
        label[m] = 0

    if has_distractor and distractor_first:
        distractor()
    objects = []
    n = len(cls)
    for k, c in enumerate(cls):
        size = rng.uniform(*spec.object_scale) * min(h, w) / (1 + 0.25 * (n - 1))
        ry, rx = size * rng.uniform(0.75, 1.25), size * rng.uniform(0.75, 1.25)
        # spread instances over the width so several objects rarely cover each other entirely
        cx = (k + rng.uniform(0.3, 0.7)) * w / n
        cy = rng.uniform(0.3, 0.7) * h
        angle = rng.uniform(0, np.pi)
        body = _shape_mask(_SHAPE[c], h, w, cy, cx, ry, rx, angle, rng)
        if body.sum() < 30:
            continue
        tex_name, hue = _BODY[c]
        tex = _crop(_texture(tex_name), h, w, rng)
        col = _hsv_colour(hue + rng.normal(0, 0.015), rng.uniform(0.45, 0.75), rng.uniform(0.6, 0.95))
        light = rng.uniform(0.75, 1.15)
        _paste(canvas, body, np.clip((0.45 + 0.75 * tex)[..., None] * col * light, 0, 1))
        # the badge: a small patch between the body's centre and rim, 25-35 % of the body's radius
        ys, xs = np.nonzero(body)
        pick = rng.integers(len(ys))
        by = 0.55 * ys[pick] + 0.45 * cy
        bx = 0.55 * xs[pick] + 0.45 * cx
        br = max(2.5, rng.uniform(0.25, 0.35) * min(ry, rx))
        badge = _shape_mask(
            "ellipse", h, w, by, bx, br, br * rng.uniform(0.8, 1.2), rng.uniform(0, np.pi), rng
        )
        badge &= ndimage.binary_erosion(body, iterations=1)
        kind, a, b = _BADGE[c]
        _paste(canvas, badge, _badge_pattern(kind, h, w, a, b, period=max(1.5, br / 2.5)), soft=0.4)
        label[body] = c
        ys, xs = np.nonzero(body)
        objects.append({"class": c, "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]})
    if has_distractor and not distractor_first:
        distractor()

    # camera: slight blur, noise, gain
    canvas = ndimage.gaussian_filter(canvas, (0.5, 0.5, 0))
    canvas = canvas + rng.normal(0, 0.015, canvas.shape)
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)

    # VOC-style void ring along every boundary between labels
    ring = segmentation.find_boundaries(label, mode="thick")
    label = label.copy()
    label[ring & ndimage.binary_dilation(label > 0, iterations=1)] = IGNORE_LABEL
    present = set(np.unique(label).tolist())
    objects = [o for o in objects if o["class"] in present]
    return image, label, objects


def _annotation_xml(image_id: str, h: int, w: int, objects: list[dict]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for k, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = ALL_CLASSES[o["class"]]
        box = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o["bbox"]):
            ET.SubElement(box, k).text = str(v + 1)  # VOC boxes are 1-based
    return ET.tostring(root)


def _ids(spec: SyntheticSpec) -> dict[str, list[str]]:
    ids = [f"syn_{i:06d}" for i in range(spec.num_train + spec.num_val)]
    return {"train": ids[: spec.num_train], "val": ids[spec.num_train :]}


def _marker(spec: SyntheticSpec) -> dict:
    return {**asdict(spec), "version": GENERATOR_VERSION}


def is_complete(root: str, spec: SyntheticSpec) -> bool:
    marker = os.path.join(root, MARKER)
    if not os.path.exists(marker):
        return False
    with open(marker, encoding="utf-8") as f:
        return json.load(f) == _marker(spec)


def check_spec(spec: SyntheticSpec) -> None:
    """Raise ValueError naming the first parameter the generator cannot honour."""
    if not 32 <= spec.min_side <= spec.max_side:
        raise ValueError("need 32 <= min_side <= max_side")
    if not 2 <= spec.num_classes <= len(ALL_CLASSES) - 1:
        raise ValueError(f"num_classes must be 2..{len(ALL_CLASSES) - 1}")
    lo, hi = spec.object_scale if len(spec.object_scale) == 2 else (0, -1)
    if not 0.05 <= lo <= hi <= 0.5:
        raise ValueError("object_scale must be [min, max] with 0.05 <= min <= max <= 0.5")
    if spec.backgrounds not in _PHOTOS:
        raise ValueError(f"backgrounds must be one of {', '.join(sorted(_PHOTOS))}")
    if not 0 <= spec.distractors <= 1:
        raise ValueError("distractors must be a share in [0, 1]")


def write_dataset(root: str, spec: SyntheticSpec, progress: bool = True) -> str:
    """Write the benchmark to `root` (VOC layout). Returns `root`. Refuses to overwrite another dataset."""
    check_spec(spec)
    if is_complete(root, spec):
        return root
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} exists and holds something other than this benchmark; choose another --out"
        )
    parent, base = os.path.split(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    _remove_abandoned_partials(parent, base)
    # Each writer has its own temporary folder: runs started side by side on a fresh machine (`bench
    # method --jobs 2`) all generate the same root, and must not write into or rename away another's.
    tmp = os.path.join(parent, f"{base}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # not mkdtemp: 0700
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(tmp, sub))
    pal = voc_palette().reshape(-1).tolist()
    splits = _ids(spec)
    all_ids = splits["train"] + splits["val"]
    for i, image_id in enumerate(all_ids):
        image, label, objects = render(spec, i)
        h, w = label.shape
        rng = np.random.default_rng([spec.seed, i, 1])
        Image.fromarray(image).save(
            os.path.join(tmp, "JPEGImages", f"{image_id}.jpg"), quality=int(rng.integers(85, 96))
        )
        m = Image.fromarray(label, mode="P")
        m.putpalette(pal)
        m.save(os.path.join(tmp, "SegmentationClass", f"{image_id}.png"))
        with open(os.path.join(tmp, "Annotations", f"{image_id}.xml"), "wb") as f:
            f.write(_annotation_xml(image_id, h, w, objects))
        if progress and ((i + 1) % 50 == 0 or i + 1 == len(all_ids)):
            log.info(f"synthetic: {i + 1}/{len(all_ids)} images")
    for split, ids in splits.items():
        with open(os.path.join(tmp, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    with open(os.path.join(tmp, "classes.txt"), "w") as f:
        f.write("\n".join(classes(spec)) + "\n")
    with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
        json.dump(_marker(spec), f)
    try:
        if os.path.exists(root):
            os.rmdir(root)  # empty (checked above), unless another writer has just finished
        os.rename(tmp, root)
    except OSError:
        if not is_complete(root, spec):
            raise
        shutil.rmtree(tmp)  # another writer finished first: theirs is the same dataset
    return root


def _remove_abandoned_partials(parent: str, base: str) -> None:
    """Temporary folders of writers of `base` that were killed (their process is gone)."""
    for name in os.listdir(parent):
        pid = name[len(base) :].split("-")[1] if name.startswith(f"{base}.partial-") else ""
        if pid.isdigit() and not fileio.process_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write the VOC-layout root into")
    defaults = SyntheticSpec()
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-train", type=int, default=defaults.num_train)
    p.add_argument("--num-val", type=int, default=defaults.num_val)
    p.add_argument("--min-side", type=int, default=defaults.min_side)
    p.add_argument("--max-side", type=int, default=defaults.max_side)
    p.add_argument("--num-classes", type=int, default=defaults.num_classes, help="object classes, 2..10")
    p.add_argument(
        "--object-scale",
        type=float,
        nargs=2,
        default=defaults.object_scale,
        metavar=("MIN", "MAX"),
        help="body radius of a lone object / shorter image side",
    )
    p.add_argument("--backgrounds", choices=sorted(_PHOTOS), default=defaults.backgrounds)
    p.add_argument(
        "--distractors",
        type=float,
        default=defaults.distractors,
        help="share of images with a salient distractor",
    )
    log_setup.add_verbose_flag(p)
    a = p.parse_args(argv)
    log_setup.setup(a.verbose)
    spec = SyntheticSpec(
        a.seed,
        a.num_train,
        a.num_val,
        a.min_side,
        a.max_side,
        a.num_classes,
        list(a.object_scale),
        a.backgrounds,
        a.distractors,
    )
    try:
        check_spec(spec)
    except ValueError as e:
        p.error(str(e))
    write_dataset(a.out, spec)
    print(f"wrote {spec.num_train} train + {spec.num_val} val images to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
