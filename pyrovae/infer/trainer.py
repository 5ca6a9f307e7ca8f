r"""The training loop: steps a torch optimizer over the ELBO module, validates, calls callbacks.

Each step minimizes :math:`-\mathcal{L}_\beta` on one batch (:class:`~pyrovae.infer.elbo.ELBOLoss`) of any
model with the interface of :mod:`pyrovae.model.base` (checked when the trainer is built), with the
batch's labels when the model takes them,
with ``beta`` raised linearly from ``beta_start`` to 1 over ``warmup_epochs`` (Bowman et al.
2016; Sønderby et al. 2016); ``train/loss`` is the per-datapoint mean of that objective over the
epoch. Every epoch ends with validation at beta = 1 (:func:`~pyrovae.infer.terms.evaluate`), the
run with the test split. The trainer knows no logger: callbacks report
(:mod:`pyrovae.infer.callbacks`). Its whole state -- weights, optimizer, schedule, counters, RNG
streams and, after an interrupt, the position inside the epoch -- is :meth:`Trainer.state_dict`,
plain data that ``torch.load(..., weights_only=True)`` reads back.

Under ``torch.distributed`` (torchrun, :mod:`pyrovae.infer.distributed`) the ELBO module runs
inside ``DistributedDataParallel``: each rank steps on its slice of every global batch with its
own random numbers (seeded ``seed + rank``), one small all-reduce per step sums the loss, the row
count and a stop flag, so ``train/loss`` is the global mean and a NaN or a signal on any rank
stops every rank after the same step. Validation and test are computed identically on every
rank (same weights, same seed), so their numbers do not depend on the world size and early
stopping agrees. At world size 1 none of this runs.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import torch

from pyrovae.data import Splits
from pyrovae.errors import UserError
from pyrovae.infer import distributed
from pyrovae.infer.callbacks import Accuracy, BitsPerDim, Callback, IWAEEvery, ProgressBar, overrides
from pyrovae.infer.elbo import ELBOLoss, make_elbo
from pyrovae.infer.faults import Interrupted, NonFiniteLoss, StopOnSignals, validate_first_step_only
from pyrovae.infer.interface import check_model
from pyrovae.infer.optim import apply_schedule, make_optimizer, make_scheduler
from pyrovae.infer.rng import get_rng_state, set_rng_state
from pyrovae.infer.settings import EvalSettings, TrainSettings
from pyrovae.infer.terms import evaluate
from pyrovae.infer.traces import evaluation_labels, needs_labels, takes_labels

#: what :meth:`Trainer.state_dict` keeps besides weights, optimizer, schedule and RNG
COUNTERS = ("epoch", "step", "best_val_loss", "best_epoch", "bad_epochs", "stopped_early")


class Trainer:
    """``Trainer(vae, data, epochs=5, lr=1e-3, callbacks=[...]).fit()`` -> the test metrics.

    Keyword arguments are the ``[train]`` keys (:class:`~pyrovae.infer.settings.TrainSettings`),
    or ``settings=`` one object/mapping of them; ``evaluation=`` holds the ``[eval]`` keys. The
    VAE must be on the data's device. ``epoch`` counts completed epochs (metrics are reported
    with ``step = epoch``, 1-based); a trainer given a checkpoint's :meth:`state_dict` continues
    where that one stopped.
    """

    def __init__(
        self,
        vae,
        data: Splits,
        *,
        settings: TrainSettings | Mapping | None = None,
        evaluation: EvalSettings | Mapping | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        catch_signals: bool = True,
        **train_keys: Any,
    ):
        base = settings.as_dict() if isinstance(settings, TrainSettings) else dict(settings or {})
        self.settings = TrainSettings(**{**base, **train_keys})
        self.evaluation = EvalSettings.parse(evaluation)
        self.vae, self.data = vae, data
        self.device = data.train.device
        self.world = distributed.World.current()
        #: whether training batches carry labels: the data have them and the model takes them
        self.labelled = data.train_labels is not None and takes_labels(vae.model)
        #: some training rows unlabelled (data.labelled): labelled and unlabelled batches interleave
        self.semi_supervised = self.labelled and data.semi_supervised
        if self.semi_supervised:
            _check_semi_supervised(vae, self.world)
        # A param store left by another model under the same pyro.module name would shadow this one's
        # parameters in the traces; training steps the module's own parameters either way.
        pyro.clear_param_store()
        check_model(
            vae,
            data.evaluation_data("val"),
            data.labels("val") if self.labelled else None,
            jit=self.settings.jit,
            enumerate_guide=self.settings.elbo == "enum",
        )
        self.elbo = make_elbo(self.settings.elbo, self.settings.num_particles, self.settings.jit)
        self.loss = ELBOLoss(vae, self.elbo)
        self._forward = self.loss
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self._forward = DistributedDataParallel(
                self.loss, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            pyro.set_rng_seed(self.settings.seed + self.world.rank)  # each rank its own noise and binarization
        self.optimizer = make_optimizer(
            vae.parameters(), self.settings.optimizer, self.settings.lr, self.settings.weight_decay, self.settings.adam
        )
        self.steps_per_epoch = (
            data.num_shard_batches(self.settings.batch_size, self.world.size)
            if self.world.distributed
            else data.num_semi_supervised_batches(self.settings.batch_size, self.settings.labelled_every)
            if self.semi_supervised
            else data.num_batches(self.settings.batch_size)
        )
        self.scheduler = make_scheduler(self.optimizer, self.settings, self.steps_per_epoch)
        ev = self.evaluation
        self.callbacks = [
            *([ProgressBar()] if progress else []),
            BitsPerDim(),
            Accuracy(),
            IWAEEvery(ev.iwae_every, ev.iwae_k, ev.batch_size, ev.seed, ev.iwae_n),
            *callbacks,
        ]
        self._step_hooks: list[Callback] = []  # chosen at each epoch's start: callbacks may be added until then
        self.catch_signals = catch_signals
        self.epoch = self.step = self.best_epoch = self.bad_epochs = 0
        self.best_val_loss = float("inf")
        self.stopped_early = False
        self.history: list[dict[str, float]] = []  # each epoch's metrics, for the loss curves
        self.mid_epoch: dict | None = None  # where inside an epoch an interrupt stopped it
        self.batches_done = 0
        self._loss_sum, self._count = 0.0, 0
        self.reseeded = ""  # says why the random streams could not continue, after load_state_dict
        self._stop_signal: int | None = None
        self._stopping = False  # the stop all ranks agreed on (the local signal, in one process)
        self._rng_per_rank: list | None = None  # every rank's RNG, gathered where callbacks may save

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly here, as tensors (on the CPU) and plain data."""
        return _to_cpu(
            {
                **{k: getattr(self, k) for k in COUNTERS},
                "history": [dict(m) for m in self.history],
                "mid_epoch": self.mid_epoch,
                "module": self.vae.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": get_rng_state(),
                "world_size": self.world.size,
                **({"rng_per_rank": self._rng_per_rank} if self.world.distributed else {}),
            }
        )

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state`` (from :meth:`state_dict`); call before :meth:`fit`."""
        self.vae.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        apply_schedule(self.scheduler)  # the rate of the schedule in force (train.epochs may have changed)
        for key in COUNTERS:
            setattr(self, key, state[key])
        self.history = [dict(m) for m in state["history"]]
        self.mid_epoch = state.get("mid_epoch")
        saved_size = state.get("world_size", 1)
        if saved_size == self.world.size:
            set_rng_state(state["rng_per_rank"][self.world.rank] if self.world.distributed else state["rng"])
        else:  # another world size: the streams cannot continue; a fresh one per rank and epoch
            self.mid_epoch = None
            pyro.set_rng_seed(self.settings.seed + 1_000 * self.epoch + self.world.rank)
            self.reseeded = (
                f"trained on {saved_size} process(es), resumed on {self.world.size}: random streams reseeded"
            )

    # -- what the loop is made of -------------------------------------------------------
    def beta(self, step: int) -> float:
        """KL weight at a (0-based) step: linear from beta_start to 1 over the warm-up."""
        start, warmup = self.settings.beta_start, self.settings.warmup_epochs
        if warmup <= 0:
            return start
        return min(1.0, start + (1.0 - start) * step / (warmup * self.steps_per_epoch))

    def running_loss(self) -> float:
        """Mean ``train/loss`` of the epoch so far."""
        return self._loss_sum / max(self._count, 1)

    def request_stop(self, signum: int) -> None:
        """Stop after the current step (a signal handler calls this); callbacks see ``on_interrupt``."""
        self._stop_signal = signum

    def validate(self, split: str = "val") -> dict[str, float]:
        """``{split}/loss, recon, kl, mse`` at beta = 1, plus what callbacks add for the split."""
        terms = evaluate(
            self.vae,
            self.elbo,
            self.data.evaluation_data(split),
            self.evaluation.batch_size,
            seed=self.evaluation.seed,
            y=evaluation_labels(self.vae, self.data.labels(split)),
        )
        metrics = {f"{split}/{k}": v for k, v in terms.items()}
        for cb in self.callbacks:
            cb.add_metrics(self, split, metrics)
        return metrics

    def train_epoch(self) -> dict[str, float]:
        """One epoch of steps, or the rest of one after an interrupt (``mid_epoch``).

        Raises :class:`~pyrovae.infer.faults.NonFiniteLoss` at the first non-finite loss and
        :class:`~pyrovae.infer.faults.Interrupted` after the step during which a stop was requested.
        """
        resumed, self.mid_epoch = self.mid_epoch, None
        self.batches_done = done = resumed["batch"] if resumed else 0
        self._loss_sum, self._count = (resumed["loss_sum"], resumed["n"]) if resumed else (0.0, 0)
        if resumed:  # replay the epoch's start so that its order and binarization come out the same
            set_rng_state(resumed["epoch_rng"])
        epoch_rng = get_rng_state()
        first_step = self.step - done
        beta_list = [self.beta(first_step + i) for i in range(self.steps_per_epoch)]
        betas = torch.tensor(beta_list, device=self.device)  # on the device once, not a copy per step
        self._step_hooks = [cb for cb in self.callbacks if overrides(cb, "on_step_end")]  # as they are now
        for cb in self.callbacks:
            cb.on_epoch_begin(self)
        started = time.perf_counter()
        self.vae.train()
        for i, batch in enumerate(validate_first_step_only(self._batches(done))):
            if i < done:
                continue
            if i == done and resumed:
                set_rng_state(resumed["rng"])
            loss, rows = self._step(*batch, betas[i])
            if not math.isfinite(loss):
                raise NonFiniteLoss(loss, self.epoch + 1, i + 1)
            self._loss_sum += loss
            self._count += rows
            self.batches_done = i + 1
            for cb in self._step_hooks:
                cb.on_step_end(self, loss)
            if self._stopping and i + 1 < self.steps_per_epoch:
                self.mid_epoch = {
                    "batch": i + 1,
                    "loss_sum": self._loss_sum,
                    "n": self._count,
                    "epoch_rng": epoch_rng,
                    "rng": get_rng_state(),
                }
                self._interrupt()
        self.batches_done = 0
        return {
            "train/loss": self._loss_sum / self._count,
            "train/beta": sum(beta_list) / self.steps_per_epoch,
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/seconds": time.perf_counter() - started,
        }

    def _batches(self, done: int):
        """This epoch's ``(x, y)`` batches (``y`` None without labels); distributed: this rank's
        slices, the ``done`` first ones left out (yielded as None placeholders so that batch
        indices stay global)."""
        if not self.world.distributed:
            if self.semi_supervised:
                return self.data.semi_supervised_batches(self.settings.batch_size, self.settings.labelled_every)
            return (
                self.data.train_batches(self.settings.batch_size, labelled=True)
                if self.labelled
                else ((x, None) for x in self.data.train_batches(self.settings.batch_size))
            )
        shards = self.data.shard_batches(
            self.settings.batch_size,
            self.world.rank,
            self.world.size,
            self.settings.seed,
            self.epoch,
            start=done,
            labelled=self.labelled,
        )
        if not self.labelled:
            shards = ((x, None) for x in shards)
        return (x for part in ([None] * done, shards) for x in part)

    def _step(self, x: torch.Tensor, y: torch.Tensor | None, beta: torch.Tensor) -> tuple[float, int]:
        """One optimizer step; the loss summed over the (global) batch and its number of rows."""
        loss = self._forward(x, beta, y)
        (loss * self.world.size if self.world.distributed else loss).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if not self.world.distributed:
            self._stopping = self._stop_signal is not None
            return loss.item(), x.shape[0]
        total, rows, stop = distributed.all_reduce_sum(
            [loss.item(), x.shape[0], float(self._stop_signal is not None)], self.device
        )
        self._agree_on_stop(stop)
        return total, int(rows)

    def _agree_on_stop(self, votes: float) -> None:
        """Stop exactly when some rank was signalled by the last collective (never on a local signal
        that arrived after it, or the ranks would part ways)."""
        self._stopping = votes > 0
        if self._stopping and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM

    def _gather_rng(self) -> None:
        """Every rank's RNG state, collected on every rank before callbacks may save a checkpoint."""
        if self.world.distributed:
            self._rng_per_rank = distributed.gather_objects(get_rng_state())

    def _interrupt(self) -> None:
        """Let the callbacks keep this point (a checkpoint), then stop with :class:`Interrupted`."""
        self._gather_rng()
        for cb in self.callbacks:
            cb.on_interrupt(self)
        batch = self.mid_epoch["batch"] if self.mid_epoch else 0
        raise Interrupted(self._stop_signal, self.epoch + (1 if batch else 0), batch)

    @property
    def improved(self) -> bool:
        """Whether the epoch just finished has the best val/loss so far."""
        return self.epoch > 0 and self.best_epoch == self.epoch

    def _track_best(self, val_loss: float) -> None:
        if val_loss < self.best_val_loss:  # NaN never improves
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, self.epoch, 0
        else:
            self.bad_epochs += 1
        patience = self.settings.patience
        self.stopped_early = bool(patience) and self.bad_epochs >= patience

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train to ``epochs`` (or until early stopping); return the test metrics."""
        for cb in self.callbacks:
            cb.on_train_begin(self)
        if not self.catch_signals:
            return self._fit()
        with StopOnSignals(self.request_stop):
            return self._fit()

    def _fit(self) -> dict[str, float]:
        while self.epoch < self.settings.epochs:
            if self.world.distributed:
                self._agree_on_stop(distributed.all_reduce_sum([float(self._stop_signal is not None)], self.device)[0])
            else:
                self._stopping = self._stop_signal is not None
            if self._stopping:  # arrived during validation or logging
                self._interrupt()
            metrics = self.train_epoch()
            started = time.perf_counter()
            metrics.update(self.validate("val"))
            metrics["val/seconds"] = time.perf_counter() - started
            self.epoch += 1
            self.history.append(dict(metrics))
            self._track_best(metrics["val/loss"])
            self._gather_rng()
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch, metrics)
            if self.stopped_early:
                break
        test = self.validate("test")
        self._gather_rng()
        for cb in self.callbacks:
            cb.on_train_end(self, test)
        return test


def _check_semi_supervised(model, world) -> None:
    """A partly labelled training set needs a model whose labels are optional, in one process."""
    if needs_labels(model):
        raise UserError(
            f"model {type(model).__name__} needs a label for every row, but data.labelled leaves training "
            f"rows unlabelled: set data.labelled = 0, or use a model whose y is optional (m2)"
        )
    if world.distributed:
        raise UserError(
            "semi-supervised training (data.labelled) runs in one process: its labelled and unlabelled "
            "batches are not sharded across ranks; run it without torchrun"
        )


def _to_cpu(obj):
    """Tensors anywhere inside dicts/lists/tuples, detached copies on the CPU (loadable anywhere)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
