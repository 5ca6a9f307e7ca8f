"""One straight data flow: config or Python objects -> data -> VAE -> MLflow run -> train -> test.

:func:`train` is the one way a training is tracked, from Python (``train(vae, data, epochs=5)``)
or from a config (:func:`train_config`, what ``pyrovae train`` calls): both log the same
resolved config, so ``pyrovae evaluate``, ``sample`` and ``resume`` work on either. Everything a
user can get wrong (the config, the data, a module's shapes, a class that could not be imported
again) is checked *before* the MLflow run starts, so bad input leaves no run behind; once it has
started, any failure ends it FAILED with the reason.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

from pyrovae import __version__
from pyrovae.data import Splits, load_data
from pyrovae.devices import describe
from pyrovae.errors import UserError
from pyrovae.infer import distributed
from pyrovae.infer.callbacks import Callback
from pyrovae.infer.distributed import World, init_from_env
from pyrovae.infer.faults import NonFiniteLoss, StopOnSignals
from pyrovae.infer.interface import check_data_support
from pyrovae.infer.settings import TrainSettings
from pyrovae.infer.traces import takes_labels
from pyrovae.infer.trainer import Trainer
from pyrovae.model.models import build_model, loggable
from pyrovae.run import checkpoint
from pyrovae.run.config import MlflowSettings, parse_override, resolve, to_toml
from pyrovae.run.logger import MlflowLogger
from pyrovae.run.restore import run_config
from pyrovae.run.tracking import MlflowRun, experiment_id, tracking_uri
from pyrovae.run.tracking import client as tracking_client

#: what a run says as it goes (resumed from where, reseeded): ``pyrovae`` prints it, Python's logging shows it
log = logging.getLogger("pyrovae")


def check_data(model, data: Splits) -> None:
    """Every split lies in the support of the model's data site, and a VAE's modules keep the
    shape contract (the rest of the model interface is checked when the trainer is built)."""
    splits = {
        name: data.evaluation_data(name) for name in ("train", "val", "test") if not (name == "train" and data.binarize)
    }  # dynamic binarization: binary by construction
    if hasattr(model, "check_contract"):  # a VAE names the module that breaks the shape contract
        model.check_contract(data.evaluation_data("val")[:4])
    labelled = takes_labels(model.model)
    check_data_support(model, splits, {n: data.labels(n) if labelled else None for n in splits})


def prepare(config: dict):
    """Join torchrun's processes (if any), seed, load the data onto the device, build the model."""
    _, device = init_from_env(config["train"]["device"])
    pyro.set_rng_seed(config["train"]["seed"])
    data = load_data(config["data"], device)
    model = build_model(config["model"], data.data_shape, data.num_classes).to(device)
    return model, data


def fit(trainer: Trainer) -> dict[str, float]:
    """``trainer.fit()`` with SIGINT and SIGTERM turned into a stop after the current step, so that
    the last checkpoint is that exact point and the run ends KILLED (:mod:`pyrovae.infer.faults`)."""
    with StopOnSignals(trainer.request_stop):
        return trainer.fit()


def run_tags(device: torch.device) -> dict[str, str]:
    world = World.current()
    tags = {
        "pyrovae.version": __version__,
        "torch.version": torch.__version__,
        "pyro.version": pyro.__version__,
        "device": describe(device),
        "torch.threads": str(torch.get_num_threads()),
        "host.python": platform.python_version(),
        "distributed.world_size": str(world.size),
    }
    if world.distributed:
        tags["distributed.backend"] = world.backend
        tags["devices"] = ", ".join(distributed.gather_objects(describe(device)))
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # torchrun: a restarted worker finds its run by this
        tags[ELASTIC_TAG] = os.environ["TORCHELASTIC_RUN_ID"]
    return tags


ELASTIC_TAG = "pyrovae.torchelastic_run_id"


@dataclass
class RunResult:
    """A tracked training: its MLflow run id and store, and the last value of every metric."""

    run_id: str
    tracking_uri: str
    metrics: dict[str, float] = field(default_factory=dict)


class _LastMetrics(Callback):
    def __init__(self, result: RunResult):
        self.result = result

    def on_epoch_end(self, trainer, epoch, metrics):
        self.result.metrics.update(metrics)

    def on_train_end(self, trainer, metrics):
        self.result.metrics.update(metrics)


def loggable_model_config(model) -> dict:
    """The model's resolved ``[model]`` table with every class replaced by the name a run can
    import again (one line when it cannot be)."""
    config = getattr(model, "config", None)
    if config is None:
        raise UserError(
            f"this {type(model).__name__} was built from module instances (or is not a pyrovae.Model), "
            f"so a run could not rebuild it; give its components as names, classes or "
            f"{{'name': ..., **arguments}} tables, and derive a model class of your own from pyrovae.Model"
        )
    return loggable(config)


