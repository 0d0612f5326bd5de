"""Which torch device a flag or train.device names: one line for a device that is not there, not a traceback."""

from __future__ import annotations

import torch

from distgan.errors import UserError


def torch_device(name: str, what: str):
    """The torch.device `name`, or a UserError naming `what` (unknown, or CUDA torch cannot see) instead of
    a traceback from the first .to()."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"{what}: {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{what}={name}, but torch sees no CUDA device here (torch.cuda.is_available() is false)")
        if device.index is not None and device.index >= count:
            raise UserError(f"{what}={name}, but torch sees {count} CUDA device{'s' if count > 1 else ''}")
    return device


def pick_device(name: str) -> torch.device:
    """train.device (auto, cpu, cuda) as a device: auto takes the GPU where there is one."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    torch_device("cuda", "train.device")  # cuda where there is none: a UserError
    return torch.device("cuda", 0)
