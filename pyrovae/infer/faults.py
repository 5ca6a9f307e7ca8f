"""What stops a training run early, and how: signals, non-finite losses, a lost worker.

SIGINT (Ctrl-C) and SIGTERM do not kill the process mid-step: :class:`StopOnSignals` records
the signal, the trainer finishes the step it is in, its callbacks write a checkpoint of that
exact position (mid-epoch included), and :class:`Interrupted` ends the MLflow run KILLED and
the process with the conventional status 128 + signal number. A second Ctrl-C while that
happens stops at once.

A NaN or infinite loss raises :class:`NonFiniteLoss` at the step where it appears, before any
checkpoint is written from the broken state, so the last checkpoint is the last good one.

Under torchrun, a collective that fails because another process died raises :class:`WorkerLost`
(:func:`pyrovae.infer.distributed.lost_contact`) on the survivors, one line instead of the backend's
traceback; what they do about the MLflow run is :mod:`pyrovae.run.ranks`'s job.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable

import pyro
from pyro.infer.util import is_validation_enabled

from pyrovae.errors import UserError


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after a step; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, epoch: int, batch: int):
        self.signum, self.epoch, self.batch = signum, epoch, batch
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after batch {batch} of epoch {epoch}; "
            f"a checkpoint of this point was written: 'pyrovae resume RUN_ID' continues"
        )


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the run ends FAILED and keeps its last good checkpoint."""

    exit_code = 1

    def __init__(self, value: float, epoch: int, batch: int):
        self.value, self.epoch, self.batch = value, epoch, batch
        #: the epoch of the last checkpoint written, told by whoever writes them (None: not known)
        self.last_good_epoch: int | None = None
        super().__init__()

    def __str__(self) -> str:
        if self.last_good_epoch is None:
            kept = "the parameters are those of the step before"
        elif self.last_good_epoch:
            kept = f"the last good checkpoint (epoch {self.last_good_epoch}) is kept"
        else:
            kept = "no epoch finished, so there is no checkpoint"
        return (
            f"the loss became {self.value} at epoch {self.epoch}, batch {self.batch}; training stopped and "
            f"{kept}; try a lower train.lr or a longer KL warm-up"
        )


class WorkerLost(UserError):
    """A collective failed: another process of the torchrun job ended or stopped answering.

    Raised on every surviving rank instead of the backend's ``RuntimeError`` (gloo's "Connection
    closed by peer", NCCL's errors, a timeout); whoever holds the MLflow run fills in
    :attr:`run_id`, :attr:`fate` and :attr:`last_good_epoch`, so the one line says what was kept.
    """

    exit_code = 1

    def __init__(self, rank: int, size: int, why: str):
        self.rank, self.size, self.why = rank, size, why
        self.run_id, self.fate = "", "ends FAILED"
        self.last_good_epoch: int | None = None
        super().__init__()

    @property
    def lost(self) -> str:
        others = [r for r in range(self.size) if r != self.rank]
        return f"rank {others[0]}" if len(others) == 1 else "another rank"

    def __str__(self) -> str:
        text = (
            f"rank {self.rank} of {self.size} lost contact with {self.lost} ({self.why}): that process ended or "
            f"stopped answering (torchrun's report names it and its exit code)"
        )
        if not self.run_id:
            return text
        if self.last_good_epoch is None:
            kept = "its last checkpoint is kept"
        elif self.last_good_epoch:
            kept = f"its last checkpoint (epoch {self.last_good_epoch}) is kept"
        else:
            kept = "no epoch had finished"
        return f"{text}; run '{self.run_id}' {self.fate} and {kept}: 'pyrovae resume {self.run_id}' continues"


class StopRequest:
    """A stop a signal asked for (:meth:`request`), and the stop every rank agreed on at the last
    collective (:meth:`agree`): never a local signal that arrived after it, or the ranks would part
    ways. A rank stopped by another's vote reports SIGTERM (torchrun's)."""

    def __init__(self):
        self.signum: int | None = None
        self.agreed = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum = signum

    def agree(self, any_rank: bool) -> None:
        self.agreed = any_rank
        if any_rank and self.signum is None:
            self.signum = signal.SIGTERM


class StopOnSignals:
    """While active, SIGINT/SIGTERM call ``request_stop(signum)`` instead of raising (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, request_stop: Callable[[int], None]):
        self.request_stop = request_stop
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        self.request_stop(signum)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def validate_first_step_only(batches: Iterable):
    """Yield ``batches`` with Pyro's distribution checks on for the first one only.

    The first step of an epoch runs every check (bad data or a broken module fails loudly
    there); later steps skip them: with ``Trace_ELBO`` they cost 16 host synchronisations a
    step. The caller's setting is restored when the loop ends, breaks or raises.
    """
    was_enabled = is_validation_enabled()
    try:
        for i, batch in enumerate(batches):
            if i == 1:
                pyro.enable_validation(False)
            yield batch
    finally:
        pyro.enable_validation(was_enabled)