def train(
    vae,
    data: Splits,
    *,
    tracking: MlflowSettings | Mapping | None = None,
    settings: TrainSettings | Mapping | None = None,
    evaluation: Mapping | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    parent_run_id: str | None = None,
    **train_keys: Any,
) -> RunResult:
    """Train ``vae`` (any model with the interface of :mod:`pyrovae.model.base`) on ``data`` (from
    :func:`~pyrovae.data.load_data`) into one MLflow run.

    ``tracking`` holds the ``[mlflow]`` keys (``tracking_uri``, ``experiment``, ``run_name``);
    keyword arguments are the ``[train]`` keys, ``evaluation`` the ``[eval]`` keys. Logs the
    params and ``config.toml`` a ``pyrovae train`` run logs, per-epoch metrics and pictures,
    checkpoints and the final models; returns the run id and the last metrics.
    """
    check_data(vae, data)
    if data.settings is None:
        raise UserError(
            "these data were not loaded by load_data(...), so a run could not load them again; "
            "use pyrovae.load_data (or data.name = 'arrays' for your own files)"
        )
    mlflow_settings = MlflowSettings.parse(tracking)
    trainer = Trainer(vae, data, settings=settings, evaluation=evaluation, progress=progress, **train_keys)
    config = resolve(
        {
            "data": data.settings.as_dict(),
            "model": loggable_model_config(vae),
            "train": trainer.settings.as_dict(),
            "eval": trainer.evaluation.as_dict(),
            "mlflow": mlflow_settings.as_dict(),
        }
    )
    tags = run_tags(trainer.device)  # a collective under torchrun: every rank
    if not trainer.world.is_main:  # only rank 0 talks to MLflow; every rank trains
        fit(trainer)
        return RunResult("", tracking_uri(mlflow_settings.tracking_uri))
    run = MlflowRun.create(
        mlflow_settings.tracking_uri,
        mlflow_settings.experiment,
        mlflow_settings.run_name,
        tags=tags,
        parent_run_id=parent_run_id,
    )
    with run.lifecycle():
        run.log_config(config)
        return _fit(trainer, run, config, callbacks)


def _fit(
    trainer: Trainer, run: MlflowRun, config: dict, callbacks: Sequence[Callback], best_module: dict | None = None
) -> RunResult:
    """Fit with ``callbacks``, the logger and the checkpointer, inside an open run.

    The user's callbacks run before the logger, so that what they add to an epoch's metrics (in
    ``add_metrics`` or ``on_epoch_end``) is logged with them.
    """
    result = RunResult(run.run_id, run.uri)
    checkpointer = checkpoint.Checkpointer(run, config["model"], best_module, last_epoch=trainer.epoch)
    trainer.callbacks += [
        *callbacks,
        MlflowLogger(run, config["model"], config["mlflow"]["images_every"]),
        checkpointer,
        _LastMetrics(result),
    ]
    try:
        fit(trainer)
    except NonFiniteLoss as err:
        err.last_good_epoch = checkpointer.last_epoch
        raise
    return result


def train_config(
    config: dict, progress: bool = True, callbacks: Sequence[Callback] = (), parent_run_id: str | None = None
) -> RunResult:
    """``pyrovae train``: one VAE from a resolved config (:func:`pyrovae.run.config.load`) into one run.

    A worker that torchrun restarted (``TORCHELASTIC_RESTART_COUNT > 0``) continues the run its
    first attempt started, from that run's last checkpoint, instead of opening a new one.
    """
    restarted = _restarted_run(config)
    if restarted:
        return resume(restarted, progress=progress, callbacks=callbacks)
    vae, data = prepare(config)
    return train(
        vae,
        data,
        tracking=config["mlflow"],
        settings=config["train"],
        evaluation=config["eval"],
        callbacks=callbacks,
        progress=progress,
        parent_run_id=parent_run_id,
    )


def _restarted_run(config: dict) -> str:
    """Under a torchrun restart, the id of the run this job's first attempt logged (else '')."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return ""
    world, _ = init_from_env(config["train"]["device"])
    run_id = ""
    if world.is_main:
        uri = tracking_uri(config["mlflow"]["tracking_uri"])
        client = tracking_client(uri)
        found = client.search_runs(
            [experiment_id(uri, config["mlflow"]["experiment"])],
            filter_string=f"tags.`{ELASTIC_TAG}` = '{os.environ['TORCHELASTIC_RUN_ID']}'",
        )
        run_id = found[0].info.run_id if found else ""
    return distributed.broadcast_object(run_id) if world.distributed else run_id


#: what ``pyrovae resume --set`` may change; anything else would not be the same run
RESUMABLE = ("train.epochs", "train.patience", "train.checkpoint_every", "train.device", "mlflow.tracking_uri")


def resume_config(run: MlflowRun, overrides: Sequence[str] = ()) -> dict:
    """The run's logged config with the (few) keys a resumed run may change overridden."""
    config = run_config(run)
    for text in overrides:
        keys, value = parse_override(text)
        section, key = keys[0], ".".join(keys[1:])
        config[section][key] = value
    return resolve(config)


