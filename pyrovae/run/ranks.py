"""What the processes of a torchrun job do about each other's faults, so no run is left RUNNING.

Rank 0 alone writes to MLflow; it hands the run id to the other ranks (:func:`share_run_id`) as
soon as the run exists, or the line saying why it could not, which every rank then raises. What
can go wrong after that, and who ends the run:

- **a rank other than 0 dies**: rank 0's next collective fails (:class:`~pyrovae.infer.faults.WorkerLost`)
  or torchrun's SIGTERM stops it; rank 0 ends the run FAILED or KILLED with the reason;
- **rank 0 dies**: the survivors' collectives fail or SIGTERM arrives; each waits up to
  :data:`ABANDON_WAIT_S` for rank 0 to end the run (:func:`end_if_abandoned`) and, when rank 0's
  process is gone (its lease: :mod:`pyrovae.run.lease`) or the wait is over, ends it KILLED with the
  tag ``pyrovae.stale`` naming the rank that ended it and what it saw;
- **a stop that cannot finish**: a rank whose SIGTERM cannot be honoured at a step's end (it waits
  on a collective with a dead peer, or is deep in an evaluation) would be SIGKILLed by torchrun 30 s
  later with its run RUNNING; :class:`Watchdog` ends the run and the process after :data:`STOP_GRACE_S`.

When every process of a job dies at once (a lost machine), nobody ends the run; its lease runs out
and the next command that touches it ends it (:mod:`pyrovae.run.lease`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from pyrovae.errors import UserError, first_line
from pyrovae.infer import distributed
from pyrovae.infer.distributed import World
from pyrovae.infer.faults import StopOnSignals, WorkerLost
from pyrovae.run import lease
from pyrovae.run.tracking import client, sqlite_path

#: how long a surviving rank waits for rank 0 to end the run itself
ABANDON_WAIT_S = 8.0
#: how long a SIGTERMed rank may take to stop before it ends its run and exits (torchrun waits 30 s)
STOP_GRACE_S = 20.0


def share_run_id(world: World, run_id: str = "", error: str = "") -> str:
    """Rank 0's run id on every rank; a :class:`UserError` on every rank when rank 0 had ``error``."""
    if world.distributed:
        run_id, error = distributed.broadcast_object((run_id, error))
    if error:
        raise UserError(error)
    return run_id


def end_if_abandoned(uri: str, run_id: str, why: str, wait_s: float = ABANDON_WAIT_S) -> bool:
    """Wait for rank 0 to end run ``run_id``; end it KILLED if rank 0 is gone or ``wait_s`` ran out.

    Returns whether this process ended it. Never raises: a store this rank cannot read (another
    machine's sqlite file) leaves the run to its lease.
    """
    db = sqlite_path(uri)
    if db is not None and not db.exists():  # not this machine's store: opening it would create one
        return False
    try:
        store = client(uri)
        deadline, gone = time.monotonic() + wait_s, ""
        while True:
            run = store.get_run(run_id)
            if run.info.status != "RUNNING":
                return False
            holder = lease.Holder.parse(run.data.tags.get(lease.LEASE_TAG))
            gone = holder.gone(time.time()) if holder else ""
            if gone or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        because = gone or f"rank 0 did not end it within {wait_s:.0f} s"
        store.set_tag(run_id, lease.STALE_TAG, f"{why}; rank 0, which logs this run, was lost: {because}")
        store.set_terminated(run_id, "KILLED")
        return True
    except Exception:
        return False


class Watchdog:
    """After a SIGTERM, give the rank :data:`STOP_GRACE_S` to stop; then end the run and the process."""

    def __init__(self, world: World, uri: str, run_id: str):
        self.world, self.uri, self.run_id = world, uri, run_id
        self._timer: threading.Timer | None = None

    def arm(self, signum: int) -> None:
        if self._timer is None:
            self._timer = threading.Timer(STOP_GRACE_S, self._fire, args=(signum,))
            self._timer.daemon = True
            self._timer.start()

    def _fire(self, signum: int) -> None:
        why = (
            f"rank {self.world.rank} of {self.world.size} was asked to stop (signal {signum}) and could not "
            f"within {STOP_GRACE_S:.0f} s: another process stopped answering"
        )
        ended = False
        if self.run_id:
            ended = self._end(why) if self.world.is_main else end_if_abandoned(self.uri, self.run_id, why, wait_s=0.0)
        print(f"pyrovae: {why}" + (f"; run '{self.run_id}' ended KILLED" if ended else ""), file=sys.stderr, flush=True)
        os._exit(128 + signum)  # the main thread is stuck in a collective: nothing else would end it

    def _end(self, why: str) -> bool:
        try:
            store = client(self.uri)
            if store.get_run(self.run_id).info.status == "RUNNING":
                store.set_tag(self.run_id, "pyrovae.stopped", why)
                store.set_terminated(self.run_id, "KILLED")
                return True
        except Exception as err:
            print(f"pyrovae: could not end run '{self.run_id}' ({first_line(err, 200)})", file=sys.stderr)
        return False


def fit(trainer, run_id: str = "", uri: str = "") -> dict[str, float]:
    """``trainer.fit()`` with SIGINT and SIGTERM turned into a stop after the current step (so the
    last checkpoint is that exact point and the run ends KILLED: :mod:`pyrovae.infer.faults`), a
    lost peer into :class:`~pyrovae.infer.faults.WorkerLost`, and the run of ``run_id`` ended by a
    surviving rank when rank 0 is lost. A rank of several that stops ignores SIGTERM from then on:
    torchrun sends it to every survivor, and it must not cut short the ending of the run."""
    world = trainer.world
    watchdog = Watchdog(world, uri, run_id) if world.distributed else None

    def request_stop(signum: int) -> None:
        trainer.request_stop(signum)
        if watchdog is not None:
            watchdog.arm(signum)

    try:
        with StopOnSignals(request_stop), distributed.lost_contact(world):
            return trainer.fit()
    except BaseException as err:
        if world.distributed:
            _ignore_sigterm()  # stopping already: torchrun's SIGTERM must not cut short ending the run
        if world.distributed and not world.is_main and run_id and isinstance(err, (WorkerLost, KeyboardInterrupt)):
            seen = str(err) if isinstance(err, WorkerLost) else f"rank {world.rank} of {world.size}: {err}"
            ended = end_if_abandoned(uri, run_id, first_line(seen, 300))
            if isinstance(err, WorkerLost):
                err.run_id, err.fate = run_id, ("was ended KILLED by this rank" if ended else "was ended by rank 0")
        raise


def _ignore_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
