"""A deliberately faulty likelihood, named in a config by import path (``faulty:NaNAfterSteps``):
the fault travels with the run's config, in this process or in any other."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pyrovae.model.likelihoods import Bernoulli


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class NaNAfterSteps(Bernoulli):
    """A Bernoulli likelihood whose logits become NaN from the ``nan_at_step``-th (0-based) training
    step on (on rank ``only_rank`` alone when it is >= 0); validation, sampling and the contract
    check are left alone."""

    traceable = False  # it counts steps in Python: train.jit = auto steps eagerly

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int] = (400,),
        nan_at_step: int = 0,
        only_rank: int = -1,
    ):
        super().__init__(latent_dim, data_shape, hidden)
        self.nan_at_step, self.only_rank = nan_at_step, only_rank
        self.training_calls = 0

    def distribution(self, logits: torch.Tensor):
        if self.training and torch.is_grad_enabled():
            if self.training_calls >= self.nan_at_step and self.only_rank in (-1, _rank()):
                logits = logits * float("nan")
            self.training_calls += 1
        return super().distribution(logits)


class CrashOnFirstAttempt(Bernoulli):
    """Raises at the ``crash_at_step``-th training step of a torchrun job's first attempt
    (``TORCHELASTIC_RESTART_COUNT == 0``) on rank 1, as a worker that dies would."""

    traceable = False

    def __init__(
        self, latent_dim: int, data_shape: tuple[int, ...], hidden: list[int] = (400,), crash_at_step: int = 0
    ):
        super().__init__(latent_dim, data_shape, hidden)
        self.crash_at_step = crash_at_step
        self.training_calls = 0

    def distribution(self, logits: torch.Tensor):
        if self.training and torch.is_grad_enabled():
            first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            if first_attempt and _rank() == 1 and self.training_calls == self.crash_at_step:
                os._exit(3)  # a hard death, no clean-up
            self.training_calls += 1
        return super().distribution(logits)
