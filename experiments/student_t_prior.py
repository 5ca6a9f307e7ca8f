"""A heavy-tailed Student-t prior: a user's own prior, loaded by import path, no pyrovae edit.

Use it in a config as ``name = "student_t_prior:StudentT"`` with ``experiments/`` on
PYTHONPATH (see ``experiments/student_t.toml``).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StudentT(nn.Module):
    r"""p(z) = prod_i StudentT(z_i; nu, 0, 1): heavier tails than N(0, I), so an outlying
    datapoint's code costs less KL. ``df`` is nu (nu -> infinity recovers N(0, I)).
    ``forward()`` returns batch shape ``()`` and event shape ``(latent_dim,)``; the KL to it
    has no closed form, so the ELBO uses log q(z|x) - log p(z) at the sample.
    """

    def __init__(self, latent_dim: int, df: float = 3.0):
        super().__init__()
        if df <= 0:
            raise ValueError(f"df must be positive, got {df}")
        # buffers, so that .to(device) moves them with the model
        self.register_buffer("df", torch.full((latent_dim,), float(df)))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)
