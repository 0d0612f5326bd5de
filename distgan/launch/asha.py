"""ASHA whose rung records survive an interrupted search, which Tuner.restore would bring back empty
(docs/workarounds.md)."""

from __future__ import annotations

import json
import logging

from ray.tune.schedulers import AsyncHyperBandScheduler

from distgan.io.run_folder import RunFolder
from distgan.errors import first_line

log = logging.getLogger(__name__)


class ResumableASHA(AsyncHyperBandScheduler):
    RECORDS = "asha-rungs.json"

    def __init__(self, folder: str, **asha):
        """folder: the search's folder, which holds the records."""
        super().__init__(**asha)
        self.folder, self.name = folder, self.RECORDS
        self._records_read = False

    def _read_records(self) -> None:
        """Once per process: a restored scheduler has the rungs of the search's start."""
        if self._records_read:
            return
        self._records_read = True
        store = RunFolder(self.folder)
        if not store.exists(self.name):
            return
        try:
            saved = json.loads(store.read_bytes(self.name))
            for bracket, rungs in zip(self._brackets, saved["brackets"]):
                for milestone, recorded in bracket._rungs:
                    recorded.update(rungs.get(str(milestone), {}))
            self._num_stopped = saved["num_stopped"]
        except Exception as exc:  # the search goes on; it just forgets earlier rung results, as plain ASHA would
            log.warning("ASHA's rung records in %s/%s cannot be read (%s): starting with empty rungs",
                        self.folder, self.name, first_line(exc))

    def _write_records(self) -> None:
        saved = {"brackets": [{str(m): recorded for m, recorded in bracket._rungs} for bracket in self._brackets],
                 "num_stopped": self._num_stopped}
        RunFolder(self.folder).write_bytes(self.name, json.dumps(saved).encode())

    def on_trial_add(self, tune_controller, trial) -> None:
        self._read_records()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        self._read_records()
        action = super().on_trial_result(tune_controller, trial, result)
        self._write_records()
        return action

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._read_records()
        super().on_trial_complete(tune_controller, trial, result)
        self._write_records()
