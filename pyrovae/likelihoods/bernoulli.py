"""The Bernoulli likelihood for binary data (binarized MNIST)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyrovae.likelihoods.base import Likelihood
from pyrovae.nets import Decoder


class Bernoulli(Likelihood):
    r"""p(x|z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)) with an MLP decoder f on logits.

    ``forward(z)`` takes ``z`` of shape ``(*batch, latent_dim)`` and returns a distribution with
    ``batch_shape == batch`` and ``event_shape == data_shape``; its ``mean`` is the pixel
    probabilities. Only binary data has a log-likelihood under this model: grey levels are
    refused (binarize them, or choose ``continuous_bernoulli`` / ``gaussian``).

    References: Kingma & Welling, ICLR 2014, appendix C.1.
    """

    data_support = constraints.boolean
    data_hint = "set data.binarize = true, or choose a likelihood for grey levels"

    def __init__(self, latent_dim: int, data_shape: tuple[int, ...],
                 hidden: list[int] = (400,), activation: str = "relu"):
        super().__init__()
        self.decoder = Decoder(latent_dim, data_shape, list(hidden), activation)
        self.event_dims = len(data_shape)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(self.event_dims)
