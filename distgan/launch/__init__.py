"""The launchers run.mode names: each module has CHECKPOINTS (a glob), check(cfg) and run(cfg) -> (run folder,
step, metrics, stop signal)."""

from __future__ import annotations

import importlib
from types import ModuleType

from distgan.errors import ConfigError

LAUNCHERS = {"local": "distgan.launch.local", "ray": "distgan.launch.ray_train"}


def launcher_for(mode: str) -> ModuleType:
    if mode not in LAUNCHERS:
        raise ConfigError(f"run.mode: must be one of {', '.join(LAUNCHERS)}, got {mode!r}")
    return importlib.import_module(LAUNCHERS[mode])


def checkpoint_layouts() -> dict[str, str]:
    """{run.mode: its checkpoint glob}: a run folder is resumed only by the mode that wrote it."""
    return {mode: launcher_for(mode).CHECKPOINTS for mode in LAUNCHERS}
