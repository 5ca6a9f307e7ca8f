"""MLflow at the edge: the store, one run per training, and a trainer callback that logs.

The default store is ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts under
``<cwd>/mlruns/artifacts/`` (MLflow 3.17 refuses a plain ``./mlruns`` file store: DESIGN.md,
fact 9). ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` override it, e.g. an
``http://127.0.0.1:5000`` server. Nothing else in pyrovae imports mlflow for training.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import torch
from mlflow.tracking import MlflowClient

from pyrovae import figures
from pyrovae.config import flatten, to_toml
from pyrovae.errors import UserError
from pyrovae.trainer import Callback

DEFAULT_STORE = "mlruns"


def tracking_uri(configured: str = "") -> str:
    """``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the sqlite store in ./mlruns."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    return f"sqlite:///{(Path.cwd() / DEFAULT_STORE / 'mlflow.db').resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialize schema creation and experiment creation on one sqlite store across processes.

    A fresh sqlite store races on its schema migration when several ``pyrovae train``
    processes open it at once; one file lock beside the database makes the first one create
    it and the others wait.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db.parent / ".pyrovae.lock", "a")
    except OSError as err:
        raise UserError(f"cannot write the MLflow store folder {db.parent} ({err.strerror}); "
                        f"make it writable or set MLFLOW_TRACKING_URI") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
        raise UserError(f"the MLflow tracking server at {uri} does not answer ({type(err).__name__}); "
                        f"start it, or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI") from None


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name`` on ``uri``, created (with artifacts beside the db) if new."""
    check_server(uri)
    with _store_lock(uri):
        try:
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
            db = _sqlite_path(uri)
            location = None
            if db is not None:
                slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "experiment"
                location = (db.parent / "artifacts" / slug).resolve().as_uri()
            return client.create_experiment(name, artifact_location=location)
        except Exception as err:  # sqlalchemy, MlflowException, OSError: all mean "this store is unusable"
            first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot use the MLflow store {uri}: {first_line}; "
                            f"check the path/permissions or set MLFLOW_TRACKING_URI") from None


def log_params(config: dict) -> None:
    """Every config value, flattened to dotted keys; lists as their TOML text."""
    params = {k: (str(v) if isinstance(v, list) else v) for k, v in flatten(config).items()}
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow's batch limit
        mlflow.log_params(dict(items[start:start + 100]))


def unseeded_run_name() -> str:
    """MLflow's random run name (``adjective-animal-123``) drawn apart from Python's ``random``:
    training seeds that first, so MLflow's own pick named every run with one seed alike."""
    from mlflow.utils.name_utils import _generate_random_name

    state = random.getstate()
    try:
        random.seed()  # from the OS
        return _generate_random_name()
    finally:
        random.setstate(state)  # training's Python RNG stream is left as it was


@contextmanager
def start_run(config: dict, tags: dict | None = None, run_id: str | None = None,
              parent_run_id: str | None = None, system_metrics: bool = True) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run: FINISHED on success, KILLED on Ctrl-C, FAILED (with the reason) on error.

    A new run gets the flat params and ``config.toml``; ``run_id`` reopens an existing run
    (``pyrovae resume``): its params stay, its metrics continue, and MLflow's system metrics
    (CPU, memory; GPU with ``pynvml``) continue at their next step.
    """
    uri = tracking_uri(config["mlflow"]["tracking_uri"])
    mlflow.set_tracking_uri(uri)
    exp_id = experiment_id(uri, config["mlflow"]["experiment"])
    name = None if run_id else (config["mlflow"]["run_name"] or unseeded_run_name())
    run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id, run_name=name, tags=tags,
                           parent_run_id=parent_run_id, nested=parent_run_id is not None,
                           log_system_metrics=system_metrics)
    try:
        if run_id is None:
            log_params(config)
            mlflow.log_text(to_toml(config), "config.toml")
        yield run
    except KeyboardInterrupt as err:
        mlflow.set_tag("pyrovae.stopped", str(err) or "interrupted by the user")
        mlflow.end_run("KILLED")
        raise
    except BaseException as err:
        mlflow.set_tag("pyrovae.error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def log_weights(vae: torch.nn.Module, name: str = "final") -> None:
    """The module's ``state_dict`` and data shape as ``weights/<name>.pt`` (loadable with weights_only)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt"
        state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
        torch.save({"state_dict": state, "data_shape": list(vae.data_shape)}, path)
        mlflow.log_artifact(str(path), "weights")


