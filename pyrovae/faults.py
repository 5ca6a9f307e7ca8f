"""What stops a training run early, and how: signals and non-finite losses.

SIGINT (Ctrl-C) and SIGTERM do not kill the process mid-step: :class:`StopOnSignals` records
the signal, the trainer finishes the step it is in, its callbacks write a checkpoint of that
exact position (mid-epoch included), and :class:`Interrupted` ends the MLflow run KILLED and
the process with the conventional status 128 + signal number. A second Ctrl-C while that
happens stops at once.

A NaN or infinite loss raises :class:`NonFiniteLoss` at the step where it appears, before any
checkpoint is written from the broken state, so the last checkpoint is the last good one.
"""

from __future__ import annotations

import os
import signal
import threading

from pyrovae.errors import UserError

#: test-only fault injection: the parameters are set to NaN before this (0-based) step
FAULT_NAN_STEP = "PYROVAE_TEST_NAN_AT_STEP"


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after a step; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, epoch: int, batch: int):
        self.signum, self.epoch, self.batch = signum, epoch, batch
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after batch {batch} of epoch {epoch}; "
                         f"a checkpoint of this point was written: 'pyrovae resume RUN_ID' continues")


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run ends FAILED and keeps its last good checkpoint."""

    exit_code = 1

    def __init__(self, value: float, epoch: int, batch: int, last_good_epoch: int):
        kept = (f"the last good checkpoint (epoch {last_good_epoch}) is kept" if last_good_epoch
                else "no epoch finished, so there is no checkpoint")
        super().__init__(f"the loss became {value} at epoch {epoch}, batch {batch}; training stopped and "
                         f"{kept}; try a lower train.lr or a longer KL warm-up")


class StopOnSignals:
    """While active, SIGINT/SIGTERM set ``self.signum`` instead of raising (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def injected_nan_step() -> int | None:
    value = os.environ.get(FAULT_NAN_STEP)
    return int(value) if value else None
