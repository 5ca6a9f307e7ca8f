"""A Gaussian likelihood with a learned scale, for real-valued data."""

from __future__ import annotations

from typing import Literal

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.model.likelihoods.base import Likelihood
from pyrovae.model.nets import decoder


class Gaussian(Likelihood):
    r"""p(x|z) = prod_i N(x_i; mu(z)_i, sigma_i^2), mu an MLP, sigma learned.

    ``scale = "global"`` learns one sigma, ``"per_pixel"`` one per data element (neither
    depends on z, which keeps the likelihood from collapsing its variance onto single
    points). ``hidden = []`` makes mu linear in z: with the standard normal prior this is
    probabilistic PCA, whose exact log p(x) the estimator tests compare against.
    ``forward(z)``: ``z`` is ``(*batch, latent_dim)``; the distribution has
    ``batch_shape == batch`` and ``event_shape == data_shape``.

    References: Tipping & Bishop, "Probabilistic Principal Component Analysis", 1999.
    """

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int] = (400,),
        activation: str = "relu",
        scale: Literal["global", "per_pixel"] = "global",
        init_scale: float = 1.0,
        net: Literal["mlp", "conv"] = "mlp",
        conv_channels: list[int] = (32, 64),
    ):
        super().__init__()
        if init_scale <= 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.decoder = decoder(net, latent_dim, data_shape, list(hidden), activation, 1, list(conv_channels))
        shape = () if scale == "global" else tuple(data_shape)
        # softplus^-1(init_scale): the scale starts where the user asked
        raw = torch.full(shape, float(init_scale)).expm1().log()
        self.raw_scale = nn.Parameter(raw)
        self.event_dims = len(data_shape)

    @property
    def scale(self) -> torch.Tensor:
        return softplus(self.raw_scale) + 1e-4

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        loc = self.decoder(z)
        return dist.Normal(loc, self.scale.expand(loc.shape)).to_event(self.event_dims)
