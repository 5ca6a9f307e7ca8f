"""A Gaussian posterior with correlations: low rank plus diagonal covariance."""

from __future__ import annotations

from typing import Literal

import pyro.distributions as dist
import torch

from pyrovae.model.guides.base import EncoderGuide, context_order


class LowRankNormal(EncoderGuide):
    r"""q(z|x) = N(z; mu(x), W(x) W(x)^T + diag(d(x))), W of shape (latent_dim, rank).

    The encoder's head gives mu (D numbers), the factor W (D * rank) and the diagonal d
    (D numbers, ``softplus(.) + 1e-5``). ``rank = latent_dim`` can express any covariance;
    a small rank captures the leading posterior correlations at O(D r) cost instead of the
    O(D^3) of a full Cholesky factor. ``forward(x)``: ``x`` is ``(B, *data_shape)``; the
    distribution has ``batch_shape == (B,)`` and ``event_shape == (latent_dim,)``.

    References: Rezende, Mohamed & Wierstra, "Stochastic Backpropagation and Approximate
    Inference in Deep Generative Models", ICML 2014, section 4.3 (rank-one plus diagonal).
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int] = (400,),
        activation: str = "relu",
        rank: int = 2,
        net: Literal["mlp", "conv"] = "mlp",
        conv_channels: list[int] = (32, 64),
    ):
        latent_dim, data_shape = context_order(latent_dim, data_shape)
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        super().__init__(data_shape, hidden, activation, latent_dim * (2 + rank), net, conv_channels)
        self.latent_dim, self.rank = latent_dim, rank

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        out = self.head(self.encoder(x))
        d = self.latent_dim
        loc, raw_diag, factor = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        factor = factor.reshape(*out.shape[:-1], d, self.rank)
        return dist.LowRankMultivariateNormal(loc, factor, self.positive(raw_diag))
