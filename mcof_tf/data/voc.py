"""Datasets laid out like PASCAL VOC 2012 (+ SBD's augmented masks).

    ROOT/JPEGImages/<id>.jpg                          images (any format PIL reads; converted to RGB)
    ROOT/SegmentationClassAug/<id>.png  or
    ROOT/SegmentationClass/<id>.png                   optional ground truth (palette or index PNG, 255 void)
    ROOT/Annotations/<id>.xml                         image tags = the <object><name>s
    ROOT/ImageSets/Segmentation/<split>.txt           one id per line
    ROOT/Saliency/<id>.png                            optional external saliency maps (e.g. DRFI)
    ROOT/classes.txt                                  optional class names, background first

Tags come from the XML when there is one, else from the ground-truth mask. Per-image problems raise
`RejectedInput` with a reason (the Beam job records it and goes on); dataset-level problems (no list
file, bad classes.txt) raise `DatasetError`. Files are read through `mcof_tf.fileio` (tf.io.gfile), so a root may also
be a `gs://` path.
"""

from __future__ import annotations

import io
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from mcof_tf import fileio

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# The largest image any command decodes (preprocess, predict) or the served model accepts: 16.7 MP,
# about 50 MB as RGB; larger ones are rejected with their size rather than risking the memory.
MAX_PIXELS = 4096 * 4096
IGNORE_LABEL = 255  # VOC's "void": unlabelled / not scored, everywhere in the project

# Ids are file stems: letters, digits, '_', '-', '.', never a path (no '/', no '..').
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class DatasetError(ValueError):
    """The dataset as a whole cannot be read (missing list file, bad class list, ...)."""


