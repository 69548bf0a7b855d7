"""Ctrl-C and SIGTERM during training: finish the current optimizer step, save a checkpoint, stop.

    with stop_on_signals(trainer):
        trainer.fit()          # raises TrainingInterrupted (exit status 130 / 143) after the checkpoint

The first SIGINT or SIGTERM asks the trainer to stop at the next step boundary (Trainer.request_stop); a
second Ctrl-C stops at once with KeyboardInterrupt (the last complete checkpoint stays usable, as after a
kill). Handlers can only be installed from the main thread; elsewhere this does nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from loralab.training.trainer import Trainer

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        trainer.request_stop(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
