"""THE TFRecord schema: every feature key the project reads or writes is defined here, and nowhere else.

One `tf.train.Example` per image:

    image/id                 bytes   dataset id (file stem)
    image/encoded            bytes   JPEG or PNG of the RGB image
    image/format             bytes   b"jpeg" | b"png"
    image/height, width      int64
    image/tags               int64[C-1]  multi-hot over the object classes (class k at position k-1)
    superpixels/encoded      bytes   uint16 PNG of superpixel ids 0..n-1
    superpixels/count        int64   n
    saliency/encoded         bytes   uint8 PNG, 0..255
    saliency/source          bytes   b"dataset" | b"geodesic"
    groundtruth/encoded      bytes   optional uint8 index PNG (255 void); empty when the dataset has none
    labels/encoded           bytes   optional current pixel labels, uint8 PNG (255 = ignore)
    labels/superpixel        int64[n] optional current label of each superpixel (255 = ignore)
    labels/stage             bytes   optional: which stage wrote the labels ("seeds", "regionnet", ...)
    labels/iteration         int64   optional

Two readers share these keys: `parse_example` (numpy, for Beam DoFns and evaluation) and
`decode_example` (TensorFlow ops, for tf.data pipelines).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

from mcof_tf.data.voc import IGNORE_LABEL
from mcof_tf import fileio

# A folder of shards is complete when it holds this file (written last by the Beam job that made it);
# its "fingerprint" identifies what the shards were made from.
MANIFEST = "manifest.json"

ID = "image/id"
IMAGE = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
TAGS = "image/tags"
SUPERPIXELS = "superpixels/encoded"
NUM_SUPERPIXELS = "superpixels/count"
SALIENCY = "saliency/encoded"
SALIENCY_SOURCE = "saliency/source"
GROUNDTRUTH = "groundtruth/encoded"
LABELS = "labels/encoded"
SUPERPIXEL_LABELS = "labels/superpixel"
LABEL_STAGE = "labels/stage"
LABEL_ITERATION = "labels/iteration"


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 (H×W or H×W×3) or uint16 (H×W) array."""
    if array.dtype == np.uint16:
        im = Image.fromarray(array)  # uint16 → mode "I;16", written as a 16-bit PNG
    elif array.dtype == np.uint8:
        im = Image.fromarray(array)
    else:
        raise TypeError(f"png_bytes takes uint8 or uint16 arrays, got {array.dtype}")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png_array(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    arr = np.asarray(im)
    return arr.astype(np.uint16) if im.mode.startswith("I") else arr


@dataclass
class Record:
    """The numpy view of one example."""

    id: str
    image_encoded: bytes
    image_format: str
    height: int
    width: int
    tags: np.ndarray  # int64 multi-hot, length C-1
    superpixels: np.ndarray  # H×W int32
    saliency: np.ndarray  # H×W uint8
    saliency_source: str = "geodesic"
    groundtruth: Optional[np.ndarray] = None  # H×W uint8
    labels: Optional[np.ndarray] = None  # H×W uint8
    superpixel_labels: Optional[np.ndarray] = None  # int64 (n,)
    label_stage: str = ""
    label_iteration: int = 0
    _image: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def num_superpixels(self) -> int:
        return int(self.superpixels.max()) + 1 if self.superpixels.size else 0

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = np.asarray(Image.open(io.BytesIO(self.image_encoded)).convert("RGB"))
        return self._image

    @property
    def tag_indices(self) -> list[int]:
        """Object class indices 1..C-1 present in the tags."""
        return [int(i) + 1 for i in np.flatnonzero(self.tags)]


def tags_multi_hot(tag_indices, num_classes: int) -> np.ndarray:
    """Class indices (1..C-1) → int64 multi-hot of length C-1."""
    hot = np.zeros(num_classes - 1, np.int64)
    for t in tag_indices:
        if not 1 <= t < num_classes:
            raise ValueError(f"tag {t} is not an object class of {num_classes} classes")
        hot[t - 1] = 1
    return hot


def encode(rec: Record) -> bytes:
    """Record → serialized tf.train.Example."""
    import tensorflow as tf

    h, w = rec.height, rec.width
    for name, arr in (
        ("superpixels", rec.superpixels),
        ("saliency", rec.saliency),
        ("groundtruth", rec.groundtruth),
        ("labels", rec.labels),
    ):
        if arr is not None and arr.shape != (h, w):
            raise ValueError(f"{rec.id}: {name} is {arr.shape}, the image is {(h, w)}")
    n = rec.num_superpixels
    if n > 65535:
        raise ValueError(f"{rec.id}: {n} superpixels do not fit a uint16 PNG")

    def b(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(vs):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in np.ravel(vs)]))

    feats = {
        ID: b(rec.id.encode()),
        IMAGE: b(rec.image_encoded),
        FORMAT: b(rec.image_format.encode()),
        HEIGHT: i([h]),
        WIDTH: i([w]),
        TAGS: i(rec.tags),
        SUPERPIXELS: b(png_bytes(rec.superpixels.astype(np.uint16))),
        NUM_SUPERPIXELS: i([n]),
        SALIENCY: b(png_bytes(rec.saliency.astype(np.uint8))),
        SALIENCY_SOURCE: b(rec.saliency_source.encode()),
    }
    if rec.groundtruth is not None:
        feats[GROUNDTRUTH] = b(png_bytes(rec.groundtruth.astype(np.uint8)))
    if rec.labels is not None:
        feats[LABELS] = b(png_bytes(rec.labels.astype(np.uint8)))
    if rec.superpixel_labels is not None:
        if len(rec.superpixel_labels) != n:
            raise ValueError(f"{rec.id}: {len(rec.superpixel_labels)} superpixel labels for {n} superpixels")
        feats[SUPERPIXEL_LABELS] = i(rec.superpixel_labels)
    if rec.labels is not None or rec.superpixel_labels is not None:
        feats[LABEL_STAGE] = b(rec.label_stage.encode())
        feats[LABEL_ITERATION] = i([rec.label_iteration])
    # deterministic: the features in key order, so that the same record is the same bytes in every
    # process (the map's own order varies with Python's string hashing)
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def _proto(serialized: bytes):
    from tensorflow.core.example import example_pb2

    return example_pb2.Example.FromString(serialized)


