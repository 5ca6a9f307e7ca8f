"""The standard normal prior of Kingma & Welling (2014)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormal(nn.Module):
    r"""p(z) = N(z; 0, I).

    ``forward()`` returns a distribution with ``batch_shape == ()`` and
    ``event_shape == (latent_dim,)``. The location and scale are buffers so that
    ``.to(device)`` moves them with the rest of the model.

    References: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
