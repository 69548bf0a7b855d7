"""The CLI's error handling: LoraLabError and its exit status, and the last-resort mappings of an unwritable
output and of Ctrl-C to one line."""
import errno

import pytest

from loralab.cli import main as cli
from loralab.cli import budget_cmd
from loralab.training.trainer import TrainingInterrupted


def _raising(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc, status, line", [
    (OSError(errno.EROFS, "Read-only file system", "/data/out/model.bin"), 2,
     "loralab budget: error: cannot write /data/out/model.bin: Read-only file system; choose a writable output location"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out"), 2,
     "loralab budget: error: no space left on device while writing /data/out; free some space or choose an output "
     "on another disk"),
    (KeyboardInterrupt(), 130, "loralab budget: interrupted"),
    (TrainingInterrupted("stopped by SIGTERM at step 3 of 9; ...", 143), 143,
     "loralab budget: error: stopped by SIGTERM at step 3 of 9; ..."),
])
def test_errors_that_are_not_bugs_are_one_line(monkeypatch, capsys, exc, status, line):
    monkeypatch.setattr(budget_cmd, "run", _raising(exc))
    assert cli.main(["budget", "--model", "minilm"]) == status
    assert capsys.readouterr().err.strip() == line


def test_other_os_errors_stay_visible_as_bugs(monkeypatch):
    monkeypatch.setattr(budget_cmd, "run", _raising(OSError(errno.EIO, "Input/output error", "/dev/sdz")))
    with pytest.raises(OSError, match="Input/output error"):
        cli.main(["budget", "--model", "minilm"])
