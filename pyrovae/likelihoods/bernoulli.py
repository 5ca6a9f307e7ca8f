"""The Bernoulli likelihood for binary data (binarized MNIST)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyrovae.likelihoods.base import DecodedLikelihood


class Bernoulli(DecodedLikelihood):
    r"""p(x|z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)) with an MLP decoder f on logits.

    ``forward(z)`` takes ``z`` of shape ``(*batch, latent_dim)`` and returns a distribution with
    ``batch_shape == batch`` and ``event_shape == data_shape``; its ``mean`` is the pixel
    probabilities. Only binary data has a log-likelihood under this model: grey levels are
    refused (binarize them, or choose ``continuous_bernoulli`` / ``gaussian``).

    References: Kingma & Welling, ICLR 2014, appendix C.1.
    """

    data_support = constraints.boolean
    data_hint = "set data.binarize = true, or choose a likelihood for grey levels"

    def distribution(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=logits, validate_args=False)
