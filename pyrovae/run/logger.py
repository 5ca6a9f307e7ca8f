"""The trainer callback that logs to MLflow: metrics and pictures per epoch, data sets, the final model."""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pyrovae.infer.callbacks import Callback
from pyrovae.infer.estimators.diagnostics import KLPerDimensionUnavailable, kl_per_dimension, posterior_means
from pyrovae.infer.traces import evaluation_labels
from pyrovae.run import figures
from pyrovae.run.logged_model import log_vae
from pyrovae.run.tracking import MlflowRun


class MlflowLogger(Callback):
    """Logs each epoch's metrics (one batch, ``step = epoch``) and pictures; at the end the test
    metrics, the final weights and the logged model ``model``; at the start the data sets.

    Pictures every ``images_every`` epochs (``mlflow.images_every``; MLflow's step slider shows
    them changing): ``reconstructions`` and ``prior_samples`` for image data (from the traces of
    any model; a conditional model's samples take the first validation labels); ``latent`` (for a
    model with one 2-D latent site and a ``decode`` hook on image data, the decoded manifold; else
    each site's posterior means in 2-D, ``latent_<site>`` when there are several sites);
    ``kl_per_dimension`` (a panel per latent site that factorizes); ``loss_curves``.
    Each epoch also logs ``log/seconds``, the time all of this took. ``model_config`` (the
    resolved ``[model]`` section) is needed to log the model; without it no model is logged.
    """

    def __init__(
        self,
        run: MlflowRun,
        model_config: dict | None = None,
        images_every: int = 1,
        image_seed: int = 0,
        latent_points: int = 1000,
    ):
        self.run = run
        self.model_config = model_config
        self.images_every = images_every
        self.image_seed = image_seed
        self.latent_points = latent_points
        self._kl_available = True

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
        model, data, seed = trainer.vae, trainer.data, self.image_seed
        val = data.evaluation_data("val")[: self.latent_points]
        labels = data.labels("val")
        y = evaluation_labels(model, None if labels is None else labels[: self.latent_points])
        if data.is_image:
            yield "reconstructions", figures.reconstruction_grid(model, val[:16], seed, None if y is None else y[:16])
            classes = None if y is None else torch.arange(64, device=val.device) % data.num_classes  # rows of classes
            yield "prior_samples", figures.prior_sample_grid(model, 64, seed, data.data_shape, classes)
        means = posterior_means(model, val, y=y, seed=seed)
        if data.is_image and len(means) == 1 and next(iter(means.values())).shape[1] == 2 and hasattr(model, "decode"):
            yield "latent", figures.latent_manifold_grid(model)
        else:
            for site, site_means in means.items():
                key = "latent" if len(means) == 1 else f"latent_{site}"
                yield (
                    key,
                    figures.latent_scatter(site_means, None if labels is None else labels[: len(val)], seed, site),
                )
        if self._kl_available:
            try:
                yield "kl_per_dimension", figures.kl_per_dimension_chart(kl_per_dimension(model, val, y=y))
            except KLPerDimensionUnavailable:
                self._kl_available = False
        yield "loss_curves", figures.loss_curves(trainer.history)

    def on_train_end(self, trainer, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step=trainer.epoch)
        self.log_weights(trainer.vae, trainer.data.data_shape, trainer.data.num_classes)
        if self.model_config is not None:
            log_vae(
                self.run,
                trainer.vae,
                self.model_config,
                trainer.data.data_shape,
                "model",
                step=trainer.epoch,
                num_classes=trainer.data.num_classes,
            )

    def log_weights(
        self, model: torch.nn.Module, data_shape, num_classes: int | None = None, name: str = "final"
    ) -> None:
        """The module's ``state_dict``, the data shape and the number of classes as
        ``weights/<name>.pt`` (loadable with weights_only)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.pt"
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save({"state_dict": state, "data_shape": list(data_shape), "num_classes": num_classes}, path)
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
                    source=data.info.get("source", data.name),
                    name=f"{data.name}-{split}",
                )
            self.run.log_input(dataset, context=context)
