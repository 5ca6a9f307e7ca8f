"""What the trainer calls besides its loop: the :class:`Callback` hooks and the shipped callbacks.

The trainer steps and validates; everything else that happens during training -- the progress
bar, per-epoch IWAE, bits per dimension, logging, checkpoints -- is a callback, called in the
order given. Every hook is optional. ``add_metrics`` runs right after a split has been
validated and may add numbers to its ``metrics`` dict, so a logger placed after it sees them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from pyrovae.infer.estimators.iwae import iwae
from pyrovae.model.likelihoods.base import bits_per_dim

if TYPE_CHECKING:
    from pyrovae.infer.trainer import Trainer


class Callback:
    """Hooks the trainer calls; override any of them."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, trainer: Trainer) -> None: ...

    def on_after_backward(self, trainer: Trainer) -> None:
        """The step's gradients are in the parameters' ``.grad`` (before clipping and the optimizer
        step): read or change them here (only for callbacks that override it)."""

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        """After every optimizer step (only for callbacks that override it: the loop stays lean)."""

    def add_metrics(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        """``split`` ("val" each epoch, "test" at the end) was just validated into ``metrics``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics are final: a logger logs them here (:func:`pyrovae.train` runs the
        user's callbacks before its logger, so a number added to ``metrics`` here is logged too)."""

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_interrupt(self, trainer: Trainer) -> None:
        """A stop was requested; training halts between two steps (``trainer.state_dict()`` is that point)."""


def overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running mean loss (``mininterval`` keeps it cheap)."""

    def __init__(self, update_every: int = 20):
        self.update_every = update_every
        self.bar = None

    def on_epoch_begin(self, trainer):
        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            initial=trainer.batches_done,
            leave=False,
            mininterval=0.5,
            desc=f"epoch {trainer.epoch + 1}/{trainer.settings.epochs}",
        )

    def on_step_end(self, trainer, loss):
        self.bar.update()
        if self.bar.n % self.update_every == 0:
            self.bar.set_postfix(loss=f"{trainer.running_loss():.2f}", refresh=False)

    def _close(self, *args):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_epoch_end = on_interrupt = on_train_end = _close

    def add_metrics(self, trainer, split, metrics):
        self._close()


class BitsPerDim(Callback):
    r"""``{split}/bpd`` = ``{split}/loss`` / (D ln 2) when the model says its data site is a mass over
    discrete data (its ``reports_bits_per_dim``), D = the number of data elements."""

    def add_metrics(self, trainer, split, metrics):
        if getattr(trainer.vae, "reports_bits_per_dim", False):
            metrics[f"{split}/bpd"] = bits_per_dim(metrics[f"{split}/loss"], trainer.data.data_shape)


class IWAEEvery(Callback):
    """``val/nll_iwae``: minus the mean IWAE bound with ``k`` samples, every ``every`` epochs, over
    the first ``n`` validation points (0 = all), and ``val/iwae_seconds`` (Burda et al. 2016)."""

    def __init__(self, every: int, k: int = 100, batch_size: int = 1000, seed: int = 0, n: int = 0):
        self.every, self.k, self.batch_size, self.seed, self.n = every, k, batch_size, seed, n

    def add_metrics(self, trainer, split, metrics):
        if split != "val" or not self.every or (trainer.epoch + 1) % self.every:
            return
        started = time.perf_counter()
        x, y = trainer.data.evaluation_data(split), trainer.data.labels(split)
        n = self.n or x.shape[0]
        log_px = iwae(
            trainer.vae, x[:n], self.k, batch_size=self.batch_size, seed=self.seed, y=None if y is None else y[:n]
        )
        metrics[f"{split}/nll_iwae"] = -float(log_px.mean())
        metrics[f"{split}/iwae_seconds"] = time.perf_counter() - started


class Accuracy(Callback):
    r"""``val/accuracy`` and ``test/accuracy`` every epoch (and ``test/accuracy`` at the end): the
    share of labelled points whose label the model's ``classify(x)`` (e.g. M2's q(y|x)) predicts,
    for a model that has one and data with labels."""

    def add_metrics(self, trainer, split, metrics):
        if not callable(getattr(trainer.vae, "classify", None)):
            return
        for name in ("val", "test") if split == "val" else (split,):
            labels = trainer.data.labels(name)
            if labels is not None:
                metrics[f"{name}/accuracy"] = accuracy(
                    trainer.vae, trainer.data.evaluation_data(name), labels, trainer.validation.batch_size
                )


def accuracy(model, x, labels, batch_size: int = 1000) -> float:
    """The share of rows of ``x`` whose ``labels`` ``model.classify`` predicts (no gradients, ``eval()``)."""
    from pyrovae.infer.terms import evaluation_mode

    right = 0
    with evaluation_mode(model, None, x.device):
        for start in range(0, x.shape[0], batch_size):
            right += int((model.classify(x[start : start + batch_size]) == labels[start : start + batch_size]).sum())
    return right / max(1, x.shape[0])


def default_callbacks(validation, progress: bool = True) -> list[Callback]:
    """What every training reports besides the validation terms: a progress bar (if ``progress``),
    bits per dimension, accuracy for a model that classifies, and the per-epoch IWAE curve of the
    ``[validation]`` settings. :func:`pyrovae.train` and the CLI add logging and checkpoints."""
    v = validation
    return [*([ProgressBar()] if progress else []), BitsPerDim(), Accuracy(),
            IWAEEvery(v.iwae_every, v.iwae_k, v.batch_size, v.seed, v.iwae_n)]  # fmt: skip
