"""MLflow at the edge: the store, and :class:`MlflowRun`, the one adapter everything logs through.

The default store is ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts under
``<cwd>/mlruns/artifacts/`` (MLflow 3.17 refuses a plain ``./mlruns`` file store unless told
otherwise). ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` override it, e.g. an
``http://127.0.0.1:5000`` server.

:class:`MlflowRun` holds an ``MlflowClient`` and a run id, and every call names both. The only
global MLflow state pyrovae touches -- the fluent active run that ``mlflow.pytorch.log_model``,
``mlflow.log_input`` and MLflow's system-metrics sampler need -- is opened and closed inside
:meth:`MlflowRun.lifecycle`, which also puts the previous tracking URI back.

MLflow is imported on first use (:func:`mlflow_module`), so the modules of ``run/`` that never talk
to it (config, checkpoints, rebuilding a model) stay as light as the model layer, and its INFO lines
and artifact download bars are quiet unless the user configured them; only public MLflow APIs are used.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from pyrovae.errors import UserError, first_line

DEFAULT_STORE = "mlruns"


def mlflow_module():
    """``mlflow``, imported at first use with its chatter quiet: INFO lines (schema creation, system
    metrics) and one progress bar per artifact download, unless the environment or the user's logging
    asked for them (``MLFLOW_LOGGING_LEVEL``, ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``, a level set on
    the ``mlflow`` logger)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    if os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING" and logging.getLogger("mlflow").level < logging.WARNING:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow


def client(uri: str):
    """An ``MlflowClient`` of the store ``uri``."""
    mlflow_module()
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def tracking_uri(configured: str = "") -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the sqlite store in ./mlruns."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return f"sqlite:///{(Path.cwd() / DEFAULT_STORE / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialize schema and experiment creation on one sqlite store across processes.

    A fresh sqlite store races on its schema migration when several ``pyrovae train``
    processes open it at once; one file lock beside the database makes the first one create
    it and the others wait.
    """
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(db.parent / ".pyrovae.lock")
        lock.acquire()
    except OSError as err:
        raise UserError(
            f"cannot write the MLflow store folder {db.parent} ({err.strerror}); "
            f"make it writable or set MLFLOW_TRACKING_URI"
        ) from None
    try:
        yield
    finally:
        lock.release()


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds when an HTTP tracking server does not answer.

    MLflow's own client retries with back-off for minutes before it gives up; one health
    request with a short timeout tells the user at once.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as err:
        raise UserError(
            f"the MLflow tracking server at {uri} does not answer ({type(err).__name__}); "
            f"start it, or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name`` on ``uri``, created (with artifacts beside the db) if new."""
    check_server(uri)
    with store_lock(uri):
        try:
            store = client(uri)
            found = store.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            db = sqlite_path(uri)
            location = None
            if db is not None:
                slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "experiment"
                location = (db.parent / "artifacts" / slug).resolve().as_uri()
            return store.create_experiment(name, artifact_location=location)
        except Exception as err:  # sqlalchemy, MlflowException, OSError: all mean "this store is unusable"
            raise UserError(
                f"cannot use the MLflow store {uri}: {first_line(err)}; "
                f"check the path/permissions or set MLFLOW_TRACKING_URI"
            ) from None


ADJECTIVES = (
    "amber",
    "bold",
    "brisk",
    "calm",
    "clever",
    "crisp",
    "eager",
    "gentle",
    "keen",
    "lucid",
    "merry",
    "nimble",
    "quiet",
    "rapid",
    "serene",
    "sunny",
    "swift",
    "tidy",
    "vivid",
    "witty",
)
NOUNS = (
    "badger",
    "crane",
    "dolphin",
    "falcon",
    "gecko",
    "heron",
    "ibis",
    "koala",
    "lynx",
    "marten",
    "newt",
    "otter",
    "panda",
    "quail",
    "robin",
    "seal",
    "tapir",
    "viper",
    "wren",
    "yak",
)


def unseeded_run_name() -> str:
    """A run name such as ``swift-otter-417``, drawn by a generator of its own seeded from the OS:
    training seeds Python's ``random`` first, so a name drawn from it named every run of a seed alike."""
    draw = random.Random()
    return f"{draw.choice(ADJECTIVES)}-{draw.choice(NOUNS)}-{draw.randrange(1000)}"


