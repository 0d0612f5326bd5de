"""Quiet console output in Ray mode: distgan's lines, not Ray Train's bookkeeping (docs/workarounds.md)."""

from __future__ import annotations

import logging
import os

HARMLESS = ("has constructor arguments in the object store and max_restarts > 0",)


class BelowLevelFromRayTrain(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level
        import ray.train

        self.folder = os.path.dirname(ray.train.__file__)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not record.pathname.startswith(self.folder)


def quiet_worker_logging(level_name: str) -> None:
    """Drop Ray Train's own records below ray.log_level (it logs every report at INFO)."""
    level = logging.getLevelName(level_name)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, BelowLevelFromRayTrain) for f in handler.filters):
            handler.addFilter(BelowLevelFromRayTrain(level))


def quiet_driver_output() -> None:
    """Drop HARMLESS lines from the worker output Ray prints on the driver."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return

    def wrap(handler):
        def filtered(batch):
            lines = batch.get("lines") if isinstance(batch, dict) else None
            if lines:
                batch = {**batch, "lines": [line for line in lines if not any(h in line for h in HARMLESS)]}
                if not batch["lines"]:
                    return
            handler(batch)

        filtered.distgan_quiet = True
        return filtered

    with dispatcher._lock:
        dispatcher.handlers = [(name, h if getattr(h, "distgan_quiet", False) else wrap(h))
                               for name, h in dispatcher.handlers]
