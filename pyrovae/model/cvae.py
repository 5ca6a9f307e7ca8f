r"""The conditional VAE: the label is given, so every number is about log p(x | y).

Generative story and amortized posterior (Sohn, Lee & Yan 2015; Kingma et al. 2014, M2 with y
observed)::

    z ~ p(z)  or  p(z | y)      (prior; per class with ``conditional_prior``)
    x ~ p(x | z, y)             (likelihood)
    q(z | x, y)                 (guide / posterior)

built from the same components as the :class:`~pyrovae.model.vae.VAE`: the guide component reads
``[x, onehot(y)]`` (it is built for data of shape ``(prod(data_shape) + num_classes,)``), the
likelihood component ``[z, onehot(y)]`` (built for ``latent_dim + num_classes``), so every guide
(flows included) and likelihood of the tables conditions on the label without a class of its own.
``model(x, y)`` and ``guide(x, y)`` *need* the labels: trained and scored with them, its ELBO,
IWAE and AIS estimate log p(x | y); ``pyrovae sample --labels`` draws p(x | y).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.model.base import Count
from pyrovae.model.nets import with_label
from pyrovae.model.vae import ComponentModel, ComponentSpec


class ConditionalVAE(ComponentModel):
    """q(z|x,y), p(x|z,y) and p(z) or, with ``conditional_prior``, a learned Gaussian p(z|y) per class.

    Sites: ``z`` (latent), ``x`` (observed). ``num_classes`` comes from the data.
    """

    pyro_name = "cvae"

    def __init__(
        self,
        prior: nn.Module | ComponentSpec = "standard_normal",
        guide: nn.Module | ComponentSpec = "diagonal_normal",
        likelihood: nn.Module | ComponentSpec = "bernoulli",
        *,
        latent_dim: Count,
        data_shape: Sequence[int],
        num_classes: Count,
        conditional_prior: bool = False,
    ):
        super().__init__()
        self.latent_dim, self.num_classes = int(latent_dim), int(num_classes)
        self.data_shape = tuple(int(d) for d in data_shape)
        with_y = (math.prod(self.data_shape) + self.num_classes,)
        self.posterior = self._component("guide", guide, {"latent_dim": self.latent_dim, "data_shape": with_y})
        self.prior = self._component(
            "prior", prior, {"latent_dim": self.latent_dim, "data_shape": with_y, "guide": self.posterior}
        )
        self.likelihood = self._component(
            "likelihood", likelihood, {"latent_dim": self.latent_dim + self.num_classes, "data_shape": self.data_shape}
        )
        self.conditional_prior = conditional_prior
        if conditional_prior:  # p(z | y) = N(m_y, diag s_y^2), learned per class
            self.class_loc = nn.Parameter(torch.zeros(self.num_classes, self.latent_dim))
            self.class_scale = nn.Parameter(torch.zeros(self.num_classes, self.latent_dim))

    def prior_given(self, y: torch.Tensor):
        if not self.conditional_prior:
            return self.prior()
        return dist.Normal(self.class_loc[y], softplus(self.class_scale[y]) + 1e-5).to_event(1)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior_given(y))
            pyro.sample("x", self.likelihood(with_label(z, y, self.num_classes)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.register()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(with_label(x.flatten(1), y, self.num_classes)))