class MlflowRun:
    """One MLflow run: ``MlflowRun.create(uri, experiment, ...)`` or ``MlflowRun(run_id, uri)``."""

    def __init__(self, run_id: str, uri: str = ""):
        self.uri = tracking_uri(uri)
        self.run_id = run_id
        self._client = None

    @property
    def client(self):
        """The store's ``MlflowClient``, made at first use (opening a sqlite store creates it)."""
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    @classmethod
    def create(
        cls, uri: str, experiment: str, run_name: str = "", tags: dict | None = None, parent_run_id: str | None = None
    ) -> MlflowRun:
        uri = tracking_uri(uri)
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        experiment_id_ = experiment_id(uri, experiment)  # creates the store under its lock: first
        run = client(uri).create_run(experiment_id_, tags=tags, run_name=run_name or unseeded_run_name())
        return cls(run.info.run_id, uri)

    @classmethod
    def create_in(cls, parent: MlflowRun, run_name: str, tags: dict | None = None) -> MlflowRun:
        """A new child run of ``parent``, in its experiment and store."""
        tags = {**(tags or {}), "mlflow.parentRunId": parent.run_id}
        run = parent.client.create_run(parent.info().experiment_id, tags=tags, run_name=run_name)
        return cls(run.info.run_id, parent.uri)

    @classmethod
    def existing(cls, run_id: str, uri: str = "") -> MlflowRun:
        """The run whose id is (or starts with, 8 characters or more) ``run_id`` in the store
        ``uri``; one :class:`UserError` line when there is none or the prefix is ambiguous."""
        run = cls(run_id, uri)
        check_server(run.uri)
        db = sqlite_path(run.uri)
        missing = UserError(
            f"no run '{run_id}' in the MLflow store {run.uri}; check the id "
            f"(pyrovae compare, the MLflow UI) and MLFLOW_TRACKING_URI"
        )
        if len(run_id) < 8:  # the input first: no store is read for an id that could never match
            raise UserError(
                f"run id '{run_id}' is too short: give at least 8 characters (the column 'run' of pyrovae compare)"
            )
        if db is not None and not db.exists():
            raise missing
        if len(run_id) < 32:
            run.run_id = run.full_id(run_id) or ""
        try:
            run.info()
        except Exception:
            raise missing from None
        return run

    def full_id(self, prefix: str) -> str | None:
        """The one run id that starts with ``prefix`` (at least 8 characters)."""
        from mlflow.entities import ViewType

        if len(prefix) < 8:
            raise UserError(
                f"run id '{prefix}' is too short: give at least 8 characters (the column 'run' of pyrovae compare)"
            )
        experiments = [e.experiment_id for e in self.client.search_experiments(view_type=ViewType.ALL)]
        matches, token = [], None
        while experiments:
            page = self.client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
            matches += [r.info.run_id for r in page if r.info.run_id.startswith(prefix)]
            token = page.token
            if not token:
                break
        if len(matches) > 1:
            raise UserError(
                f"run id '{prefix}' is ambiguous: {len(matches)} runs start with it "
                f"({', '.join(sorted(matches)[:4])}{', ...' if len(matches) > 4 else ''}); give more characters"
            )
        return matches[0] if matches else None

    # -- reading -------------------------------------------------------------------------
    def info(self):
        return self.client.get_run(self.run_id).info

    def download(self, path: str) -> str:
        """A run artifact, downloaded; its local path."""
        return self.client.download_artifacts(self.run_id, path, tempfile.mkdtemp(prefix="pyrovae-"))

    def load_text(self, path: str) -> str:
        return Path(self.download(path)).read_text()

    @contextmanager
    def _global_uri(self) -> Iterator[None]:
        """MLflow's global tracking URI set to this run's store, and put back afterwards."""
        mlflow = mlflow_module()
        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)

    # -- writing -------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_config(self, config: dict[str, Any]) -> None:
        """A resolved config as flat params (``train.lr``, ...) and as the artifact ``config.toml``."""
        from pyrovae.run.config import flatten, to_toml

        self.log_params(flatten(config))
        self.log_text(to_toml(config), "config.toml")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_image(self, image, key: str, step: int) -> None:
        self.client.log_image(self.run_id, image, key=key, step=step)

    def log_artifact(self, local_path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), folder)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, value: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, value, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_input(self, dataset, context: str) -> None:
        """An ``mlflow.data`` dataset as an input of this run (the fluent API: :meth:`lifecycle` holds the run)."""
        mlflow = mlflow_module()
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError("log_input needs the run's lifecycle() to be open")
        mlflow.log_input(dataset, context=context)

    def log_model(self, module, name: str, step: int, **options: Any) -> None:
        """``mlflow.pytorch.log_model`` into this run (it logs to the fluent active run only:
        :meth:`lifecycle` holds that open)."""
        mlflow_module()
        import mlflow.pytorch

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError("log_model needs the run's lifecycle() to be open")
        mlflow.pytorch.log_model(module, name=name, step=step, **options)

    # -- the run's life ------------------------------------------------------------------
    @contextmanager
    def lifecycle(
        self,
        system_metrics: bool = True,
        final_status: str = "FINISHED",
        error_status: str = "FAILED",
        error_tag: str = "pyrovae.error",
    ) -> Iterator[MlflowRun]:
        """Hold the run open: ``final_status`` on success, KILLED on Ctrl-C, ``error_status``
        (with the reason in the tag ``error_tag``) on any other error. MLflow's system metrics
        (CPU, memory) are sampled meanwhile and continue at their next step when a run is reopened."""
        with self._global_uri():
            yield from self._held_open(system_metrics, final_status, error_status, error_tag)

    def _held_open(self, system_metrics, final_status, error_status, error_tag) -> Iterator[MlflowRun]:
        from pyrovae.run.lease import Lease

        mlflow = mlflow_module()
        outer = mlflow.active_run()
        mlflow.start_run(run_id=self.run_id, nested=outer is not None, log_system_metrics=system_metrics)
        try:
            with Lease(self.client, self.run_id):  # tells a live run from one whose process was killed
                yield self
        except KeyboardInterrupt as err:
            stopped = "KILLED" if error_status == "FAILED" else error_status
            self._end(stopped, "pyrovae.stopped", str(err) or "interrupted by the user")
            raise
        except BaseException as err:
            self._end(error_status, error_tag, f"{type(err).__name__}: {err}"[:5000])
            raise
        else:
            mlflow.end_run(final_status)

    def _end(self, status: str, tag: str, why: str) -> None:
        """End the run ``status`` with ``why`` in ``tag``; a store that cannot take it any more (a full
        disk) leaves the run RUNNING with a lease that runs out, so the next command ends it."""
        mlflow = mlflow_module()
        failures = []
        for write in (lambda: self.set_tags({tag: why}), lambda: mlflow.end_run(status)):  # end_run pops the run first
            try:
                write()
            except Exception as err:
                failures.append(first_line(err, 200))
        if failures:
            logging.getLogger("pyrovae").warning(
                f"could not mark run '{self.run_id}' {status} ({failures[-1]}); the next pyrovae command "
                f"that reads the store will, once its lease runs out"
            )