def _proto_id(ex) -> str:
    return ex.features.feature[ID].bytes_list.value[0].decode()


def example_id(serialized: bytes) -> str:
    """The image id of a serialized example, without decoding any map."""
    return _proto_id(_proto(serialized))


def parse_example(serialized: bytes) -> Record:
    """Serialized example → Record (numpy; no TF graph)."""
    return _record(_proto(serialized))


def _record(ex) -> Record:
    """tf.train.Example → Record; decodes the label PNGs."""
    f = ex.features.feature

    def b(key: str) -> Optional[bytes]:
        return f[key].bytes_list.value[0] if key in f and f[key].bytes_list.value else None

    def ints(key: str) -> Optional[np.ndarray]:
        return np.asarray(f[key].int64_list.value, np.int64) if key in f else None

    gt, labels = b(GROUNDTRUTH), b(LABELS)
    return Record(
        id=b(ID).decode(),
        image_encoded=b(IMAGE),
        image_format=b(FORMAT).decode(),
        height=int(ints(HEIGHT)[0]),
        width=int(ints(WIDTH)[0]),
        tags=ints(TAGS),
        superpixels=_png_array(b(SUPERPIXELS)).astype(np.int32),
        saliency=_png_array(b(SALIENCY)).astype(np.uint8),
        saliency_source=(b(SALIENCY_SOURCE) or b"").decode(),
        groundtruth=_png_array(gt).astype(np.uint8) if gt else None,
        labels=_png_array(labels).astype(np.uint8) if labels else None,
        superpixel_labels=ints(SUPERPIXEL_LABELS),
        label_stage=(b(LABEL_STAGE) or b"").decode(),
        label_iteration=int(ints(LABEL_ITERATION)[0]) if LABEL_ITERATION in f else 0,
    )


MAPS = ("image", "superpixels", "saliency", "groundtruth", "labels")  # the per-pixel maps decode_example makes


