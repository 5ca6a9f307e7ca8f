"""Empty MLflow sqlite stores for the tests, made by copying one that MLflow created.

Creating a sqlite store runs MLflow's schema migrations (about 2 s on this CPU, more under load);
the suite makes dozens. :func:`fresh_store` lets MLflow create one store per test session and
copies it, pointing its default experiment's artifacts at the new folder, as a store created
there would: the tests still read and write a real store of the installed MLflow.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="pyrovae-store-"))
    atexit.register(shutil.rmtree, folder, True)
    MlflowClient(f"sqlite:///{folder}/mlflow.db").search_experiments()  # creates and migrates it
    return folder / "mlflow.db"


def store_path(folder: Path) -> Path:
    """Where pyrovae's default store lies for a project in ``folder``."""
    return Path(folder) / "mlruns" / "mlflow.db"


def fresh_store(folder: Path) -> str:
    """The URI of :func:`store_path`, an empty store there unless one exists."""
    db = store_path(folder)
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template(), db)
        connection = sqlite3.connect(db)
        with connection:  # commits
            connection.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(db.parent / "0"),)
            )
        connection.close()
    return f"sqlite:///{db}"