class MlflowLogger(Callback):
    """Logs each epoch's metrics (one batch, ``step = epoch``) and pictures; at the end the test
    metrics, the final weights and the logged model ``model``; at the start the data sets.

    Pictures per epoch (MLflow's step slider shows them changing): ``reconstructions``,
    ``prior_samples`` and ``latent`` (the decoded manifold for a 2-D latent, else posterior
    means in 2-D) for image data; ``kl_per_dimension`` where q and p factorize; ``loss_curves``.
    Each epoch also logs ``log/seconds``, the time all of this took. ``model_config`` (the
    ``[model]`` section) is needed to log the model; without it no model is logged.
    """

    def __init__(self, model_config: dict | None = None, images: bool = True, image_seed: int = 0,
                 latent_points: int = 1000):
        self.model_config = model_config
        self.images = images
        self.image_seed = image_seed
        self.latent_points = latent_points
        self._kl_available: bool | None = None

    def on_train_begin(self, trainer) -> None:
        if trainer.epoch == 0:  # a resumed run logged its inputs when it started
            log_datasets(trainer.splits)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        started = time.perf_counter()
        mlflow.log_metrics(metrics, step=epoch)
        if self.images:
            for key, image in self.pictures(trainer):
                mlflow.log_image(image, key=key, step=epoch)
        mlflow.log_metric("log/seconds", time.perf_counter() - started, step=epoch)

    def pictures(self, trainer) -> Iterator[tuple[str, "np.ndarray"]]:
        from pyrovae.estimators.diagnostics import has_kl_per_dimension, kl_per_dimension

        vae, splits, seed = trainer.vae, trainer.splits, self.image_seed
        val = splits.split("val")[: self.latent_points]
        if splits.is_image:
            yield "reconstructions", figures.reconstruction_grid(vae, val[:16], seed)
            yield "prior_samples", figures.prior_sample_grid(vae, 64, seed)
        if splits.is_image and vae.latent_dim == 2:
            yield "latent", figures.latent_manifold_grid(vae)
        else:
            yield "latent", figures.latent_scatter(vae, val, splits.labels("val"), seed)
        if self._kl_available is None:
            self._kl_available = has_kl_per_dimension(vae, val)
        if self._kl_available:
            yield "kl_per_dimension", figures.kl_per_dimension_chart(kl_per_dimension(vae, val))
        yield "loss_curves", figures.loss_curves(trainer.history)

    def on_train_end(self, trainer, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=trainer.epoch)
        log_weights(trainer.vae)
        if self.model_config is not None:
            from pyrovae.logged_model import log_vae

            log_vae(trainer.vae, self.model_config, "model", step=trainer.epoch)


def log_datasets(splits) -> None:
    """The training and validation sets as MLflow dataset inputs: name, source, digest and shape
    profile (MLflow stores those, not the arrays)."""
    import warnings

    import mlflow.data

    for split, context in (("train", "training"), ("val", "validation")):
        labels = splits.labels(split)
        with warnings.catch_warnings():  # a descriptive source (synthetic data) is not a path
            warnings.simplefilter("ignore")
            dataset = mlflow.data.from_numpy(
                splits.split(split).cpu().numpy(), targets=None if labels is None else labels.cpu().numpy(),
                source=splits.info.get("source", splits.name), name=f"{splits.name}-{split}")
        mlflow.log_input(dataset, context=context)


def load_run_config(run_id: str) -> dict:
    """The resolved config a run logged (``config.toml``), resolved again against this pyrovae."""
    import tomllib

    from pyrovae.config import over_defaults

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.toml")
    except Exception as err:
        raise UserError(f"cannot read config.toml of run '{run_id}' from {mlflow.get_tracking_uri()} "
                        f"({type(err).__name__}); check the run id and MLFLOW_TRACKING_URI") from None
    return over_defaults(tomllib.loads(text))  # keys added since the run get their defaults


def load_vae(run_id: str, weights: str = "final", device: str | torch.device = "cpu"):
    """Rebuild a run's VAE from its config and ``weights/<weights>.pt`` (no pickled code is run)."""
    from pyrovae.vae import build_vae

    config = load_run_config(run_id)
    try:
        local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/weights/{weights}.pt")
        saved = torch.load(local, map_location=device, weights_only=True)
    except Exception as err:
        raise UserError(f"cannot load weights/{weights}.pt of run '{run_id}' ({type(err).__name__}: {err}); "
                        f"did the run finish?") from None
    vae = build_vae(config["model"], tuple(saved["data_shape"])).to(device)
    vae.load_state_dict(saved["state_dict"])
    return vae, config
