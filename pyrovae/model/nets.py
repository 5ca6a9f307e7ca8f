"""Small network pieces shared by guides and likelihoods.

Guides read the data and likelihoods write it with multilayer perceptrons over flattened data
(``net = "mlp"``, the default) or, for images, strided convolutions (``net = "conv"``); these helpers
keep that choice in one place, so that a component class only states what distribution its network
parametrizes. Every network accepts leading sample dimensions (IWAE and AIS pass ``(K, B, ...)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pyrovae.errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU}


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

    def __init__(
        self,
        latent_dim: int,
        data_shape: Sequence[int],
        hidden: Sequence[int],
        activation: str = "relu",
        channels: int = 1,
    ):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.channels = channels
        self.net = mlp([latent_dim, *hidden, channels * math.prod(self.data_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        shape = self.data_shape if self.channels == 1 else (self.channels, *self.data_shape)
        return out.reshape(*z.shape[:-1], *shape)


class GaussianMLP(nn.Module):
    r"""A diagonal Gaussian whose parameters an MLP computes from its input:
    :math:`N(\mu(h), \mathrm{diag}\,\sigma(h)^2)`, :math:`\sigma = \mathrm{softplus}(\cdot) + 10^{-5}`.

    ``forward(h)``: ``h`` is ``(*batch, in_features)``; the distribution has batch shape ``batch``
    and event shape ``(out_features,)``. The conditionals of a hierarchical VAE, p(z1 | z2) and
    q(z1 | x, z2), are such networks (Tomczak & Welling 2018, the HVAE).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int], activation: str = "relu"):
        super().__init__()
        self.net = mlp([in_features, *hidden, 2 * out_features], activation)

    def forward(self, h: torch.Tensor):
        import pyro.distributions as dist

        loc, raw = self.net(h).chunk(2, -1)
        return dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-5).to_event(1)


def with_label(h: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """``h`` (``(*batch, n)``) with the one-hot label ``y`` (``batch``-broadcastable, integer)
    appended: ``(*broadcast, n + classes)``. Leading sample and enumeration dimensions of either
    broadcast, so a decoder sees each draw of z beside its datapoint's label."""
    onehot = torch.nn.functional.one_hot(y.long(), classes).to(h.dtype)
    shape = torch.broadcast_shapes(h.shape[:-1], onehot.shape[:-1])
    return torch.cat([h.expand(*shape, h.shape[-1]), onehot.expand(*shape, classes)], -1)


def _leading(x: torch.Tensor, event: int) -> tuple[torch.Size, torch.Tensor]:
    """``x`` of shape ``(*batch, *event_dims)`` as ``(N, *event_dims)``, and the batch shape."""
    batch = x.shape[: x.dim() - event]
    return batch, x.reshape(-1, *x.shape[x.dim() - event :])


class ConvEncoder(nn.Module):
    r"""Features :math:`h(x)` of an image: strided convolutions (kernel 4, stride 2, padding 1, each
    halving the height and width), then an MLP with an activation at the end.

    Shapes: ``x`` is ``(*batch, C, H, W)`` (any leading sample dimensions), the output
    ``(*batch, hidden[-1])``. ``channels`` are the convolutions' output channels, e.g. ``[32, 64]``
    (a 28x28 image becomes 64 x 7 x 7). References: Radford et al. 2016 (DCGAN's strided blocks).
    """

    def __init__(self, data_shape: Sequence[int], hidden: Sequence[int], activation: str = "relu",
                 channels: Sequence[int] = (32, 64)):  # fmt: skip
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"a convolutional encoder needs images (C, H, W), got data of shape {tuple(data_shape)}")
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation '{activation}': choose one of {', '.join(ACTIVATIONS)}")
        layers, previous = [], data_shape[0]
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), ACTIVATIONS[activation]()]
            previous = width
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *data_shape)).numel()
        self.out_features = hidden[-1] if hidden else flat
        self.head = mlp([flat, *hidden], activation, final_activation=True) if hidden else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, images = _leading(x, 3)
        return self.head(self.convs(images).flatten(1)).reshape(*batch, self.out_features)


class ConvDecoder(nn.Module):
    r"""The mirror of :class:`ConvEncoder`: an MLP from ``z`` to a small feature map, then transposed
    convolutions (kernel 4, stride 2, padding 1) doubling it back to the image's height and width
    (cropped where the image's size is not a multiple of ``2 ** len(channels)``).

    Shapes: ``z`` is ``(*batch, latent_dim)``; the output is ``(*batch, *data_shape)`` when
    ``out_channels == 1``, else ``(*batch, out_channels, *data_shape)``, as :class:`Decoder`'s.
    """

    def __init__(self, latent_dim: int, data_shape: Sequence[int], hidden: Sequence[int],
                 activation: str = "relu", out_channels: int = 1, channels: Sequence[int] = (32, 64)):  # fmt: skip
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"a convolutional decoder needs images (C, H, W), got data of shape {tuple(data_shape)}")
        self.data_shape, self.out_channels = tuple(data_shape), out_channels
        c, h, w = self.data_shape
        scale = 2 ** len(channels)
        self.start = (channels[-1], -(-h // scale), -(-w // scale))
        self.head = mlp([latent_dim, *hidden, math.prod(self.start)], activation, final_activation=True)
        layers, widths = [], [*reversed(channels), out_channels * c]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch, codes = _leading(z, 1)
        c, h, w = self.data_shape
        out = self.deconvs(self.head(codes).reshape(-1, *self.start))[..., :h, :w]
        shape = self.data_shape if self.out_channels == 1 else (self.out_channels, *self.data_shape)
        return out.reshape(*batch, *shape)


#: the networks a component may read its input with: ``net = "mlp"`` (flattened data) or ``"conv"`` (images)
NETS = ("mlp", "conv")


def encoder(net: str, data_shape: Sequence[int], hidden: Sequence[int], activation: str = "relu",
            conv_channels: Sequence[int] = (32, 64)) -> nn.Module:  # fmt: skip
    """The encoder a guide's ``net`` names (each has ``out_features``)."""
    if net == "conv":
        return ConvEncoder(data_shape, hidden, activation, conv_channels)
    if net != "mlp":
        raise ValueError(f"net must be one of {', '.join(NETS)}, got {net!r}")
    return Encoder(data_shape, hidden, activation)


def decoder(net: str, latent_dim: int, data_shape: Sequence[int], hidden: Sequence[int], activation: str = "relu",
            channels: int = 1, conv_channels: Sequence[int] = (32, 64)) -> nn.Module:  # fmt: skip
    """The decoder a likelihood's ``net`` names."""
    if net == "conv":
        return ConvDecoder(latent_dim, data_shape, hidden, activation, channels, conv_channels)
    if net != "mlp":
        raise ValueError(f"net must be one of {', '.join(NETS)}, got {net!r}")
    return Decoder(latent_dim, data_shape, hidden, activation, channels)
