"""ASHA whose rung records survive an interrupted search.

Ray Tune's Tuner.restore brings back a search's trials and their checkpoints, but not its scheduler's state: the
TuneController never calls TrialScheduler.save/restore, and the scheduler comes back as it was pickled when the
search started, with empty rungs. A resumed ASHA search would forget every result recorded before the
interruption; a trial reaching a rung after the resume would be compared with fewer results or none (the first
one at an empty rung always goes on), and weak trials would run to the end. This scheduler writes its rung
records to a small JSON file after every result and reads them back before its first decision after a restore.
Trial ids survive Tune's restore, so the records stay valid. The file lives beside Tune's experiment folder, not in
it: a restored search copies the experiment folder's JSON files to its local staging folder and uploads that
folder over the experiment folder (ray/tune/execution/experiment_state.py), which put the records of the first
run back over every later write.
"""

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
        """folder: where the records live (the search's folder; tune.py deletes them when it starts afresh)."""
        super().__init__(**asha)
        self.folder, self.name = folder, self.RECORDS
        self._records_read = False

    def _read_records(self) -> None:
        """Once per process: a restored scheduler is the one pickled at the search's start, with empty rungs."""
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
