"""The trainer callback that logs to MLflow: metrics and pictures per epoch, data sets, the final model."""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pyrovae.infer.callbacks import Callback
from pyrovae.infer.estimators.diagnostics import has_kl_per_dimension, kl_per_dimension
from pyrovae.run import figures
from pyrovae.run.logged_model import log_vae
from pyrovae.run.tracking import MlflowRun


class MlflowLogger(Callback):
    """Logs each epoch's metrics (one batch, ``step = epoch``) and pictures; at the end the test
    metrics, the final weights and the logged model ``model``; at the start the data sets.

    Pictures every ``images_every`` epochs (``mlflow.images_every``; MLflow's step slider shows
    them changing): ``reconstructions``, ``prior_samples`` and ``latent`` (the decoded manifold
    for a 2-D latent, else posterior means in 2-D) for image data; ``kl_per_dimension`` where q and p factorize; ``loss_curves``.
    Each epoch also logs ``log/seconds``, the time all of this took. ``model_config`` (the
    resolved ``[model]`` section) is needed to log the model; without it no model is logged.
    """

    def __init__(self, run: MlflowRun, model_config: dict | None = None, images_every: int = 1,
                 image_seed: int = 0, latent_points: int = 1000):
        self.run = run
        self.model_config = model_config
        self.images_every = images_every
        self.image_seed = image_seed
        self.latent_points = latent_points
        self._kl_available: bool | None = None

    def on_train_begin(self, trainer) -> None:
        if trainer.epoch == 0:  # a resumed run logged its inputs when it started
            self.log_datasets(trainer.data)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        started = time.perf_counter()
        self.run.log_metrics(metrics, step=epoch)
        if self.images_every and epoch % self.images_every == 0:
            for key, image in self.pictures(trainer):
                self.run.log_image(image, key=key, step=epoch)
        self.run.log_metrics({"log/seconds": time.perf_counter() - started}, step=epoch)

    def pictures(self, trainer) -> Iterator[tuple[str, np.ndarray]]:
        vae, data, seed = trainer.vae, trainer.data, self.image_seed
        val = data.evaluation_data("val")[: self.latent_points]
        if data.is_image:
            yield "reconstructions", figures.reconstruction_grid(vae, val[:16], seed)
            yield "prior_samples", figures.prior_sample_grid(vae, 64, seed)
        if data.is_image and vae.latent_dim == 2:
            yield "latent", figures.latent_manifold_grid(vae)
        else:
            yield "latent", figures.latent_scatter(vae, val, data.labels("val"), seed)
        if self._kl_available is None:
            self._kl_available = has_kl_per_dimension(vae, val)
        if self._kl_available:
            yield "kl_per_dimension", figures.kl_per_dimension_chart(kl_per_dimension(vae, val))
        yield "loss_curves", figures.loss_curves(trainer.history)

    def on_train_end(self, trainer, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step=trainer.epoch)
        self.log_weights(trainer.vae)
        if self.model_config is not None:
            log_vae(self.run, trainer.vae, self.model_config, "model", step=trainer.epoch)

    def log_weights(self, vae: torch.nn.Module, name: str = "final") -> None:
        """The module's ``state_dict`` and data shape as ``weights/<name>.pt`` (loadable with weights_only)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.pt"
            state = {k: v.detach().cpu() for k, v in vae.state_dict().items()}
            torch.save({"state_dict": state, "data_shape": list(vae.data_shape)}, path)
            self.run.log_artifact(path, "weights")

    def log_datasets(self, data) -> None:
        """The training and validation sets as MLflow dataset inputs: name, source, digest and
        shape profile (MLflow stores those, not the arrays)."""
        import mlflow.data

        for split, context in (("train", "training"), ("val", "validation")):
            labels = data.labels(split)
            with warnings.catch_warnings():  # a descriptive source (synthetic data) is not a path
                warnings.simplefilter("ignore")
                dataset = mlflow.data.from_numpy(
                    data.evaluation_data(split).cpu().numpy(),
                    targets=None if labels is None else labels.cpu().numpy(),
                    source=data.info.get("source", data.name), name=f"{data.name}-{split}")
            self.run.log_input(dataset, context=context)
