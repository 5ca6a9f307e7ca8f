"""A store that cannot be written any more: no space left, permission denied, a folder or database gone.

Training writes to the store at every epoch (metrics, pictures, checkpoints), so a disk that fills
up mid-run surfaces as an ``OSError`` from a copy deep inside MLflow, or as a database error from
SQLite. :func:`storage_faults` turns either into one :class:`StorageFault` line that names the path,
says what was kept and how to go on; the run ends FAILED (when the store still takes that much) and
keeps what it logged. Checkpoints are written in two slots in turn (:mod:`pyrovae.run.checkpoint`),
so a checkpoint cut short by the full disk is never the one ``pyrovae resume`` continues from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyrovae.errors import UserError, first_line

#: SQLite's words (through SQLAlchemy and MLflow) for a database it cannot write
DATABASE_FAULT = re.compile(
    r"disk is full|disk I/O error|readonly database|unable to open database|no such table|No space left",
    re.IGNORECASE,
)


class StorageFault(UserError):
    """The store could not be written; ``str()`` says where, what was kept, and how to continue."""

    exit_code = 1

    def __init__(self, where: str, run_id: str, last_checkpoint: int | None):
        self.where, self.run_id, self.last_checkpoint = where, run_id, last_checkpoint
        super().__init__()

    def __str__(self) -> str:
        if self.last_checkpoint is None:
            kept = "what it logged before is kept"
        elif self.last_checkpoint:
            kept = f"what it logged before and its last checkpoint (epoch {self.last_checkpoint}) are kept"
        else:
            kept = "what it logged before is kept (no epoch had finished: there is no checkpoint)"
        return (
            f"cannot write to the MLflow store ({self.where}); run '{self.run_id}' ends FAILED and {kept}; "
            f"free space or fix the folder, then 'pyrovae resume {self.run_id}' continues"
        )


def problem(err: BaseException, artifacts: str = "the artifact store", database: str = "the tracking database") -> str:
    """Where and why ``err`` is a storage fault ('' when it is some other error): a failed write
    names no file, so the run's artifact folder stands in for it."""
    if isinstance(err, OSError):
        return f"{err.filename or artifacts}: {err.strerror or first_line(err)}"
    if type(err).__module__.startswith(("mlflow", "sqlalchemy", "sqlite3")) and DATABASE_FAULT.search(str(err)):
        return f"{database}: {DATABASE_FAULT.search(str(err)).group(0)}"
    return ""


@contextmanager
def storage_faults(run, last_checkpoint: Callable[[], int | None] = lambda: None) -> Iterator[None]:
    """Raise a storage fault inside the block as one :class:`StorageFault` line about ``run``."""
    try:
        yield
    except Exception as err:
        where = problem(err, *_places(run))
        if not where:
            raise
        raise StorageFault(where, run.run_id, last_checkpoint()) from err


def _places(run) -> tuple[str, str]:
    """The run's artifact folder and its tracking database, as a user would look for them."""
    from urllib.parse import urlparse

    from pyrovae.run.tracking import sqlite_path

    try:
        artifacts = run.info().artifact_uri
        artifacts = urlparse(artifacts).path if artifacts.startswith("file:") else artifacts
    except Exception:  # the database is what failed
        artifacts = "the artifact store"
    return artifacts, str(sqlite_path(run.uri) or run.uri)
