"""The Bernoulli likelihood for binary data (binarized MNIST)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.nn.functional import logsigmoid

from pyrovae.model.likelihoods.base import DecodedLikelihood


class BernoulliLogits(dist.Bernoulli):
    r"""``dist.Bernoulli`` on logits :math:`\ell`, scored for binary :math:`x` as
    :math:`\log p(x) = x\ell - \mathrm{softplus}(\ell) = \log\sigma((2x - 1)\,\ell)`.

    The same number as torch's ``-binary_cross_entropy_with_logits`` (to float round-off) in
    two elementwise passes over the logits (a multiply and a log-sigmoid) instead of its longer
    kernel or the three passes of the middle form. At IWAE sizes this log-density costs about
    as much as the decoder's matmuls, so each pass counts (``benchmarks/eval_speed.py``). The
    right-hand form holds for x in {0, 1} only: no validation here, because :class:`Bernoulli`
    checks once, up front, that the data are binary.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return logsigmoid(self.logits * (2 * value - 1))


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
        return BernoulliLogits(logits=logits, validate_args=False)
