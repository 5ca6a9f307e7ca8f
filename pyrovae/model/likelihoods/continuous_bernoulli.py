"""The continuous Bernoulli likelihood for grey levels in [0, 1]."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from pyrovae.model.likelihoods.base import DecodedLikelihood


class ContinuousBernoulli(DecodedLikelihood):
    r"""p(x|z) = prod_i C(lambda_i) lambda_i^{x_i} (1 - lambda_i)^{1 - x_i}, lambda = sigmoid(f(z)).

    The Bernoulli's formula used on grey levels x in [0, 1] is not normalized; the
    normalizing constant :math:`C(\lambda) = 2\,\mathrm{artanh}(1 - 2\lambda) / (1 - 2\lambda)`
    (2 at lambda = 1/2) makes it a density on [0, 1], so the ELBO is a bound on a real
    log-likelihood. ``forward(z)``: ``z`` is ``(*batch, latent_dim)``; batch shape ``batch``,
    event shape ``data_shape``. Its ``mean`` (used for reconstructions and ``mse``) is *not*
    lambda: :math:`\lambda/(2\lambda - 1) + 1/(2\,\mathrm{artanh}(1 - 2\lambda))`.

    References: Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a pervasive
    error in variational autoencoders", NeurIPS 2019.
    """

    data_support = constraints.unit_interval
    data_hint = "scale the data to [0, 1]"

    def distribution(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=logits)
