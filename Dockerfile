# The Dataflow custom worker container (--sdk_container_image): Beam's Python SDK image of the versions
# setup.py pins (tests/test_architecture.py checks), with mcof_tf, TensorFlow and pydensecrf2 built in.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/mcof-beam:2.77 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/mcof-beam:2.77
FROM apache/beam_python3.11_sdk:2.77.0

# pydensecrf2 compiles from source
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY setup.py README.md /mcof/
COPY mcof_tf /mcof/mcof_tf
COPY beam_jobs /mcof/beam_jobs
COPY configs /mcof/configs
# for GPU workers: "tensorflow[and-cuda]==2.21.*" instead
RUN pip install --no-cache-dir "/mcof[gcp]" "tensorflow==2.21.*"
