"""The discretized logistic likelihood over the 256 grey levels of 8-bit images."""

from __future__ import annotations

from typing import Literal

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.nn.functional import logsigmoid, softplus

from pyrovae.model.likelihoods.base import Likelihood
from pyrovae.model.nets import decoder

LEVELS = 256
HALF_BIN = 0.5 / (LEVELS - 1)


class _EightBit(constraints.Constraint):
    """Values k / 255 for integer k in [0, 255] (to within float rounding)."""

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * (LEVELS - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() < 1e-3)

    def __repr__(self) -> str:
        return "the 8-bit grid {0, 1/255, ..., 1}"


eight_bit = _EightBit()


class DiscretizedLogisticDistribution(TorchDistribution):
    r"""P(x = k/255) = F(k/255 + 1/510) - F(k/255 - 1/510), F the logistic CDF of (mu, s).

    The edge bins take the tails: P(x = 0) = F(1/510), P(x = 1) = 1 - F(1 - 1/510). With
    a = (x + 1/510 - mu)/s and b = (x - 1/510 - mu)/s the log-probability is computed as

    .. math:: \log(\sigma(a) - \sigma(b)) = \log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-(a-b)}),

    which is exact and finite for every a > b (no cancellation, unlike sigma(a) - sigma(b)).
    Element-wise: ``loc`` and ``scale`` have the same shape; ``event_shape == ()``.
    ``mean`` is the mean of the clipped continuous logistic,
    :math:`E[\mathrm{clip}(Y, 0, 1)] = s\,(\mathrm{softplus}(\mu/s) - \mathrm{softplus}((\mu - 1)/s))`,
    within 1/510 of the discretized mean (rounding moves a value by at most half a bin).

    References: Salimans, Karpathy, Chen & Kingma, "PixelCNN++", ICLR 2017, section 2.1;
    Kingma et al., NeurIPS 2016, appendix (discretized logistic for CIFAR-10).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = eight_bit

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return DiscretizedLogisticDistribution(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), validate_args=False
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        a = (value + HALF_BIN - self.loc) / self.scale
        b = (value - HALF_BIN - self.loc) / self.scale
        inner = logsigmoid(a) + logsigmoid(-b) + torch.log(-torch.expm1(-(a - b)))
        return torch.where(value < HALF_BIN, logsigmoid(a), torch.where(value > 1 - HALF_BIN, logsigmoid(-b), inner))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            y = self.loc + self.scale * (u.log() - (-u).log1p())  # logistic by inverse CDF
            return (y.clamp(0, 1) * (LEVELS - 1)).round() / (LEVELS - 1)

    @property
    def mean(self) -> torch.Tensor:
        s = self.scale
        return s * (softplus(self.loc / s) - softplus((self.loc - 1) / s))


class DiscretizedLogistic(Likelihood):
    r"""p(x|z) = prod_i DiscretizedLogistic(x_i; mu_i(z), s_i(z)) over the 256 levels k/255.

    The decoder gives two numbers per pixel: the location mu (in the [0, 1] units of the
    data) and log s, clamped below at ``min_log_scale`` (PixelCNN++ uses -7) so that a bin's
    probability cannot exceed float precision. Unlike a density on [0, 1], this is a
    probability mass, so -log p(x) is a proper code length: runs also log ``bpd`` =
    nats / (D ln 2), the number the generative-modelling literature reports.
    ``forward(z)``: ``z`` is ``(*batch, latent_dim)``; batch shape ``batch``, event shape
    ``data_shape``. Data must be on the 8-bit grid (MNIST with ``data.binarize = false``).

    References: Salimans et al., "PixelCNN++", ICLR 2017; Kingma et al., NeurIPS 2016.
    """

    data_support = eight_bit
    data_hint = "this likelihood models 8-bit images: set data.binarize = false and use x = k / 255"
    reports_bits_per_dim = True

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int] = (400,),
        activation: str = "relu",
        min_log_scale: float = -7.0,
        net: Literal["mlp", "conv"] = "mlp",
        conv_channels: list[int] = (32, 64),
    ):
        super().__init__()
        self.decoder = decoder(net, latent_dim, data_shape, list(hidden), activation, 2, list(conv_channels))
        self.event_dims = len(data_shape)
        self.min_log_scale = float(min_log_scale)

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        out = self.decoder(z)  # (*batch, 2, *data_shape)
        channel = out.dim() - self.event_dims - 1
        loc, log_scale = out.unbind(channel)
        scale = log_scale.clamp(min=self.min_log_scale).exp()
        return DiscretizedLogisticDistribution(loc, scale).to_event(self.event_dims)
