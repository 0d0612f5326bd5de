"""Quiet, useful console output in Ray mode: distgan's progress lines, not Ray Train's bookkeeping.

- Workers: Ray Train logs every `ray.train.report` at INFO ("Reporting training result ...") through a logger
  named after its file path, which escapes RunConfig(logging_config=...)'s filter for "ray.train" loggers; a
  filter on the root handlers drops records from Ray Train's own files below ray.log_level.
- Driver: lines from Ray's actors that are known to be harmless and say nothing to a user (an internal Ray Train
  actor's restart notice) are dropped from the worker-log stream Ray prints. Everything else passes unchanged,
  and every record stays in the session's log files (/tmp/ray/session_latest/logs).
Both reach into Ray internals in one place each; if those move, output is simply as noisy as before.
"""

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
    level = logging.getLevelName(level_name)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, BelowLevelFromRayTrain) for f in handler.filters):
            handler.addFilter(BelowLevelFromRayTrain(level))


def quiet_driver_output() -> None:
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
