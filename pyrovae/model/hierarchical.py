r"""The two-level hierarchical VAE of Tomczak & Welling (2018, the "HVAE"): two stochastic layers.

.. math::
    z_2 \sim p(z_2),\quad z_1 \mid z_2 \sim N(\mu(z_2), \sigma(z_2)),\quad
    x \sim p(x \mid z_1, z_2);\qquad q(z_2 \mid x)\, q(z_1 \mid x, z_2)

``z2`` (``top_dim``) is the upper layer: its prior and its posterior are components of the tables
(so the VampPrior on z2 -- the paper's best model -- is ``prior = "vamp_prior"``, built on the
guide q(z2|x)); the likelihood component reads ``[z1, z2]``. The two conditionals p(z1 | z2) and
q(z1 | x, z2) are Gaussian MLPs (:class:`~pyrovae.model.nets.GaussianMLP`; the paper's are gated
MLPs of 300 units). Sites: ``z2``, ``z1`` (latent) and ``x``; every score pyrovae reports reads
both levels from the traces: ``val/kl/z1`` and ``val/kl/z2``, IWAE and AIS over both, active
units per level.

References: Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018, section 3.3 and Table 2;
Burda et al. 2016 (two stochastic layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import torch
from torch import nn

from pyrovae.model.base import Count
from pyrovae.model.nets import GaussianMLP
from pyrovae.model.vae import ComponentModel, ComponentSpec


class HierarchicalVAE(ComponentModel):
    """z2 -> z1 -> x with q(z2|x) q(z1|x, z2); ``latent_dim`` is z1's size, ``top_dim`` z2's."""

    pyro_name = "hvae"

    def __init__(
        self,
        prior: nn.Module | ComponentSpec = "standard_normal",
        guide: nn.Module | ComponentSpec = "diagonal_normal",
        likelihood: nn.Module | ComponentSpec = "bernoulli",
        *,
        latent_dim: Count,
        data_shape: Sequence[int],
        top_dim: Count = 40,
        hidden: list[int] = (300,),
        activation: str = "relu",
    ):
        super().__init__()
        self.latent_dim, self.top_dim = int(latent_dim), int(top_dim)
        self.data_shape = tuple(int(d) for d in data_shape)
        top = {"latent_dim": self.top_dim, "data_shape": self.data_shape}
        self.posterior = self._component("guide", guide, top)  # q(z2 | x)
        self.prior = self._component("prior", prior, {**top, "guide": self.posterior})  # p(z2)
        self.likelihood = self._component(
            "likelihood", likelihood, {"latent_dim": self.latent_dim + self.top_dim, "data_shape": self.data_shape}
        )
        self.lower_prior = GaussianMLP(self.top_dim, self.latent_dim, list(hidden), activation)  # p(z1 | z2)
        self.lower_posterior = GaussianMLP(
            math.prod(self.data_shape) + self.top_dim, self.latent_dim, list(hidden), activation
        )  # q(z1 | x, z2)

    def model(self, x: torch.Tensor) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.lower_prior(z2))
            pyro.sample("x", self.likelihood(torch.cat([z1, z2.expand(*z1.shape[:-1], -1)], -1)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.posterior(x))
            flat = x.flatten(1)
            h = torch.cat([flat.expand(*z2.shape[:-1], -1), z2], -1)
            pyro.sample("z1", self.lower_posterior(h))