def _check_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``{"train.epochs": 20, ...}`` from ``--set`` texts; refuse keys a resume cannot change."""
    values = {}
    for text in overrides:
        keys, value = parse_override(text)
        if ".".join(keys) not in RESUMABLE:
            raise UserError(
                f"resume cannot change '{'.'.join(keys)}' (it would not be the same run); "
                f"it can change {', '.join(RESUMABLE)}; train a new run instead"
            )
        values[".".join(keys)] = value
    return values


def _load_for_resume(run_id: str, uri: str, overrides: Sequence[str]) -> tuple[str, dict, dict, dict | None]:
    """The full id, config, last checkpoint and best weights of a run to resume; says where it goes on from."""
    run = MlflowRun.existing(run_id, uri)
    run_id = run.run_id
    config = resume_config(run, overrides)
    state = checkpoint.download(run, "last")
    epochs, changed = config["train"]["epochs"], {o.partition("=")[0].strip() for o in overrides}
    if state["stopped_early"] and state["finished"] and "train.patience" not in changed:
        raise UserError(
            f"run '{run_id}' stopped early at epoch {state['epoch']} (val/loss last improved at "
            f"epoch {state['best_epoch']}); to go on anyway: --set train.patience=0 (off) or more"
        )
    if state["finished"] and state["epoch"] >= epochs and not state["stopped_early"]:
        raise UserError(
            f"run '{run_id}' already finished its {state['epoch']} epochs; "
            f"to train longer: pyrovae resume {run_id} --set train.epochs=N (N > {state['epoch']})"
        )
    status = run.info().status
    position = state.get("mid_epoch") or state.get("partial")
    where = f"epoch {state['epoch']}" + (
        f", batch {position['batch']} of epoch {state['epoch'] + 1}" if position else ""
    )
    if status == "RUNNING":
        log.warning(
            f"run '{run_id}' was left RUNNING: its process ended without closing it (killed?); "
            f"continuing from its last checkpoint ({where}), work after that is redone"
        )
    else:
        log.info(f"resuming {status} run '{run_id}' from {where}")
    best = checkpoint.download(run, "best")["module"] if state["best_epoch"] else None
    return run_id, config, state, best


def resume(
    run_id: str,
    overrides: Sequence[str] = (),
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    tracking_uri: str = "",
    **train_keys: Any,
) -> RunResult:
    """Continue run ``run_id`` from ``checkpoints/last.pt`` in the same MLflow run.

    Weights, optimizer and schedule state, RNG states, the epoch and the beta schedule's step
    come back as they were, so metrics continue at the next step with the values an
    uninterrupted run would have logged (on CPU; CUDA kernels need not be deterministic). What a
    resume may change is given as ``[train]`` keywords, as :func:`train` takes them
    (``resume(run_id, epochs=20)``), or as ``--set`` texts (``overrides=["train.epochs=20"]``);
    ``tracking_uri`` names the store.
    """
    overrides = [*overrides, *(f"train.{k}={v!r}".replace("'", '"') for k, v in train_keys.items())]
    if tracking_uri:
        overrides.append(f'mlflow.tracking_uri="{tracking_uri}"')
    changes = _check_overrides(overrides)
    uri = changes.get("mlflow.tracking_uri", "")
    world, _ = init_from_env(changes.get("train.device", "auto"))
    found = _load_for_resume(run_id, uri, overrides) if world.is_main else None
    if world.distributed:  # rank 0 reads the store and hands the others what they need
        found = distributed.broadcast_object(found)
    run_id, config, state, best = found
    vae, data = prepare(config)
    check_data(vae, data)
    trainer = Trainer(vae, data, settings=config["train"], evaluation=config["eval"], progress=progress)
    trainer.load_state_dict(checkpoint.upgrade(state, trainer))
    if trainer.reseeded and world.is_main:
        log.warning(trainer.reseeded)
    if not world.is_main:
        fit(trainer)
        return RunResult("", uri)
    run = MlflowRun(run_id, uri)
    with run.lifecycle():
        run.set_tags({f"pyrovae.resumed.epoch_{state['epoch']}": " ".join(overrides) or "no overrides"})
        run.log_text(to_toml(config), "config.toml")  # a later resume reads the extended config
        return _fit(trainer, run, config, callbacks, best)
