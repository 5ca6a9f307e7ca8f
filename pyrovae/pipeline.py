"""One straight data flow: config -> data -> modules -> VAE -> MLflow run -> train -> evaluate.

Everything a user can get wrong (the config, the data, a module's shapes) is checked
*before* the MLflow run starts, so bad input leaves no run behind; once the run has started,
any failure ends it FAILED with the reason (:func:`pyrovae.tracking.start_run`).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import pyro
import torch

from pyrovae import __version__, tracking
from pyrovae.data import Splits, load_data
from pyrovae.errors import UserError
from pyrovae.trainer import Callback, Trainer
from pyrovae.vae import VAE, build_vae


def select_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device '{name}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device = '{name}' but no CUDA GPU is available; use 'auto' or 'cpu'")
    return device


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
            "pyro.version": pyro.__version__, "device": str(device),
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
        callbacks = [tracking.MlflowLogger(), last, *extra_callbacks]
        Trainer(vae, splits, config["train"], config["eval"], callbacks, progress=progress).fit()
    return RunResult(run.info.run_id, tracking.tracking_uri(config["mlflow"]["tracking_uri"]), last.metrics)
