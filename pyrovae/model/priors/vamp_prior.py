"""The VampPrior: a mixture of the posterior itself at learned pseudo-inputs."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.model.priors.mixture import Mixture


class VampPrior(nn.Module):
    r"""p(z) = (1/C) sum_k q(z | u_k), the guide's own posterior at C learned pseudo-inputs.

    The "variational mixture of posteriors" prior approximates the aggregate posterior
    (1/N) sum_n q(z|x_n), the prior that maximizes the ELBO, by C pseudo-inputs ``u_k``
    shaped like the data and trained with everything else. ``guide`` is the VAE's q(z|x)
    module: any guide works, including flows (each component is then a flow). The guide is
    held, not registered, so its parameters belong (and are named) once, to the VAE's
    posterior; move the guide to a device with the VAE.

    ``pseudo_inputs`` is C (500 in the paper); they start at ``N(init_mean, init_std^2)``
    element-wise (the paper's code initializes near the data's grey levels with a small
    spread). ``forward()`` returns a mixture with ``batch_shape == ()`` and
    ``event_shape == (latent_dim,)``. Cost: every ``log p(z)`` evaluates q(z|u_k) for all
    k, i.e. a (B, C) table per step; for flow guides whose inverse is sequential this is
    expensive at large C and latent_dim.

    References: Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018, eq. (9).
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        guide: nn.Module,
        pseudo_inputs: int = 500,
        init_mean: float = 0.5,
        init_std: float = 0.1,
    ):
        super().__init__()
        if pseudo_inputs < 1:
            raise ValueError(f"pseudo_inputs must be at least 1, got {pseudo_inputs}")
        self.latent_dim = latent_dim
        self._guide = (guide,)  # a tuple: nn.Module does not register what it holds
        self.pseudo_inputs = nn.Parameter(init_mean + init_std * torch.randn(pseudo_inputs, *data_shape))

    @property
    def guide(self) -> nn.Module:
        return self._guide[0]

    def forward(self) -> dist.TorchDistribution:
        components = self.guide(self.pseudo_inputs)  # batch (C,), event (latent_dim,)
        count = self.pseudo_inputs.shape[0]
        uniform = dist.Categorical(logits=self.pseudo_inputs.new_full((count,), -math.log(count)))
        return Mixture(uniform, components)
