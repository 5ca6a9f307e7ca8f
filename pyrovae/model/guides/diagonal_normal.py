"""The mean-field Gaussian posterior of the original VAE."""

from __future__ import annotations

from typing import Literal

import pyro.distributions as dist
import torch

from pyrovae.model.guides.base import EncoderGuide, context_order


class DiagonalNormal(EncoderGuide):
    r"""q(z|x) = N(z; mu(x), diag(sigma(x)^2)) with an MLP encoder.

    ``forward(x)`` takes ``x`` of shape ``(B, *data_shape)`` and returns a distribution with
    ``batch_shape == (B,)`` and ``event_shape == (latent_dim,)``. The scale is
    ``softplus(.) + 1e-5``, which keeps it positive without the overflow of ``exp``.

    References: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int] = (400,),
        activation: str = "relu",
        net: Literal["mlp", "conv"] = "mlp",
        conv_channels: list[int] = (32, 64),
    ):
        latent_dim, data_shape = context_order(latent_dim, data_shape)
        super().__init__(data_shape, hidden, activation, 2 * latent_dim, net, conv_channels)

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = self.head(self.encoder(x)).chunk(2, dim=-1)
        return dist.Normal(loc, self.positive(raw_scale)).to_event(1)
