"""A run that asks for devices this machine does not have stops before any work, saying how to run it here."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from tasks.settings import SettingsError

GPU_ACCELERATORS = ("gpu", "cuda")


def gpus_wanted(trainer: DictConfig) -> int:
    """GPUs per node that the trainer config asks for (0 for a CPU run; "auto" or -1: at least one)."""
    if trainer.get("accelerator") not in GPU_ACCELERATORS:
        return 0
    devices = trainer.get("devices", 1)
    if isinstance(devices, int):
        return devices if devices > 0 else 1
    if isinstance(devices, str):  # "auto", or indices such as "0,1"
        return 1 if devices == "auto" else len([d for d in devices.split(",") if d.strip()])
    return len(devices)  # a list of device indices


def check_hardware(trainer: DictConfig) -> None:
    """Raise :class:`SettingsError` when the trainer wants more GPUs than this machine has."""
    wanted, found = gpus_wanted(trainer), torch.cuda.device_count()
    if wanted <= found:
        return
    strategy = trainer.get("strategy", "auto")
    raise SettingsError(
        f"this run asks for {wanted} GPU(s) (trainer.accelerator={trainer.get('accelerator')}, "
        f"trainer.devices={trainer.get('devices')}, strategy={strategy}) but this machine has {found}. "
        "To run it on the CPU, add trainer=cpu (one process) or trainer=ddp_cpu (two processes); "
        "on a cluster, launch it where the GPUs are (torchrun or srun)."
    )
