"""Small network pieces shared by guides and likelihoods.

Guides and decoders are multilayer perceptrons over flattened data; these helpers keep
that choice in one place so that a component class only states what distribution its
network parametrizes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pyrovae.errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU,
               "gelu": nn.GELU}


def mlp(sizes: Sequence[int], activation: str = "relu", final_activation: bool = False) -> nn.Sequential:
    """Linear layers of ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between them."""
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation '{activation}': choose one of {', '.join(ACTIVATIONS)}")
    if any(int(s) <= 0 for s in sizes):
        raise UserError(f"layer sizes must be positive, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    r"""Features :math:`h(x)` of a datapoint: flatten, then an MLP with an activation at the end.

    Shapes: ``x`` is ``(*batch, *data_shape)``, the output ``(*batch, hidden[-1])``.
    Guides put their heads (means, scales, flow contexts) on top of these features.
    """

    def __init__(self, data_shape: Sequence[int], hidden: Sequence[int], activation: str = "relu"):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.in_features = math.prod(self.data_shape)
        self.out_features = hidden[-1] if hidden else self.in_features
        self.net = mlp([self.in_features, *hidden], activation, final_activation=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.data_shape)]
        return self.net(x.reshape(*batch, self.in_features))


class Decoder(nn.Module):
    r"""An MLP from ``z`` to ``channels`` numbers per data element.

    Shapes: ``z`` is ``(*batch, latent_dim)``; the output is ``(*batch, *data_shape)`` when
    ``channels == 1``, else ``(*batch, channels, *data_shape)`` (one slice per parameter of
    the likelihood, e.g. mean and log-scale).
    """

    def __init__(self, latent_dim: int, data_shape: Sequence[int], hidden: Sequence[int],
                 activation: str = "relu", channels: int = 1):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.channels = channels
        self.net = mlp([latent_dim, *hidden, channels * math.prod(self.data_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        shape = self.data_shape if self.channels == 1 else (self.channels, *self.data_shape)
        return out.reshape(*z.shape[:-1], *shape)
