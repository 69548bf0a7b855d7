"""SIGINT/SIGTERM handlers around training: the first asks for a stop at the step boundary, a second Ctrl-C
stops at once, and the previous handlers come back."""
from __future__ import annotations

import os
import signal

import pytest

from loralab.training.stopping import stop_on_signals


class _FakeTrainer:
    stop_signal = None

    def request_stop(self, signum):
        self.stop_signal = signum


def test_first_signal_requests_a_stop_second_ctrl_c_interrupts_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = _FakeTrainer()
    with stop_on_signals(trainer):
        os.kill(os.getpid(), signal.SIGTERM)
        assert trainer.stop_signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before
