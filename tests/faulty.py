"""A deliberately faulty likelihood, named in a config by import path (``faulty:NaNAfterSteps``):
the fault travels with the run's config, in this process or in any other."""

from __future__ import annotations

import torch

from pyrovae.model.likelihoods import Bernoulli


class NaNAfterSteps(Bernoulli):
    """A Bernoulli likelihood whose logits become NaN from the ``nan_at_step``-th (0-based) training
    step on; validation, sampling and the contract check are left alone."""

    def __init__(self, latent_dim: int, data_shape: tuple[int, ...], hidden: list[int] = (400,),
                 nan_at_step: int = 0):
        super().__init__(latent_dim, data_shape, hidden)
        self.nan_at_step = nan_at_step
        self.training_calls = 0

    def distribution(self, logits: torch.Tensor):
        if self.training and torch.is_grad_enabled():
            if self.training_calls >= self.nan_at_step:
                logits = logits * float("nan")
            self.training_calls += 1
        return super().distribution(logits)
