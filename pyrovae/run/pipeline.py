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
from pyrovae.infer.faults import NonFiniteLoss, WorkerLost
from pyrovae.infer.interface import check_data_support
from pyrovae.infer.settings import TrainSettings
from pyrovae.infer.traces import takes_labels
from pyrovae.infer.trainer import Trainer
from pyrovae.model.models import build_model, loggable
from pyrovae.run import checkpoint
from pyrovae.run.config import MlflowSettings, resolve
from pyrovae.run.logger import MlflowLogger
from pyrovae.run.ranks import fit, share_run_id
from pyrovae.run.storage import storage_faults
from pyrovae.run.tracking import MlflowRun, experiment_id, tracking_uri
from pyrovae.run.tracking import client as tracking_client
from pyrovae.settings import renamed_keyword

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
    validation: Mapping | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    parent_run_id: str | None = None,
    evaluation: Mapping | None = None,
    **train_keys: Any,
) -> RunResult:
    """Train ``vae`` (any model with the interface of :mod:`pyrovae.model.base`) on ``data`` (from
    :func:`~pyrovae.data.load_data`) into one MLflow run.

    ``tracking`` holds the ``[mlflow]`` keys (``tracking_uri``, ``experiment``, ``run_name``);
    keyword arguments are the ``[train]`` keys, ``validation`` the ``[validation]`` keys. Logs the
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
    validation = renamed_keyword("evaluation", evaluation, "validation", validation)
    trainer = Trainer(vae, data, settings=settings, validation=validation, progress=progress, **train_keys)
    config = resolve(
        {
            "data": data.settings.as_dict(),
            "model": loggable_model_config(vae),
            "train": trainer.settings.as_dict(),
            "validation": trainer.validation.as_dict(),
            "mlflow": mlflow_settings.as_dict(),
        }
    )
    tags = run_tags(trainer.device)  # a collective under torchrun: every rank
    uri = tracking_uri(mlflow_settings.tracking_uri)
    if not trainer.world.is_main:  # only rank 0 talks to MLflow; every rank trains
        fit(trainer, share_run_id(trainer.world), uri)
        return RunResult("", uri)
    try:
        run = MlflowRun.create(uri, mlflow_settings.experiment, mlflow_settings.run_name, tags, parent_run_id)
    except UserError as err:
        share_run_id(trainer.world, error=str(err))  # the other ranks say the same line, not hang
        raise
    share_run_id(trainer.world, run.run_id)
    with run.lifecycle(), storage_faults(run):
        run.log_config(config)
        return fit_into_run(trainer, run, config, callbacks)


def fit_into_run(
    trainer: Trainer,
    run: MlflowRun,
    config: dict,
    callbacks: Sequence[Callback],
    best_module: dict | None = None,
    written: dict[str, str] | None = None,
) -> RunResult:
    """Fit with ``callbacks``, the logger and the checkpointer, inside an open run.

    The user's callbacks run before the logger, so that what they add to an epoch's metrics (in
    ``add_metrics`` or ``on_epoch_end``) is logged with them.
    """
    result = RunResult(run.run_id, run.uri)
    checkpointer = checkpoint.Checkpointer(run, config["model"], best_module, trainer.epoch, written)
    trainer.callbacks += [
        *callbacks,
        MlflowLogger(run, config["model"], config["mlflow"]["images_every"]),
        checkpointer,
        _LastMetrics(result),
    ]
    try:
        with storage_faults(run, lambda: checkpointer.last_epoch):
            fit(trainer, run.run_id, run.uri)
    except (NonFiniteLoss, WorkerLost) as err:
        err.last_good_epoch = checkpointer.last_epoch
        if isinstance(err, WorkerLost):
            err.run_id = run.run_id
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
        from pyrovae.run.resume import resume

        return resume(restarted, progress=progress, callbacks=callbacks, taking_over=True)
    vae, data = prepare(config)
    return train(
        vae,
        data,
        tracking=config["mlflow"],
        settings=config["train"],
        validation=config["validation"],
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
