r"""Training with Pyro's ``SVI``; it reports through callbacks and knows no logger.

Each step maximizes the (annealed) ELBO

.. math:: \mathcal{L}_\beta(x) = E_{q(z|x)}[\log p(x|z)] - \beta\,\mathrm{KL}(q(z|x) \| p(z)),

with ``beta`` raised linearly from ``train.beta_start`` to 1 over ``train.warmup_epochs``
(Bowman et al. 2016; Sønderby et al. 2016), scaled in model *and* guide. ``train/loss`` is the
per-datapoint mean of :math:`-\mathcal{L}_\beta` actually optimized; every epoch ends with
validation at beta = 1 (:mod:`pyrovae.evaluate`).

Callbacks (the MLflow adapter, checkpointing, the progress display) implement any of
:class:`Callback`'s methods; the trainer calls them in order.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from tqdm.auto import tqdm

from pyrovae.data import Splits
from pyrovae.evaluate import evaluate
from pyrovae.faults import Interrupted, NonFiniteLoss, StopOnSignals, injected_nan_step
from pyrovae.rng import get_rng_state, set_rng_state
from pyrovae.optim import make_optim, validate_first_step_only
from pyrovae.estimators.iwae import iwae
from pyrovae.likelihoods.base import bits_per_dim

ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
JIT_ELBOS = {"trace": JitTrace_ELBO, "meanfield": JitTraceMeanField_ELBO}


class Callback:
    """Hooks the trainer calls; every method is optional."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_interrupt(self, trainer: "Trainer") -> None:
        """A signal stopped training between two steps (``trainer.partial`` says where)."""


def make_elbo(train_cfg: dict):
    if train_cfg.get("jit"):  # beta goes in as a positional tensor: a traced input, not a constant
        return JIT_ELBOS[train_cfg["elbo"]](num_particles=train_cfg["num_particles"], ignore_jit_warnings=True)
    return ELBOS[train_cfg["elbo"]](num_particles=train_cfg["num_particles"])


