"""Checkpoint files in a run directory: checkpoints/ckpt-<step>.pt, written atomically, newest N kept."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

PATTERN = re.compile(r"ckpt-(\d+)\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(directory: str | Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = final.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, final)  # a crash mid-write never leaves a file that looks like a checkpoint
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)