def decode_example(serialized, num_classes: int, maps: Optional[Sequence[str]] = None) -> dict:
    """TF ops: serialized example → dict of tensors for tf.data.

    Keys: id, image (H×W×3 uint8), tags (float32, C-1), superpixels (H×W int32), saliency (H×W uint8),
    groundtruth / labels (H×W uint8, all 255 when absent), has_groundtruth / has_labels (bool).
    When an example carries only per-superpixel labels, `labels` is painted from them.
    `maps`: the per-pixel maps to decode (default: all of MAPS); the others are left out, not decoded
    (a training input decodes what its network learns from: the default PixelNet's input took 6.2
    instead of 10.9 ms of CPU a batch).
    """
    import tensorflow as tf

    maps = MAPS if maps is None else tuple(maps)
    unknown = set(maps) - set(MAPS)
    if unknown:
        raise ValueError(f"decode_example: unknown maps {sorted(unknown)}; expected some of {MAPS}")
    spec = {
        ID: tf.io.FixedLenFeature([], tf.string),
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        WIDTH: tf.io.FixedLenFeature([], tf.int64),
        TAGS: tf.io.FixedLenFeature([num_classes - 1], tf.int64),
        SUPERPIXELS: tf.io.FixedLenFeature([], tf.string),
        SALIENCY: tf.io.FixedLenFeature([], tf.string),
        GROUNDTRUTH: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABELS: tf.io.FixedLenFeature([], tf.string, default_value=""),
        SUPERPIXEL_LABELS: tf.io.VarLenFeature(tf.int64),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    h, w = tf.cast(ex[HEIGHT], tf.int32), tf.cast(ex[WIDTH], tf.int32)
    void = tf.fill([h, w], tf.constant(IGNORE_LABEL, tf.uint8))

    def superpixels():
        return tf.cast(tf.io.decode_png(ex[SUPERPIXELS], dtype=tf.uint16)[..., 0], tf.int32)

    def optional_png(data):
        return tf.cond(
            tf.strings.length(data) > 0, lambda: tf.io.decode_png(data, channels=1)[..., 0], lambda: void
        )

    sp_labels = tf.sparse.to_dense(ex[SUPERPIXEL_LABELS])
    has_pixel_labels = tf.strings.length(ex[LABELS]) > 0
    has_sp_labels = tf.size(sp_labels) > 0
    out = {
        "id": ex[ID],
        "tags": tf.cast(ex[TAGS], tf.float32),
        "has_groundtruth": tf.strings.length(ex[GROUNDTRUTH]) > 0,
        "has_labels": has_pixel_labels | has_sp_labels,
    }
    if "image" in maps:
        out["image"] = tf.ensure_shape(
            tf.io.decode_image(ex[IMAGE], channels=3, expand_animations=False), [None, None, 3]
        )
    if "superpixels" in maps:
        out["superpixels"] = superpixels()
    if "saliency" in maps:
        out["saliency"] = tf.io.decode_png(ex[SALIENCY], channels=1)[..., 0]
    if "groundtruth" in maps:
        out["groundtruth"] = optional_png(ex[GROUNDTRUTH])
    if "labels" in maps:
        def painted():  # from per-superpixel labels (decoding the superpixels here if not asked for)
            sp = out["superpixels"] if "superpixels" in out else superpixels()
            return tf.cast(tf.gather(sp_labels, sp), tf.uint8)

        out["labels"] = tf.cond(
            has_pixel_labels,
            lambda: tf.io.decode_png(ex[LABELS], channels=1)[..., 0],
            lambda: tf.cond(has_sp_labels, painted, lambda: void),
        )
    return out


def write_records(path: str, records) -> int:
    """Write Records to one TFRecord file (for tests and small jobs; Beam writes the big ones)."""
    import tensorflow as tf

    n = 0
    with tf.io.TFRecordWriter(path) as w:
        for rec in records:
            w.write(encode(rec))
            n += 1
    return n


def superpixel_counts(pattern: str) -> list[int]:
    """Superpixels per example (the length of its per-superpixel labels; 0 where it has none), read
    without decoding any image."""
    import tensorflow as tf

    spec = {SUPERPIXEL_LABELS: tf.io.VarLenFeature(tf.int64)}
    files = sorted(fileio.glob(pattern))
    if not files:
        return []
    sizes = tf.data.TFRecordDataset(files).map(
        tf.autograph.experimental.do_not_convert(  # plain TF ops (see data.pipeline.plain)
            lambda s: tf.size(tf.io.parse_single_example(s, spec)[SUPERPIXEL_LABELS].values)
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return [int(n) for n in sizes.as_numpy_iterator()]


def count_records(pattern: str) -> int:
    """Number of examples in every TFRecord file matching `pattern` (0 when none match)."""
    import tensorflow as tf

    return sum(1 for f in fileio.glob(pattern) for _ in tf.data.TFRecordDataset(f))


def _protos(pattern: str):
    import tensorflow as tf

    for path in sorted(fileio.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield _proto(raw)


def read_records(pattern: str, ids=None):
    """Yield Records from every file matching `pattern`, in file-name order; with `ids`, only those
    (the others are skipped before their PNGs are decoded)."""
    for ex in _protos(pattern):
        if ids is None or _proto_id(ex) in ids:
            yield _record(ex)


def record_ids(pattern: str) -> list[str]:
    """The ids of every example matching `pattern`, without decoding any map."""
    return [_proto_id(ex) for ex in _protos(pattern)]
