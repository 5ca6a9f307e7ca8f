"""What every likelihood shares: a data check against the support it models."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.distributions import constraints

from pyrovae.errors import UserError
from pyrovae.model.nets import decoder


class Likelihood(nn.Module):
    r"""Base class for p(x|z) modules.

    Subclasses implement ``forward(z)`` returning a distribution whose event shape is the
    data shape, and set ``data_support`` to the constraint their data must satisfy. The
    pipeline calls :meth:`check_data` once on every split before training, so a likelihood is
    never asked for a "log-probability" of data it does not model (a Bernoulli on grey levels
    is not a normalized density, so its number is no log-likelihood).
    """

    data_support: constraints.Constraint = constraints.real
    #: what to tell a user whose data is outside ``data_support``
    data_hint: str = ""
    #: True for a probability mass over discrete data (8-bit grey levels): runs then also log
    #: ``<split>/bpd``, the negative ELBO in bits per data element (:func:`bits_per_dim`)
    reports_bits_per_dim: bool = False

    def check_data(self, x: torch.Tensor, split: str = "data") -> None:
        ok = self.data_support.check(x)
        if not bool(ok.all()):
            bad = x[~ok].flatten()[:3].tolist()
            raise UserError(
                f"likelihood {type(self).__name__} needs data in {self.data_support}, but the "
                f"{split} split has values such as {bad}{'; ' + self.data_hint if self.data_hint else ''}"
            )


def bits_per_dim(nats: float, data_shape: tuple[int, ...]) -> float:
    r"""Nats per datapoint -> bits per data element: ``nats / (D ln 2)``, D = prod(data_shape)."""
    return nats / (math.prod(data_shape) * math.log(2))


class DecodedLikelihood(Likelihood):
    r"""A likelihood whose parameters are one MLP output per data element: p(x|z) = D(f(z)).

    Subclasses implement :meth:`distribution` (the elementwise distribution of the decoder
    output); ``forward(z)`` reinterprets the data dimensions as the event, so for ``z`` of
    shape ``(*batch, latent_dim)`` the result has ``batch_shape == batch`` and
    ``event_shape == data_shape``.
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
        super().__init__()
        self.decoder = decoder(net, latent_dim, data_shape, list(hidden), activation, 1, list(conv_channels))
        self.event_dims = len(data_shape)

    def distribution(self, output: torch.Tensor):
        raise NotImplementedError

    def forward(self, z: torch.Tensor):
        return self.distribution(self.decoder(z)).to_event(self.event_dims)
