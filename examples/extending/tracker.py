"""Recipe: a tracker — where `loralab train --report-to NAME` sends its metrics. Copy this file, rename the
class and the name, and write `open`, `log_scalars`, `flush`, `close`.

The toy appends every logged value to a CSV file in the run's folder: step, name, value, wall time.
Run: python examples/extending/tracker.py
"""
import csv
import tempfile
from pathlib import Path

from loralab.training.tracking import REPORTERS, Reporter, register_reporter


class CsvReporter(Reporter):
    requires = None                 # the package it imports, checked before the run starts (None: none)

    def open(self) -> None:
        self.path = Path(self.folder) / "metrics.csv"
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)

    def log_scalars(self, step: int, values: dict[str, float], walltime: float) -> None:
        for name, value in values.items():
            self.writer.writerow([step, name, value, walltime])

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def demo() -> list[list[str]]:
    """Registers the tracker as "csv" for the demo only, logs two steps through the registry, returns the rows."""
    with REPORTERS.scoped(), tempfile.TemporaryDirectory() as folder:
        register_reporter("csv")(CsvReporter)
        reporter = REPORTERS.lookup("csv")(Path(folder), config={}, config_text="", run_name="demo", start_step=1)
        reporter.log_scalars(1, {"train/loss": 0.7}, walltime=0.0)
        reporter.log_scalars(2, {"train/loss": 0.5, "eval/accuracy": 0.8}, walltime=1.0)
        reporter.close()
        with open(Path(folder) / "metrics.csv", encoding="utf-8") as fh:
            return list(csv.reader(fh))


if __name__ == "__main__":
    for row in demo():
        print(*row)
