r"""The mixture distribution of the mixture priors (mixture of Gaussians, VampPrior).

p(z) = sum_k pi_k p_k(z), scored as ``logsumexp_k(log pi_k + log p_k(z))`` over a table of
component log-densities of shape ``(..., C)``. Two things differ from Pyro's
``MixtureSameFamily``:

- **Any component family.** ``z`` of shape ``(..., D)`` is expanded to ``(..., C, D)`` before
  the components score it: conditional flows (Pyro's autoregressive networks expand their
  context to the value's shape) do not broadcast a 1 against C.
- **Diagonal Gaussian components by two matrix products.** For components
  ``Independent(Normal(mu, sigma), 1)`` with ``mu, sigma`` of shape ``(C, D)`` the table is

  .. math:: \log p_k(z) = -\tfrac12 \big[(z^2)\,(\sigma_k^{-2})^\top - 2 z\,(\mu_k \sigma_k^{-2})^\top
            + \textstyle\sum_d \mu_{kd}^2 \sigma_{kd}^{-2}\big] - \sum_d \log \sigma_{kd} - \tfrac D2 \log 2\pi,

  two ``(..., D) @ (D, C)`` products instead of an elementwise ``(..., C, D)`` tensor: the
  VampPrior's 500 components made IWAE with K = 5000 about 37 times slower than under N(0, I)
  (3.1 against 0.08 s per test image), and a training step about 5 times slower (85 ms at batch
  128: the model's plate expands the prior, so every step took the elementwise path; the
  README's model-zoo section has the figures after the change). The expansion cancels terms of size
  ``(z / sigma)^2`` against each other, so it is computed in float64 (error ~1e-16 of those
  terms instead of float32's ~1e-7) and returned in the input's dtype.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import Independent, Normal


def diagonal_gaussian_parameters(components) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)``, each ``(C, D)``, when ``components`` are the same C diagonal Gaussians
    for every batch element; else ``None``.

    A ``pyro.plate`` expands the prior to the batch, components ``(B, C)``: those are views of
    one ``(C, D)`` table (stride 0 along B), which is taken back so the matrix path still applies.
    """
    if not (
        isinstance(components, Independent)
        and components.reinterpreted_batch_ndims == 1
        and type(components.base_dist) in (Normal, dist.Normal)
        and components.batch_shape
    ):
        return None
    shape = (*components.batch_shape, *components.event_shape)
    loc, scale = components.base_dist.loc.expand(shape), components.base_dist.scale.expand(shape)
    leading = range(len(components.batch_shape) - 1)  # the dimensions in front of C
    if any(t.stride(i) != 0 and t.shape[i] != 1 for t in (loc, scale) for i in leading):
        return None
    first = (0,) * len(leading)
    return loc[first], scale[first]


def diagonal_gaussian_table(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log N(z; loc_k, diag scale_k^2)`` for every component k: ``z (..., D)`` -> ``(..., C)``."""
    z, loc, precision = z.double(), loc.double(), scale.double().pow(-2)
    quadratic = z.pow(2) @ precision.T - 2 * z @ (loc * precision).T + (loc.pow(2) * precision).sum(-1)
    log_norm = -scale.double().log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
    return (log_norm - 0.5 * quadratic).to(scale.dtype)


class Mixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` scoring any component family, and diagonal Gaussians by matrix products."""

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        event = self._event_shape
        x = x.unsqueeze(-1 - len(event))
        return x.expand(*x.shape[: x.dim() - len(event) - 1], self._num_component, *event)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(x)
        gaussians = diagonal_gaussian_parameters(self.component_distribution)
        if gaussians is None:
            table = self.component_distribution.log_prob(self._pad(x))
        else:
            table = diagonal_gaussian_table(x, *gaussians)
        return torch.logsumexp(table + torch.log_softmax(self.mixture_distribution.logits, dim=-1), dim=-1)
