"""A run's lease: how a RUNNING run whose process is gone is told apart from one still training.

MLflow keeps a run RUNNING until someone ends it, and a process killed with SIGKILL (the OOM
killer, a preempted machine, a lost node) ends nothing. So while :meth:`MlflowRun.lifecycle
<pyrovae.run.tracking.MlflowRun.lifecycle>` holds a run open, a daemon thread renews the tag
``pyrovae.lease``::

    {"host": "node-3", "pid": 4242, "started": 1765092000.5, "until": 1765092090.0}

every :data:`RENEW_EVERY_S` seconds, ``until`` being :data:`LEASE_S` seconds ahead. A RUNNING run
is **stale** when its lease expired, or when it was taken on this host by a process that is gone
(checked at once: its pid no longer names a live process started at ``started``). Commands that
touch runs (``resume``, ``evaluate``, ``compare``, ``ui``) end stale runs KILLED with the tag
``pyrovae.stale`` saying why, so a store never shows a dead job as training; ``pyrovae resume``
then continues the run from its last checkpoint. A RUNNING run without a lease (written by
another tool, or by pyrovae before 0.3) is left as it is: nothing tells whether it is alive.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import psutil

#: seconds a lease lasts without renewal (``PYROVAE_LEASE_S`` overrides it)
LEASE_S = float(os.environ.get("PYROVAE_LEASE_S", "90"))
#: seconds between renewals: three renewals may fail before the lease runs out
RENEW_EVERY_S = LEASE_S / 4
LEASE_TAG = "pyrovae.lease"
STALE_TAG = "pyrovae.stale"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a process on a host, and until when (seconds since the epoch)."""

    host: str
    pid: int
    started: float
    until: float

    @classmethod
    def this_process(cls, lasting: float = LEASE_S) -> Holder:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(), time.time() + lasting)

    def text(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def parse(cls, text: str | None) -> Holder | None:
        try:
            return cls(**json.loads(text)) if text else None
        except (ValueError, TypeError):
            return None

    def gone(self, now: float) -> str:
        """Why this holder no longer holds its run ('' while it may)."""
        if self.host == socket.gethostname() and not _alive(self.pid, self.started):
            return f"its process {self.pid} on {self.host} is gone"
        if now > self.until:
            return f"its process {self.pid} on {self.host} stopped renewing its lease {now - self.until:.0f} s ago"
        return ""


def _alive(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        # a reused pid names a process started later; a zombie has exited
        return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # NoSuchProcess, AccessDenied on another user's process: treat as not ours
        return False


class Lease:
    """Renew ``pyrovae.lease`` on ``run_id`` in a daemon thread while the ``with`` block runs."""

    def __init__(self, client, run_id: str, every: float = RENEW_EVERY_S):
        self.client, self.run_id, self.every = client, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="pyrovae-lease", daemon=True)

    def renew(self) -> None:
        self.client.set_tag(self.run_id, LEASE_TAG, Holder.this_process().text())

    def _renew(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.renew()
            except Exception:  # a store that hiccups: the next renewal tries again; the lease outlasts three
                pass

    def __enter__(self) -> Lease:
        self.renew()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def stale_reason(run, now: float | None = None) -> str:
    """Why the MLflow ``run`` (an ``mlflow.entities.Run``) is RUNNING with no live process ('' if not)."""
    if run.info.status != "RUNNING":
        return ""
    holder = Holder.parse(run.data.tags.get(LEASE_TAG))
    return holder.gone(time.time() if now is None else now) if holder else ""


def end_stale(client, run, say: bool = True) -> str:
    """End ``run`` KILLED if it is stale, with the reason in ``pyrovae.stale``, and say so unless
    ``say`` is false (``resume``, continuing that very run, says it in its own line); the reason
    ('' if not)."""
    reason = stale_reason(run)
    if reason:
        run_id = run.info.run_id
        client.set_tag(run_id, STALE_TAG, f"left RUNNING: {reason}; ended KILLED by pyrovae")
        client.set_terminated(run_id, "KILLED")
    if reason and say:
        logging.getLogger("pyrovae").warning(
            f"run '{run_id}' was left RUNNING ({reason}); ended it KILLED: 'pyrovae resume {run_id}' continues it"
        )
    return reason


def end_stale_runs(client, experiment_ids: list[str] | None = None) -> list[str]:
    """End every stale run of ``experiment_ids`` (default: the whole store); their ids."""
    if experiment_ids is None:
        from mlflow.entities import ViewType

        experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiment_ids:
        return []
    running = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=10_000)
    return [run.info.run_id for run in running if end_stale(client, run)]
