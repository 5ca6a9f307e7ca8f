r"""The training loop: steps a torch optimizer over the ELBO module, validates, calls callbacks.

Each step minimizes :math:`-\mathcal{L}_\beta` on one batch (:class:`~pyrovae.infer.elbo.ELBOLoss`) of
any model with the interface of :mod:`pyrovae.model.base`, with the batch's labels when the model
takes them; every epoch ends with validation at beta = 1 (:func:`~pyrovae.infer.terms.validate`), the
run with the test split. What is not the loop lives beside it: where steps run
(:mod:`~pyrovae.infer.strategy`), KL annealing (:func:`~pyrovae.infer.elbo.annealing_beta`), the best
epoch and early stopping (:mod:`~pyrovae.infer.stopping`), stop requests and signals
(:mod:`~pyrovae.infer.faults`), the state a checkpoint keeps (:mod:`~pyrovae.infer.resumable`),
and logging and checkpoints (callbacks, :mod:`~pyrovae.infer.callbacks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pyrovae.data import Splits
from pyrovae.infer import distributed, resumable
from pyrovae.infer.callbacks import Callback, default_callbacks, overrides
from pyrovae.infer.elbo import annealing_beta, validation_elbo
from pyrovae.infer.fast_path import elbo_loss, resolved, say, traced_loss
from pyrovae.infer.faults import Interrupted, NonFiniteLoss, StopRequest, validate_first_step_only
from pyrovae.infer.interface import check_labels, check_model
from pyrovae.infer.rng import set_rng_state
from pyrovae.infer.settings import TrainSettings, ValidationSettings
from pyrovae.infer.step import GradientStep
from pyrovae.infer.stopping import BestEpoch
from pyrovae.infer.strategy import strategy_for
from pyrovae.infer.terms import validate
from pyrovae.infer.traces import evaluation_labels
from pyrovae.settings import renamed_keyword


class Trainer:
    """``Trainer(model, data, epochs=5, lr=1e-3, callbacks=[...]).fit()`` -> the test metrics.

    Keyword arguments are the ``[train]`` keys (:class:`~pyrovae.infer.settings.TrainSettings`), or
    ``settings=`` one object/mapping of them; ``validation=`` holds the ``[validation]`` keys;
    ``callbacks`` default to :func:`~pyrovae.infer.callbacks.default_callbacks`. The model must be on
    the data's device. ``epoch`` counts completed epochs (metrics are reported with ``step = epoch``,
    1-based); a trainer given a checkpoint's :meth:`state_dict` continues where that one stopped.
    """

    def __init__(self, vae, data: Splits, *, settings: TrainSettings | Mapping | None = None,
                 validation: ValidationSettings | Mapping | None = None, callbacks: Sequence[Callback] | None = None,
                 progress: bool = True, evaluation: Mapping | None = None, **train_keys: Any):  # fmt: skip
        base = settings.as_dict() if isinstance(settings, TrainSettings) else dict(settings or {})
        validation = renamed_keyword("evaluation", evaluation, "validation", validation)
        self.settings, self.validation = TrainSettings(**{**base, **train_keys}), ValidationSettings.parse(validation)
        self.vae, self.data, self.device = vae, data, data.train.device
        self.strategy = strategy_for(distributed.World.current())
        self.world = self.strategy.world
        s = self.settings
        # batches carry labels (the data have them, the model takes them); some rows unlabelled (data.labelled)
        self.labelled, self.semi_supervised = check_labels(vae, data)
        rows, labels = data.evaluation_data("val"), data.labels("val") if self.labelled else None
        check_model(vae, rows, labels, jit=s.jit is True, enumerate_guide=s.elbo == "enum")
        traced, why = traced_loss(vae, s, rows, labels)  # train.jit = auto: traced where the model allows it
        self.settings = s = resolved(s, traced is not None)  # the path taken: what a run records, resumes on
        say(why, self.world.is_main)
        self.loss = traced or elbo_loss(vae, s, False)
        self.elbo = self.loss.elbo
        self.validation_elbo = validation_elbo(s.elbo, s.num_particles)  # the ELBO at beta = 1, whatever trains
        self._forward = self.strategy.prepare(self.loss, self.device, s.seed)
        self.steps_per_epoch = self.strategy.steps_per_epoch(data, s, self.semi_supervised)
        self.gradient = GradientStep(vae.parameters(), s, self.steps_per_epoch, self.strategy)
        self.callbacks = list(default_callbacks(self.validation, progress) if callbacks is None else callbacks)
        self.best = BestEpoch()
        self.epoch = self.step = self.batches_done = 0
        self.history: list[dict[str, float]] = []  # each epoch's metrics, for the loss curves
        self.mid_epoch: dict | None = None  # where inside an epoch an interrupt stopped it
        self.reseeded = ""  # says why the random streams could not continue, after load_state_dict
        self._loss_sum, self._count, self.stop = 0.0, 0, StopRequest()
        self._rng_per_rank: list | None = None

    # -- state (pyrovae.infer.resumable) -------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly here, as tensors (on the CPU) and plain data."""
        return resumable.capture(self)

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state`` (from :meth:`state_dict`); call before :meth:`fit`."""
        resumable.restore(self, state)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer the steps use (``train.optimizer``); a callback may replace it."""
        return self.gradient.optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.gradient.optimizer = optimizer

    @property
    def scheduler(self):
        """The learning-rate schedule the steps use (``train.lr_schedule``); a callback may replace it."""
        return self.gradient.scheduler

    @scheduler.setter
    def scheduler(self, scheduler) -> None:
        self.gradient.scheduler = scheduler

    @property
    def improved(self) -> bool:
        """Whether the epoch just finished has the best val/loss so far."""
        return self.best.improved(self.epoch)

    # -- what the loop is made of -------------------------------------------------------
    def beta(self, step: int) -> float:
        """KL weight at a (0-based) step (:func:`~pyrovae.infer.elbo.annealing_beta`)."""
        return annealing_beta(step, self.settings, self.steps_per_epoch)

    def running_loss(self) -> float:
        """Mean ``train/loss`` of the epoch so far."""
        return self._loss_sum / max(self._count, 1)

    def request_stop(self, signum: int) -> None:
        """Stop after the current step (a signal handler calls this); callbacks see ``on_interrupt``."""
        self.stop.request(signum)

    def validate(self, split: str = "val") -> dict[str, float]:
        """``{split}/loss, recon, kl, kl/<site>, mse`` at beta = 1, plus what callbacks add for the split."""
        y = evaluation_labels(self.vae, self.data.labels(split))
        x, v = self.data.evaluation_data(split), self.validation
        terms = validate(self.vae, self.validation_elbo, x, v.batch_size, v.seed, y)
        metrics = {f"{split}/{k}": v for k, v in terms.items()}
        for cb in self.callbacks:
            cb.add_metrics(self, split, metrics)
        return metrics

    def train_epoch(self) -> dict[str, float]:
        """One epoch of steps, or the rest of one after an interrupt (``mid_epoch``).

        Raises :class:`~pyrovae.infer.faults.NonFiniteLoss` at the first non-finite loss and
        :class:`~pyrovae.infer.faults.Interrupted` after the step during which a stop was requested.
        """
        resumed, epoch_rng = resumable.enter_epoch(self)
        done = self.batches_done
        beta_list = [self.beta(self.step - done + i) for i in range(self.steps_per_epoch)]
        betas = torch.tensor(beta_list, device=self.device)  # on the device once, not a copy per step
        step_hooks = [cb for cb in self.callbacks if overrides(cb, "on_step_end")]  # the callbacks as they are now
        self.gradient.hooks = [cb for cb in self.callbacks if overrides(cb, "on_after_backward")]
        for cb in self.callbacks:
            cb.on_epoch_begin(self)
        started = time.perf_counter()
        self.vae.train()
        batches = self.strategy.batches(self.data, self.settings, self.epoch, done, self.labelled, self.semi_supervised)
        for i, batch in enumerate(validate_first_step_only(batches)):
            if i < done:
                continue
            if i == done and resumed:
                set_rng_state(resumed["rng"])
            loss, rows = self._step(*batch, betas[i], i)
            if not math.isfinite(loss):
                raise NonFiniteLoss(loss, self.epoch + 1, i + 1)
            self._loss_sum, self._count, self.batches_done = self._loss_sum + loss, self._count + rows, i + 1
            for cb in step_hooks:
                cb.on_step_end(self, loss)
            if self.stop.agreed and i + 1 < self.steps_per_epoch:
                self.mid_epoch = resumable.position(self, epoch_rng)
                self._interrupt()
        self.batches_done = 0
        seconds, beta = time.perf_counter() - started, sum(beta_list) / self.steps_per_epoch
        out = {"train/loss": self._loss_sum / self._count, "train/beta": beta, "train/seconds": seconds}
        return out | self.gradient.epoch_metrics()

    def _step(self, x: torch.Tensor, y: torch.Tensor | None, beta: torch.Tensor, index: int) -> tuple[float, int]:
        """One optimizer step on batch ``index``; the loss summed over the (global) batch and its number of rows."""
        loss = self._forward(x, beta, y)
        self.gradient.step(self, loss, index, len(x))
        self.step += 1
        total, rows, stop = self.strategy.reduce(loss.item(), x.shape[0], self.stop.requested, self.device)
        self.stop.agree(stop)
        return total, rows

    def _interrupt(self) -> None:
        """Let the callbacks keep this point (a checkpoint), then stop with :class:`Interrupted`."""
        self._rng_per_rank = self.strategy.rng_states()
        for cb in self.callbacks:
            cb.on_interrupt(self)
        batch = self.mid_epoch["batch"] if self.mid_epoch else 0
        raise Interrupted(self.stop.signum, self.epoch + (1 if batch else 0), batch)

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train to ``epochs`` (or until early stopping); return the test metrics."""
        for cb in self.callbacks:
            cb.on_train_begin(self)
        while self.epoch < self.settings.epochs:
            self.stop.agree(self.strategy.reduce(0.0, 0, self.stop.requested, self.device)[2])
            if self.stop.agreed:  # arrived during validation or logging
                self._interrupt()
            metrics = self.train_epoch()
            started = time.perf_counter()
            metrics.update(self.validate("val"))
            metrics["val/seconds"] = time.perf_counter() - started
            self.epoch += 1
            self.history.append(dict(metrics))
            self.best.update(self.epoch, metrics["val/loss"], self.settings.patience)
            self._rng_per_rank = self.strategy.rng_states()
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch, metrics)
            if self.best.stopped_early:
                break
        test = self.validate("test")
        self._rng_per_rank = self.strategy.rng_states()
        for cb in self.callbacks:
            cb.on_train_end(self, test)
        return test
