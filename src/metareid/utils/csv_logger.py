"""A CSV logger that continues the run's ``metrics.csv`` on a resume instead of deleting it.

Lightning's ``CSVLogger`` removes an existing ``metrics.csv`` when it starts. A resumed run now
continues in its own folder (:mod:`metareid.utils.run_dirs`), so that would erase the history
before the checkpoint. This logger keeps the file; at its first write it drops the rows logged at
or after the first step it writes (they came after the checkpoint the run resumed from, and are
now replayed), then appends, widening the header when new columns appear.
"""

from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._first_save = True

    def _check_log_dir_exists(self) -> None:
        pass  # the parent deletes metrics.csv here; a resumed run continues it

    def _existing_rows(self) -> tuple[list[str], list[dict]]:
        if not os.path.isfile(self.metrics_file_path):
            return [], []
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            return list(reader.fieldnames or []), list(reader)

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        if not self._first_save and not new_keys:
            with open(self.metrics_file_path, "a", newline="") as file:
                csv.DictWriter(file, fieldnames=self.metrics_keys).writerows(self.metrics)
            self.metrics = []
            return
        # First write of this process, or new columns: rewrite the file once.
        header, rows = self._existing_rows()
        if self._first_save and rows:
            first_new_step = min(int(m["step"]) for m in self.metrics)
            rows = [row for row in rows if row.get("step") and int(row["step"]) < first_new_step]
        self._first_save = False
        keys = sorted(set(header) | set().union(*self.metrics))
        with open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
            writer.writerows(self.metrics)
        self.metrics_keys = keys
        self.metrics = []


class ContinuingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume in the same run folder."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
