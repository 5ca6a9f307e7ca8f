"""Where a search's trials are kept (an Optuna study) and what each worker process is told (:class:`Spec`).

The default storage is an Optuna journal file beside the sqlite MLflow store, which the processes of
one machine share under a file lock; a database URL (``postgresql://...``, ``sqlite:///...``) is a
study that workers on several machines join.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from pyrovae.errors import UserError, first_line
from pyrovae.run.tracking import sqlite_path


@dataclass
class Spec:
    """What every worker process needs (pickled to spawned workers)."""

    config: str | None
    overrides: list[str]
    space: dict[str, dict]
    trials: int
    storage: str
    study: str
    pruner: Any
    objective: str
    seed: int
    epochs: int | str
    uri: str
    progress: bool = False
    threads: int = 1
    parent_run_id: str = ""
    log_level: int | None = None


def default_storage(uri: str) -> str:
    """An Optuna journal file beside the sqlite MLflow store (else ./mlruns): the processes of one machine share it."""
    db = sqlite_path(uri)
    return str((db.parent if db else Path.cwd() / "mlruns") / "optuna-journal.log")


def shown(storage: str) -> str:
    """``storage`` without its password, for tags and messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", storage)


def storage_lock(storage: str):
    """A file lock beside a storage file of this machine (journal, sqlite), so claiming a trial is atomic;
    a database server has none (:func:`claim` checks after asking instead)."""
    path = sqlite_path(storage) if storage.startswith("sqlite:///") else None if "://" in storage else Path(storage)
    return FileLock(f"{path}.pyrovae.lock") if path else contextlib.nullcontext()


def make_pruner(pruner: Any, epochs: int | str):
    """``median`` (Optuna's defaults: after 5 complete trials), ``hyperband`` (1 to ``epochs``), ``none``; or one."""
    import optuna

    if not isinstance(pruner, str):
        return pruner
    return {"median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner,
            "hyperband": lambda: optuna.pruners.HyperbandPruner(max_resource=epochs)}[pruner]()  # fmt: skip


def open_study(spec: Spec, worker: int):
    """The study, created if new; one line when its storage cannot be opened or it searched another space."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with storage_lock(spec.storage):
        try:
            if "://" in spec.storage:
                sqlite = {"connect_args": {"timeout": 60}} if spec.storage.startswith("sqlite") else None
                url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", spec.storage)  # any SQLAlchemy's default
                storage = optuna.storages.RDBStorage(url, engine_kwargs=sqlite)
            else:
                Path(spec.storage).parent.mkdir(parents=True, exist_ok=True)
                storage = optuna.storages.JournalStorage(JournalFileBackend(spec.storage))
            study = optuna.create_study(storage=storage, study_name=spec.study, load_if_exists=True,
                                        pruner=make_pruner(spec.pruner, spec.epochs))  # fmt: skip
        except ImportError:
            raise UserError(f"the study storage {shown(spec.storage)} needs its database driver: pip install it "
                            f"(psycopg2-binary for postgresql://, pymysql for mysql+pymysql://)") from None  # fmt: skip
        except Exception as err:
            raise UserError(f"cannot open the study storage {shown(spec.storage)}: {first_line(err)}; "
                            f"check the URL or path, the server and the permissions") from None  # fmt: skip
        for key, value in (("space", spec.space), ("objective", spec.objective)):
            kept = study.user_attrs.get(f"pyrovae.{key}")
            if kept is None:
                study.set_user_attr(f"pyrovae.{key}", value)
            elif kept != json.loads(json.dumps(value)):
                raise UserError(f"study '{spec.study}' in {shown(spec.storage)} was started with another {key}; "
                                f"give a new --study name, or that {key} to continue it")  # fmt: skip
    draw = random.Random(f"{spec.seed}/{worker}/{len(study.trials)}")  # workers and resumed searches draw apart
    study.sampler = optuna.samplers.TPESampler(seed=draw.randrange(2**32))
    return study