class RejectedInput(ValueError):
    """One image cannot be used; `str(e)` is the reason recorded in the job's manifest."""


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map (bit-interleaved), shape (n, 3) uint8; index 255 is (224, 224, 192)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def palette_png(labels: np.ndarray) -> bytes:
    """Class indices (H×W, 255 void) → a VOC-palette PNG (the format of SegmentationClass[Aug])."""
    import io

    from PIL import Image

    im = Image.fromarray(np.asarray(labels).astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def check_id(image_id: str) -> str:
    """Return `image_id` if it is a plain file stem; raise RejectedInput for anything path-like."""
    if not isinstance(image_id, str) or not _ID_RE.match(image_id) or ".." in image_id:
        raise RejectedInput(f"invalid id {image_id!r}: ids must be plain file names inside the dataset root")
    return image_id


def decode_image(data: bytes, what: str = "image", max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str, str]:
    """Bytes → (H×W×3 uint8 RGB, PIL format, original mode). Grayscale/RGBA/CMYK/palette are converted.
    Images of more than `max_pixels` are rejected from their header, before any pixel is decoded (a
    small file can hold a huge image)."""
    try:
        im = Image.open(io.BytesIO(data))  # reads the header only
        if im.size[0] * im.size[1] <= max_pixels:
            im.load()  # decodes fully: truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RejectedInput(f"{what} cannot be decoded: {type(e).__name__}: {e}") from e
    if im.size[0] * im.size[1] > max_pixels:
        raise RejectedInput(f"{what} is {im.size[0]}x{im.size[1]}, over the bound of {max_pixels:,} pixels")
    fmt, mode = im.format or "?", im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Transparent pixels become white rather than whatever colour hides under alpha 0.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    elif mode in ("I;16", "I;16B", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = max(arr.max(), 1.0)
        im = Image.fromarray((arr * (255.0 / top)).astype(np.uint8))
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise RejectedInput(f"{what} is too small: {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb, fmt, mode


def decode_label_png(data: bytes, num_classes: int, what: str = "mask") -> np.ndarray:
    """Palette, index (L) or colour PNG → H×W uint8 class indices with 255 = void."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RejectedInput(f"{what} cannot be decoded: {type(e).__name__}: {e}") from e
    if im.mode in ("P", "L"):
        arr = np.asarray(im, dtype=np.uint8)  # palette PNGs store the class index per pixel
    elif im.mode in ("I;16", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.max() > 255:
            raise RejectedInput(f"{what} has values above 255")
        arr = arr.astype(np.uint8)
    else:  # colour-coded mask: map VOC palette colours back to indices
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        pal = voc_palette()
        lut = {tuple(pal[i]): i for i in list(range(num_classes)) + [IGNORE_LABEL]}
        flat = rgb.reshape(-1, 3)
        colours, inverse = np.unique(flat, axis=0, return_inverse=True)
        idx = np.empty(len(colours), np.uint8)
        for k, col in enumerate(colours):
            if tuple(col) not in lut:
                raise RejectedInput(f"{what} has colour {tuple(int(x) for x in col)} that is no class")
            idx[k] = lut[tuple(col)]
        arr = idx[inverse.reshape(-1)].reshape(rgb.shape[:2])
    bad = np.unique(arr[(arr >= num_classes) & (arr != IGNORE_LABEL)])
    if bad.size:
        raise RejectedInput(f"{what} has label {int(bad[0])} outside the {num_classes} classes")
    return arr


def parse_tags_xml(data: bytes, classes: Sequence[str], what: str = "annotation") -> list[int]:
    """VOC XML → sorted class indices (1..C-1) of its <object><name>s."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise RejectedInput(f"{what} is not valid XML: {e}") from e
    index = {name: i for i, name in enumerate(classes)}
    tags = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index or index[name] == 0:
            raise RejectedInput(f"{what} names class {name!r}, which is not in the class list")
        tags.add(index[name])
    return sorted(tags)


def tags_from_mask(mask: np.ndarray) -> list[int]:
    return sorted(int(v) for v in np.unique(mask) if v not in (0, IGNORE_LABEL))


def read_classes(path: str) -> list[str]:
    with fileio.open_file(path, "r") as f:
        names = [line.strip() for line in f.read().splitlines() if line.strip()]
    if len(names) < 2:
        raise DatasetError(f"{path} must list background and at least one object class, one per line")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path} lists a class twice")
    if len(names) > IGNORE_LABEL:
        raise DatasetError(
            f"{path} lists {len(names)} classes; at most {IGNORE_LABEL} fit in a uint8 label map"
        )
    return names


@dataclass
class Sample:
    """One decoded dataset entry."""

    id: str
    image: np.ndarray  # H×W×3 uint8 RGB
    encoded: bytes  # the file's bytes (re-encoded as PNG when it had to be converted)
    format: str  # "jpeg" | "png"
    tags: list[int]  # object class indices, 1..C-1
    groundtruth: Optional[np.ndarray]  # H×W uint8, 255 void, or None
    saliency: Optional[np.ndarray]  # H×W uint8 from ROOT/Saliency, or None


class VocDataset:
    """Reader of one VOC-layout root."""

    def __init__(
        self,
        root: str,
        classes: Sequence[str] = (),
        mask_dirs: Sequence[str] = ("SegmentationClassAug", "SegmentationClass"),
    ):
        self.root = root.rstrip("/") if fileio.is_remote(root) else os.path.abspath(root)
        if not fileio.isdir(self.root):
            raise DatasetError(f"dataset root {root} is not a directory")
        if classes:
            self.classes = list(classes)
        elif fileio.exists(self._join("classes.txt")):
            self.classes = read_classes(self._join("classes.txt"))
        else:
            self.classes = list(VOC_CLASSES)
        self.mask_dirs = list(mask_dirs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _join(self, *parts: str) -> str:
        return "/".join((self.root,) + parts) if fileio.is_remote(self.root) else os.path.join(self.root, *parts)

    def content_signature(self, ids: Sequence[str]) -> str:
        """A hash of (name, size, modification time) of every file the ids can be read from (image,
        masks, annotation, saliency): an edited, added or removed file changes it, without reading
        any pixel. Per folder one listing with its files' metadata (`fileio.folder_stats`)."""
        import hashlib

        digest = hashlib.sha256()
        exts = (".jpg", ".jpeg", ".png", ".JPG", ".xml")
        for folder in ("JPEGImages", *self.mask_dirs, "Annotations", "Saliency"):
            present = fileio.folder_stats(self._join(folder), [i + e for i in ids for e in exts])
            for image_id in ids:
                for ext in exts:
                    name = image_id + ext
                    if name in present:
                        length, mtime = present[name]
                        digest.update(f"{folder}/{name}:{length}:{mtime}\n".encode())
        return digest.hexdigest()[:16]

    def path(self, folder: str, image_id: str, ext: str) -> str:
        """Path of `<folder>/<id><ext>`, refusing ids (or symlinks) that lead outside the root."""
        check_id(image_id)
        p = self._join(folder, image_id + ext)
        if not fileio.is_remote(p):
            real_root = os.path.realpath(self.root)
            if os.path.commonpath([os.path.realpath(p), real_root]) != real_root:
                raise RejectedInput(f"id {image_id!r} resolves outside the dataset root")
        return p

    def split_ids(self, split: str) -> list[str]:
        """The raw entries of ImageSets/Segmentation/<split>.txt (validated later, one by one)."""
        if not _ID_RE.match(split) or ".." in split:
            raise DatasetError(f"invalid split name {split!r}")
        p = self._join("ImageSets", "Segmentation", f"{split}.txt")
        if not fileio.exists(p):
            raise DatasetError(f"split list {p} does not exist")
        with fileio.open_file(p, "r") as f:
            # A VOC Main/ style line "id  1" keeps only its first field.
            return [line.split()[0] for line in f.read().splitlines() if line.strip()]

    def _read(self, path: str) -> Optional[bytes]:
        if not fileio.exists(path):
            return None
        with fileio.open_file(path, "rb") as f:
            return f.read()

    def load(self, image_id: str, need_saliency: bool = False) -> Sample:
        """Decode one entry; raise RejectedInput with the reason when it cannot be used."""
        check_id(image_id)
        data = None
        for ext in (".jpg", ".jpeg", ".png", ".JPG"):
            data = self._read(self.path("JPEGImages", image_id, ext))
            if data is not None:
                break
        if data is None:
            raise RejectedInput(f"image JPEGImages/{image_id}.jpg does not exist")
        image, fmt, mode = decode_image(data, f"image {image_id}")
        if fmt in ("JPEG", "PNG") and mode == "RGB":
            encoded, fmt_out = data, fmt.lower()
        else:  # converted (grayscale, RGBA, CMYK, other formats): store the RGB we computed on
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            encoded, fmt_out = buf.getvalue(), "png"
        h, w = image.shape[:2]

        gt = None
        for folder in self.mask_dirs:
            mdata = self._read(self.path(folder, image_id, ".png"))
            if mdata is not None:
                gt = decode_label_png(mdata, self.num_classes, f"mask {folder}/{image_id}.png")
                if gt.shape != (h, w):
                    raise RejectedInput(
                        f"mask {folder}/{image_id}.png is {gt.shape[1]}x{gt.shape[0]} but the image is {w}x{h}"
                    )
                break

        xml = self._read(self.path("Annotations", image_id, ".xml"))
        if xml is not None:
            tags = parse_tags_xml(xml, self.classes, f"Annotations/{image_id}.xml")
        elif gt is not None:
            tags = tags_from_mask(gt)
        else:
            raise RejectedInput(f"no tags: neither Annotations/{image_id}.xml nor a mask exists")
        if not tags:
            raise RejectedInput(f"no tags: image {image_id} names no object class")

        sal = None
        sdata = self._read(self.path("Saliency", image_id, ".png"))
        if sdata is not None:
            try:
                sal_im = Image.open(io.BytesIO(sdata))
                sal_im.load()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise RejectedInput(f"saliency Saliency/{image_id}.png cannot be decoded: {e}") from e
            sal = np.asarray(sal_im.convert("L"), dtype=np.uint8)
            if sal.shape != (h, w):
                raise RejectedInput(
                    f"saliency Saliency/{image_id}.png is {sal.shape[1]}x{sal.shape[0]} but the image is {w}x{h}"
                )
        elif need_saliency:
            raise RejectedInput(
                f"saliency Saliency/{image_id}.png does not exist (saliency.method is 'dataset')"
            )
        return Sample(image_id, image, encoded, fmt_out, tags, gt, sal)
