"""Where training runs and in what precision: every visible GPU (several through
`tf.distribute.MirroredStrategy`, one replica per GPU, the global batch split between them), mixed
precision (float16 compute, float32 variables, loss scaling) on GPUs, float32 on the CPU.

`configure` must run before TensorFlow first touches a device. `cpu_replicas` splits the CPU into
that many logical devices and mirrors over them: the same code path as several GPUs, so it can be
tested on a machine without any (slow; only for tests).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("auto", "float32", "mixed")
MIXED_POLICY = "mixed_float16"


class DeviceError(ValueError):
    """A device or precision request this machine cannot meet; the message says why."""


@dataclass(frozen=True)
class Placement:
    """The chosen devices, precision policy and distribution strategy."""

    devices: tuple[str, ...]  # TensorFlow device names, one per replica
    descriptions: tuple[str, ...]  # what each device is, for the card
    policy: str  # "float32" or "mixed_float16"
    strategy: Any  # tf.distribute.Strategy

    @property
    def replicas(self) -> int:
        return len(self.devices)

    @property
    def mixed(self) -> bool:
        return self.policy == MIXED_POLICY

    def as_dict(self, per_replica_batch: int) -> dict[str, Any]:
        """The card's record of how the model was trained."""
        return {
            "precision": self.policy,
            "devices": list(self.descriptions),
            "replicas": self.replicas,
            "distribution": "MirroredStrategy" if self.replicas > 1 else "single device",
            "per_replica_batch_size": per_replica_batch,
            "global_batch_size": per_replica_batch * self.replicas,
        }

    @contextmanager
    def building(self) -> Iterator[None]:
        """Build and compile the model inside this: the strategy's scope, with the precision policy
        set as the global one (and float32 again afterwards, so bundles load as float32)."""
        import keras

        keras.mixed_precision.set_global_policy(self.policy)
        try:
            with self.strategy.scope():
                yield
        finally:
            keras.mixed_precision.set_global_policy("float32")


def _gpu_name(device: Any) -> str:
    import tensorflow as tf

    try:
        details = tf.config.experimental.get_device_details(device)
    except (ValueError, RuntimeError):
        details = {}
    return str(details.get("device_name") or device.name)


def configure(precision: str = "auto", gpus: str = "auto", cpu_replicas: int = 0) -> Placement:
    """Choose devices and precision. `gpus`: 'auto' (all visible), or how many to use ('0': CPU
    only). `precision`: 'auto' (mixed on GPUs, float32 on the CPU), 'float32' or 'mixed'."""
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise DeviceError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    visible = tf.config.list_physical_devices("GPU")
    if gpus == "auto":
        wanted = len(visible)
    else:
        try:
            wanted = int(gpus)
        except ValueError:
            raise DeviceError(f"--gpus must be 'auto' or a number, got {gpus!r}") from None
        if not 0 <= wanted <= len(visible):
            raise DeviceError(f"--gpus {wanted}: this machine has {len(visible)} visible GPU(s)")
    if cpu_replicas and wanted:
        raise DeviceError("CPU replicas are for machines without a GPU (pass --gpus 0)")
    try:
        if wanted < len(visible):
            tf.config.set_visible_devices(visible[:wanted], "GPU")
        for device in visible[:wanted]:
            tf.config.experimental.set_memory_growth(device, True)
    except RuntimeError as exc:  # TensorFlow already set its devices up in this process
        if wanted < len(visible):
            raise DeviceError(f"--gpus {wanted}: GPUs were already in use in this process ({exc})") from exc
    if wanted:
        devices = tuple(f"/gpu:{i}" for i in range(wanted))
        descriptions = tuple(f"GPU {i}: {_gpu_name(d)}" for i, d in enumerate(visible[:wanted]))
    elif cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
            )
        except RuntimeError as exc:
            raise DeviceError(f"{cpu_replicas} CPU replicas must be set up before TensorFlow starts ({exc})") from exc
        devices = tuple(f"/cpu:{i}" for i in range(cpu_replicas))
        descriptions = tuple(f"logical CPU {i} of {platform.machine()} ({os.cpu_count()} cores)"
                             for i in range(cpu_replicas))
    else:
        devices = ("/cpu:0",)
        descriptions = (f"CPU: {platform.machine()}, {os.cpu_count()} cores",)
    policy = MIXED_POLICY if precision == "mixed" or (precision == "auto" and wanted) else "float32"
    strategy = tf.distribute.MirroredStrategy(list(devices)) if len(devices) > 1 else tf.distribute.get_strategy()
    return Placement(devices, descriptions, policy, strategy)
