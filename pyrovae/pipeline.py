"""One straight data flow: config -> data -> modules -> VAE -> MLflow run -> train -> evaluate.

Everything a user can get wrong (the config, the data, a module's shapes) is checked
*before* the MLflow run starts, so bad input leaves no run behind; once the run has started,
any failure ends it FAILED with the reason (:func:`pyrovae.tracking.start_run`).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import mlflow
import pyro
import torch

from pyrovae import __version__, checkpoint, tracking
from pyrovae.config import to_toml
from pyrovae.data import Splits, load_data
from pyrovae.devices import describe, select_device
from pyrovae.errors import UserError
from pyrovae.trainer import Callback, Trainer
from pyrovae.vae import VAE, build_vae


def check_data(vae: VAE, splits: Splits) -> None:
    """The likelihood accepts every split, and every module keeps the shape contract."""
    check = getattr(vae.likelihood, "check_data", None)
    for name in ("train", "val", "test"):
        if check is not None and not (name == "train" and splits.binarize):  # dynamic: binary by construction
            check(splits.split(name), name)
    vae.check_contract(splits.split("val")[:4])


def prepare(config: dict) -> tuple[VAE, Splits]:
    """Seed, load the data onto the device, build the VAE and check that they fit."""
    device = select_device(config["train"]["device"])
    pyro.set_rng_seed(config["train"]["seed"])
    splits = load_data(config["data"], device)
    vae = build_vae(config["model"], splits.data_shape).to(device)
    check_data(vae, splits)
    return vae, splits


def run_tags(device: torch.device) -> dict[str, str]:
    return {"pyrovae.version": __version__, "torch.version": torch.__version__,
            "pyro.version": pyro.__version__,
            "device": describe(device),
            "torch.threads": str(torch.get_num_threads()), "host.python": platform.python_version()}


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]


class _LastMetrics(Callback):
    def __init__(self):
        self.metrics: dict[str, float] = {}

    def on_epoch_end(self, trainer, epoch, metrics):
        self.metrics.update(metrics)

    def on_train_end(self, trainer, metrics):
        self.metrics.update(metrics)


def train(config: dict, progress: bool = True, extra_callbacks: tuple = (),
          parent_run_id: str | None = None) -> RunResult:
    """Train one VAE from a resolved config into one MLflow run; return its id and last metrics."""
    vae, splits = prepare(config)
    last = _LastMetrics()
    with tracking.start_run(config, tags=run_tags(splits.train.device), parent_run_id=parent_run_id) as run:
        callbacks = [tracking.MlflowLogger(config["model"]), checkpoint.Checkpointer(config["model"]),
                     last, *extra_callbacks]
        Trainer(vae, splits, config["train"], config["eval"], callbacks, progress=progress).fit()
    return RunResult(run.info.run_id, tracking.tracking_uri(config["mlflow"]["tracking_uri"]), last.metrics)


#: what ``pyrovae resume --set`` may change; anything else would not be the same run
RESUMABLE = ("train.epochs", "train.patience", "train.checkpoint_every", "train.device", "mlflow.tracking_uri")


def resume_config(run_id: str, overrides: list[str] = ()) -> dict:
    """The run's logged config with the (few) keys a resumed run may change overridden."""
    from pyrovae import config as config_mod

    changes = {}
    for text in overrides:
        keys, value = config_mod.parse_override(text)
        if ".".join(keys) not in RESUMABLE:
            raise UserError(f"resume cannot change '{'.'.join(keys)}' (it would not be the same run); "
                            f"it can change {', '.join(RESUMABLE)}; train a new run instead")
        changes[tuple(keys)] = value
    mlflow.set_tracking_uri(tracking.tracking_uri(changes.get(("mlflow", "tracking_uri"), "")))
    config = tracking.load_run_config(run_id)
    for (section, key), value in changes.items():
        config[section][key] = value
    return config_mod.resolve(config)


def resume(run_id: str, overrides: list[str] = (), progress: bool = True,
           extra_callbacks: tuple = ()) -> RunResult:
    """Continue run ``run_id`` from ``checkpoints/last.pt`` in the same MLflow run.

    Weights, optimizer state, RNG states, the epoch and the beta schedule's step come back
    as they were, so metrics continue at the next step with the values an uninterrupted run
    would have logged (on CPU; CUDA kernels need not be deterministic).
    """
    config = resume_config(run_id, overrides)
    state = checkpoint.download(run_id, "last")
    epochs, changed = config["train"]["epochs"], {o.partition("=")[0].strip() for o in overrides}
    if state["stopped_early"] and state["finished"] and "train.patience" not in changed:
        raise UserError(f"run '{run_id}' stopped early at epoch {state['epoch']} (val/loss last improved at "
                        f"epoch {state['best_epoch']}); to go on anyway: --set train.patience=0 (off) or more")
    if state["finished"] and state["epoch"] >= epochs and not state["stopped_early"]:
        raise UserError(f"run '{run_id}' already finished its {state['epoch']} epochs; "
                        f"to train longer: pyrovae resume {run_id} --set train.epochs=N (N > {state['epoch']})")
    status = mlflow.get_run(run_id).info.status
    where = f"epoch {state['epoch']}" + (f", batch {state['partial']['batch']} of epoch {state['epoch'] + 1}"
                                         if state.get("partial") else "")
    if status == "RUNNING":
        print(f"pyrovae: run '{run_id}' was left RUNNING: its process ended without closing it (killed?); "
              f"continuing from its last checkpoint ({where}), work after that is redone")
    else:
        print(f"pyrovae: resuming {status} run '{run_id}' from {where}")
    best = checkpoint.download(run_id, "best")["module"] if state["best_epoch"] else None
    vae, splits = prepare(config)
    last = _LastMetrics()
    callbacks = [tracking.MlflowLogger(config["model"]), checkpoint.Checkpointer(config["model"], best),
                 last, *extra_callbacks]
    trainer = Trainer(vae, splits, config["train"], config["eval"], callbacks, progress=progress)
    checkpoint.restore(trainer, state)
    with tracking.start_run(config, tags=run_tags(splits.train.device), run_id=run_id) as run:
        mlflow.set_tag(f"pyrovae.resumed.epoch_{state['epoch']}", " ".join(overrides) or "no overrides")
        mlflow.log_text(to_toml(config), "config.toml")  # a later resume reads the extended config
        trainer.fit()
    return RunResult(run.info.run_id, tracking.tracking_uri(config["mlflow"]["tracking_uri"]), last.metrics)
