"""Multi-worker training: two processes on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # end-to-end runs: pytest -m "not slow" skips them

WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from mcof_tf import training
    strategy = training.make_strategy()  # first: collectives are configured when it is made
    from mcof_tf.config import load_config
    cfg = load_config("synthetic", ["input.crop_size=48", "input.batch_size=2", "model.width=0.125",
                                    "model.dropout=0.0", "train.pixelnet.batch_size=4"])
    out, index = sys.argv[1], json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    m = training.train("pixelnet", sys.argv[2], out, cfg, 7, epochs=2, steps_per_epoch=2, verbose=0)
    np.savez(os.path.join(out, f"weights-{index}.npz"), *m.get_weights())
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "chief": training.is_chief(strategy),
                      "multi_worker": isinstance(strategy, training.tf.distribute.MultiWorkerMirroredStrategy)}))
""")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_to_identical_weights(labelled_records, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            # the script lives in tmp_path: import this checkout's mcof_tf, installed or not
            PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "out"), labelled_records],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["multi_worker"] for r in results)
    # only the chief's model lands in the output folder; the other worker writes under worker-1/
    assert (tmp_path / "out" / "model.keras").exists() and (
        tmp_path / "out" / "worker-1" / "model.keras"
    ).exists()
    a, b = np.load(tmp_path / "out" / "weights-0.npz"), np.load(tmp_path / "out" / "weights-1.npz")
    assert len(a.files) > 10
    for k in a.files:  # synchronous updates and synchronized batch norm: the same weights everywhere
        np.testing.assert_array_equal(a[k], b[k])
    assert (tmp_path / "out" / "backup" / "training_metadata.json").exists()
    assert json.loads((tmp_path / "out" / "backup" / "training_metadata.json").read_text())["epoch"] == 2
