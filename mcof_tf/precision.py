"""Mixed precision chosen by the hardware (`train.mixed_precision`).

bfloat16 pays only where the hardware computes in it natively: on CPUs with AVX512-BF16 or AMX-BF16 a
DeepLab training step ran 1.2-1.4x faster under Keras' `mixed_bfloat16`, while on an AVX-512 Xeon without
them it ran at 0.34x of float32 (TensorFlow emulates bf16 there). GPUs of compute capability 8.0 and up
(Ampere, Hopper) have bf16 tensor cores; older ones with tensor cores (7.x) have fp16, which needs loss
scaling (Keras' `LossScaleOptimizer`, added by `compile` and used by the multi-worker loop).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Optional

log = logging.getLogger(__name__)

POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def choose_policy(
    setting: str, cpu_flags: Iterable[str] = (), gpu_capabilities: Sequence[tuple] = ()
) -> tuple[str, str]:
    """(Keras dtype policy, why) for `setting` on a machine with these CPU flags and the compute
    capabilities of the GPUs that will train (none: training on the CPU)."""
    if setting not in POLICIES:
        raise ValueError(f"train.mixed_precision must be one of {', '.join(POLICIES)}, not {setting!r}")
    if setting != "auto":
        return setting, "set in the config"
    if gpu_capabilities:
        lowest = min(tuple(c) for c in gpu_capabilities)
        if lowest >= (8, 0):
            return (
                "mixed_bfloat16",
                f"GPUs of compute capability {lowest[0]}.{lowest[1]} compute bf16 natively",
            )
        if lowest >= (7, 0):
            return (
                "mixed_float16",
                f"GPUs of compute capability {lowest[0]}.{lowest[1]} have fp16 tensor cores",
            )
        return "float32", f"GPUs of compute capability {lowest[0]}.{lowest[1]} have no fast half precision"
    native = sorted(set(cpu_flags) & set(BF16_CPU_FLAGS))
    if native:
        return "mixed_bfloat16", f"the CPU has {' and '.join(native)}"
    return "float32", "the CPU has no native bf16 (no avx512_bf16 / amx_bf16: emulated bf16 is slower)"


AMX_CPU_FLAGS = ("amx_tile", "amx_bf16")


def _set_in_config(setting: bool | str, key: str) -> Optional[tuple[bool, str]]:
    """A `train.<key>` of true / false as (it, why); None for auto; anything else refused."""
    if setting is True or setting is False:
        return setting, "set in the config"
    if setting != "auto":
        raise ValueError(f"train.{key} must be true, false or auto, not {setting!r}")
    return None


def choose_jit(
    setting: bool | str, policy: str, on_gpus: bool, cpu_flags: Iterable[str] = ()
) -> tuple[bool, str]:
    """(XLA-compile the train step?, why) for `train.jit_compile` under dtype `policy`. XLA's CPU backend
    compiles convolutions itself instead of calling oneDNN. On an Intel Xeon with AMX oneDNN won in both
    precisions (paper config's PixelNet step under mixed_bfloat16: 36.4 s with XLA, 6.9-8.4 s without;
    full-width VGG16 at crop 112: bf16 3.5-3.7 s against 0.7-0.8 s, float32 3.5 s against 1.5-1.7 s). On
    AMD EPYCs without AMX XLA won under float32 (0.67 against 0.41 of the matmul ceiling) and ran bf16 as
    fast as float32 (21.1 vs 21.5 s), so it stays on there (`policy` is logged, not used)."""
    explicit = _set_in_config(setting, "jit_compile")
    if explicit:
        return explicit
    if on_gpus:
        return True, "training on GPUs"
    amx = sorted(set(cpu_flags) & set(AMX_CPU_FLAGS))
    if amx:
        return (
            False,
            f"the CPU has {' and '.join(amx)}: oneDNN's kernels, which XLA does not call, are faster",
        )
    return True, f"a CPU without AMX ({policy})"


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read (then `auto` means float32)."""
    try:
        with open(path) as f:  # fileio-exempt: /proc/cpuinfo
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gpu_capabilities(devices: Sequence[str] = ()) -> list[tuple]:
    """Compute capabilities of the GPUs training would use: those named in `devices` (tf.distribute
    names, e.g. "/gpu:0"), or every local GPU when `devices` is empty; [] when it trains on the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # named /physical_device:GPU:<index>
    if devices:
        wanted = {d.lower().rsplit(":", 1)[-1] for d in devices if "gpu" in d.lower()}
        gpus = [g for g in gpus if g.name.rsplit(":", 1)[-1] in wanted]
    caps = []
    for gpu in gpus:
        cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cap:
            caps.append(tuple(cap))
    return caps


def resolve(setting: str, devices: Sequence[str] = ()) -> tuple[str, str]:
    """`choose_policy` for this machine."""
    if setting != "auto":
        return choose_policy(setting)
    return choose_policy(setting, cpu_flags(), gpu_capabilities(devices))


def resolve_jit(setting: bool | str, policy: str, devices: Sequence[str] = ()) -> tuple[bool, str]:
    """`choose_jit` for this machine."""
    if setting != "auto":
        return choose_jit(setting, policy, False)
    return choose_jit(setting, policy, bool(gpu_capabilities(devices)), cpu_flags())


def choose_determinism(setting: bool | str, on_gpus: bool, racy_on_cpu: bool) -> tuple[bool, str]:
    """(Run TensorFlow's ops deterministically while this network trains?, why) for
    `train.deterministic`. On the CPU, the gradient of `tf.image.crop_and_resize` (RegionNet's RoI
    pooling: `racy_on_cpu`) shards the boxes over threads that add into the same feature-map pixels
    unsynchronised, so a RegionNet trained twice on the same inputs ended with different weights (2
    threads, 3 steps: max |difference| 0.04); under op determinism that gradient runs on one thread, as
    fast here. CAM and PixelNet have no such op (bit-identical without it), and Keras turns XLA off under
    op determinism, so `auto` leaves them alone; and GPUs, which have no deterministic kernel for that
    gradient (the op raises)."""
    explicit = _set_in_config(setting, "deterministic")
    if explicit:
        return explicit
    if on_gpus:
        return False, "training on GPUs, where RegionNet's RoI pooling has no deterministic gradient"
    if not racy_on_cpu:
        return False, "none of the network's CPU gradients needs it"
    return True, "on the CPU, the RoI pooling gradient is otherwise summed by racing threads"


def resolve_determinism(
    setting: bool | str, racy_on_cpu: bool, devices: Sequence[str] = ()
) -> tuple[bool, str]:
    """`choose_determinism` for this machine."""
    if setting != "auto":
        return choose_determinism(setting, False, racy_on_cpu)
    return choose_determinism(setting, bool(gpu_capabilities(devices)), racy_on_cpu)


def determinism_enabled() -> bool:
    """Whether TensorFlow's op determinism is on now."""
    from tensorflow.python.framework import config as tf_config

    return tf_config.is_op_determinism_enabled()


@contextlib.contextmanager
def op_determinism(on: bool):
    """TensorFlow's op determinism on inside the block when `on`, and as it was after it: it is
    process-wide, and Keras turns XLA off for every model compiled under it, so the stage that needs it
    must not hand it to the next."""
    import tensorflow as tf

    # enable_op_determinism's counterparts are not public (Keras reads the same module)
    from tensorflow.python.framework import config as tf_config

    turned_on = on and not determinism_enabled()
    if turned_on:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if turned_on:
            tf_config.disable_op_determinism()


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build models under Keras dtype policy `name`, then restore the previous global policy: a model
    keeps the policy it was built with, and the next stage in the same process must not inherit it."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
