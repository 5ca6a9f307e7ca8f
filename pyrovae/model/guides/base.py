"""What the amortized guides share: encoder features h(x) and a Gaussian head on them."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.functional import softplus

from pyrovae.model.nets import encoder


def context_order(latent_dim, data_shape) -> tuple[int, tuple[int, ...]]:
    """``(latent_dim, data_shape)``, the order every component's constructor takes them in.

    pyrovae 0.2's guides took ``(data_shape, latent_dim)``: such a positional call still works,
    swapped back with a deprecation warning.
    """
    if isinstance(latent_dim, (tuple, list)) and isinstance(data_shape, int):
        warnings.warn(
            "guides take (latent_dim, data_shape), as priors and likelihoods do; the order "
            "(data_shape, latent_dim) of pyrovae 0.2 will go: pass them by keyword",
            DeprecationWarning,
            stacklevel=3,
        )
        latent_dim, data_shape = data_shape, latent_dim
    return int(latent_dim), tuple(int(d) for d in data_shape)


class EncoderGuide(nn.Module):
    r"""An encoder ``h = encoder(x)`` (an MLP, or with ``net = "conv"`` strided convolutions then an MLP:
    :mod:`pyrovae.model.nets`) plus a linear head from h to ``outputs`` numbers.

    Shapes: ``x`` is ``(B, *data_shape)``, ``h`` is ``(B, features)``, the head's output
    ``(B, outputs)``. Subclasses turn the head's numbers (and h, for flows) into q(z|x).
    """

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], activation: str, outputs: int,
                 net: str = "mlp", conv_channels: list[int] = (32, 64)):  # fmt: skip
        super().__init__()
        self.encoder = encoder(net, data_shape, list(hidden), activation, list(conv_channels))
        self.head = nn.Linear(self.encoder.out_features, outputs)

    @property
    def features(self) -> int:
        return self.encoder.out_features

    @staticmethod
    def positive(raw: torch.Tensor) -> torch.Tensor:
        """``softplus(raw) + 1e-5``: positive, without the overflow of ``exp``."""
        return softplus(raw) + 1e-5
