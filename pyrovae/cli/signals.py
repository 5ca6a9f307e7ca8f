"""SIGTERM (``kill``, ``timeout``, a scheduler ending a job) stops a command the way Ctrl-C does.

Python's default SIGTERM ends the process at once: no ``finally`` runs, so an MLflow run held
open by the command stays RUNNING forever and a server it started keeps running. Raised as an
interrupt, it unwinds through those context managers (runs end KILLED, servers stop) and the
command exits with 128 + 15. Training has its own handler (``pyrovae.infer.faults``), which
also checkpoints. :func:`run_script` gives a script (the studies of ``experiments/``) the same.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class Terminated(KeyboardInterrupt):
    exit_code = 128 + signal.SIGTERM

    def __init__(self):
        super().__init__("stopped by SIGTERM")


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped(err: KeyboardInterrupt, program: str) -> int:
    """Say in one line why ``program`` stopped; its exit status, 130 (SIGINT) or 143 (SIGTERM).
    ``pyrovae.infer.faults.Interrupted`` says where training stopped."""
    print(f"{program}: {err or 'interrupted'}", file=sys.stderr)
    return getattr(err, "exit_code", 130)


def run_script(main: Callable[[], object]) -> None:
    """Run a script's ``main()`` until it returns, or until Ctrl-C or SIGTERM unwinds it (the
    MLflow runs it holds end KILLED, not RUNNING); then exit as :func:`stopped` says."""
    try:
        with sigterm_as_interrupt():
            main()
    except KeyboardInterrupt as err:
        sys.exit(stopped(err, Path(sys.argv[0]).name))