class Trainer:
    """SVI over the training split, validation every epoch, test at the end.

    ``epoch`` counts completed epochs (a resumed trainer starts from a checkpoint's value);
    metrics are reported with ``step = epoch``, 1-based.
    """

    def __init__(self, vae, splits: Splits, train_cfg: dict, eval_cfg: dict,
                 callbacks: Sequence[Callback] = (), progress: bool = True):
        self.vae, self.splits = vae, splits
        self.train_cfg, self.eval_cfg = train_cfg, eval_cfg
        self.callbacks = list(callbacks)
        self.progress = progress
        self.device = splits.train.device
        self.elbo = make_elbo(train_cfg)
        self.optim = make_optim(train_cfg)  # one fused torch Adam (train.adam), not one per tensor
        self.svi = SVI(vae.model, vae.guide, self.optim, self.elbo)
        self.epoch = 0
        self.step = 0
        # Early stopping and the best epoch by val/loss; with epoch/step, what a checkpoint
        # keeps besides weights, optimizer and RNG states (pyrovae.checkpoint).
        self.best_val_loss, self.best_epoch, self.bad_epochs = float("inf"), 0, 0
        self.stopped_early = False
        self.partial: dict | None = None  # mid-epoch position to continue from (pyrovae.checkpoint)
        self.last_checkpoint_epoch = 0    # set by the checkpointing callback
        self.signals = StopOnSignals()    # replaced by an active one during fit()
        self._nan_step = injected_nan_step()
        self.history: list[dict[str, float]] = []  # each epoch's metrics, for the loss curves
        self.steps_per_epoch = splits.num_batches(train_cfg["batch_size"])
        # A param store left by another VAE in this process would shadow this one's
        # parameters under the same "vae" name, and they would never train.
        pyro.clear_param_store()

    def beta(self, step: int) -> float:
        """KL weight at a (0-based) step: linear from beta_start to 1 over the warm-up."""
        start, warmup = self.train_cfg["beta_start"], self.train_cfg["warmup_epochs"]
        if warmup <= 0:
            return start
        return min(1.0, start + (1.0 - start) * step / (warmup * self.steps_per_epoch))

    def validate(self, split: str = "val") -> dict[str, float]:
        terms = evaluate(self.vae, self.elbo, self.splits.split(split), self.eval_cfg["batch_size"],
                         seed=self.eval_cfg["seed"])
        out = {f"{split}/{k}": v for k, v in terms.items()}
        if getattr(self.vae.likelihood, "reports_bits_per_dim", False):  # a discrete likelihood
            out[f"{split}/bpd"] = bits_per_dim(terms["loss"], self.vae.data_shape)
        return out

    def validate_iwae(self, split: str = "val") -> dict[str, float]:
        """``{split}/nll_iwae``: minus the mean IWAE bound with ``eval.iwae_k`` samples, and its seconds."""
        started = time.perf_counter()
        log_px = iwae(self.vae, self.splits.split(split), self.eval_cfg["iwae_k"],
                      batch_size=self.eval_cfg["batch_size"], seed=self.eval_cfg["seed"])
        return {f"{split}/nll_iwae": -float(log_px.mean()), f"{split}/iwae_seconds": time.perf_counter() - started}

    def train_epoch(self) -> dict[str, float]:
        """One epoch of SVI steps, or the rest of one after a mid-epoch checkpoint (``self.partial``).

        Raises :class:`~pyrovae.faults.NonFiniteLoss` at the first non-finite loss and
        :class:`~pyrovae.faults.Interrupted` after the step during which a signal arrived.
        """
        partial, self.partial = self.partial, None
        done = partial["batch"] if partial else 0
        total, n = (partial["loss_sum"], partial["n"]) if partial else (0.0, 0)
        if partial:  # replay the epoch's start so its order and binarization come out the same
            set_rng_state(partial["epoch_rng"])
        epoch_rng = get_rng_state()
        first_step = self.step - done
        # The epoch's KL weights, made on the device once: no host-to-device copy per step.
        beta_list = [self.beta(first_step + i) for i in range(self.steps_per_epoch)]
        betas = torch.tensor(beta_list, device=self.device)
        started = time.perf_counter()
        bar = tqdm(total=self.steps_per_epoch, initial=done, leave=False, disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{self.train_cfg['epochs']}", mininterval=0.5)
        self.vae.train()
        for i, x in enumerate(validate_first_step_only(self.splits.train_batches(self.train_cfg["batch_size"]))):
            if i < done:
                continue
            if i == done and partial:
                set_rng_state(partial["rng"])
            if self.step == self._nan_step:  # test-only fault injection (pyrovae.faults)
                next(self.vae.parameters()).data.fill_(float("nan"))
            loss = self.svi.step(x, betas[i])  # a float: Trace_ELBO has already synchronised
            if not math.isfinite(loss):
                raise NonFiniteLoss(loss, self.epoch + 1, i + 1, self.last_checkpoint_epoch)
            total += loss
            n += x.shape[0]
            self.step += 1
            bar.update()
            if bar.n % 20 == 0:
                bar.set_postfix(loss=f"{total / n:.2f}", refresh=False)
            if self.signals.signum is not None and i + 1 < self.steps_per_epoch:
                bar.close()
                self.partial = {"batch": i + 1, "loss_sum": total, "n": n,
                                "epoch_rng": epoch_rng, "rng": get_rng_state()}
                self._interrupt(batch=i + 1)
        bar.close()
        return {"train/loss": total / n, "train/beta": sum(beta_list) / self.steps_per_epoch,
                "train/seconds": time.perf_counter() - started}

    def _interrupt(self, batch: int) -> None:
        """Let the callbacks keep this point (a checkpoint), then stop with :class:`Interrupted`."""
        for cb in self.callbacks:
            getattr(cb, "on_interrupt", lambda trainer: None)(self)
        raise Interrupted(self.signals.signum, self.epoch + (1 if batch else 0), batch)

    @property
    def improved(self) -> bool:
        """Whether the epoch just finished has the best val/loss so far."""
        return self.epoch > 0 and self.best_epoch == self.epoch

    def _track_best(self, val_loss: float) -> None:
        """Best val/loss so far, epochs since it improved, and early stopping after ``train.patience``."""
        if val_loss < self.best_val_loss:  # NaN never improves
            self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, self.epoch, 0
        else:
            self.bad_epochs += 1
        patience = self.train_cfg.get("patience", 0)
        self.stopped_early = bool(patience) and self.bad_epochs >= patience

    def fit(self) -> dict[str, float]:
        """Train to ``train.epochs`` (or until early stopping); return the test metrics."""
        for cb in self.callbacks:
            cb.on_train_begin(self)
        with StopOnSignals() as self.signals:
            return self._fit()

    def _fit(self) -> dict[str, float]:
        while self.epoch < self.train_cfg["epochs"]:
            if self.signals.signum is not None:  # arrived during validation or logging
                self._interrupt(batch=0)
            metrics = self.train_epoch()
            started = time.perf_counter()
            metrics.update(self.validate("val"))
            metrics["val/seconds"] = time.perf_counter() - started
            every = self.eval_cfg.get("iwae_every", 0)
            if every and (self.epoch + 1) % every == 0:
                metrics.update(self.validate_iwae("val"))
            self.epoch += 1
            self.history.append(dict(metrics))
            self._track_best(metrics["val/loss"])
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch, metrics)
            if self.stopped_early:
                break
        test = self.validate("test")
        for cb in self.callbacks:
            cb.on_train_end(self, test)
        return test
