"""A learnable mixture-of-Gaussians prior."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.model.priors.mixture import Mixture


class MixtureOfGaussians(nn.Module):
    r"""p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)), every pi, mu and sigma learned.

    ``components`` is K. The weights are ``softmax`` of free logits (initially uniform), the
    means start at ``init_spread * N(0, I)`` so the components do not coincide, and the scales
    are ``softplus(.) + 1e-4`` starting at 1. ``forward()`` returns a
    :class:`~pyrovae.model.priors.mixture.Mixture` with ``batch_shape == ()`` and ``event_shape == (latent_dim,)``.
    There is no closed-form KL from a Gaussian q(z|x) to it: the ELBO uses the Monte Carlo
    estimate log q(z|x) - log p(z) (also under ``TraceMeanField_ELBO``).

    References: Dilokthanakul et al., "Deep Unsupervised Clustering with Gaussian Mixture
    Variational Autoencoders", 2016; Tomczak & Welling, AISTATS 2018, section 2.
    """

    def __init__(self, latent_dim: int, components: int = 10, init_spread: float = 1.0):
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(init_spread * torch.randn(components, latent_dim))
        # softplus^-1(1): every component starts with unit scale
        self.raw_scales = nn.Parameter(torch.full((components, latent_dim), 1.0).expm1().log())

    def forward(self) -> dist.TorchDistribution:
        weights = dist.Categorical(logits=self.logits)
        gaussians = dist.Normal(self.means, softplus(self.raw_scales) + 1e-4).to_event(1)
        return Mixture(weights, gaussians)
