"""The shared shape of the flow posteriors: a Gaussian and conditional flow steps, all from h(x)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn
from torch.distributions.transforms import AffineTransform

from pyrovae.model.guides.base import EncoderGuide, context_order


class ConditionalFlowGuide(EncoderGuide):
    r"""q(z|x): eps ~ N(0, I), pushed through an affine map and ``steps`` flow steps, all amortized.

    The encoder gives features h(x) and, from its head, mu(x) and sigma(x). The sample is
    either ``z = f_T(... f_1(mu + sigma * eps; h) ...; h)`` (``gaussian_first = True``, the
    IAF construction) or ``z = mu + sigma * f_T(... f_1(eps; h) ...; h)`` (flows that act on a
    fixed box, such as splines). Every step is a Pyro ``ConditionalTransformModule``
    conditioned on h: the flow is amortized, one network for every x.

    .. math:: \log q(z|x) = \log N(\epsilon; 0, I) - \sum_t \log|\det \partial f_t / \partial z_{t-1}|
              - \sum_i \log \sigma_i(x)

    Subclasses implement :meth:`make_step`; step ``t`` orders the autoregression forwards for
    even t and backwards for odd t (Kingma et al. 2016 reverse the order between steps).
    Shapes: ``forward(x)`` returns batch ``(B,)``, event ``(latent_dim,)``; ``sample((k,))`` is
    ``(k, B, latent_dim)`` and ``log_prob`` accepts any leading dims. A sample's log-density
    is cached by the transforms; scoring an arbitrary z inverts the autoregressive steps one
    dimension at a time (latent_dim network passes).
    """

    gaussian_first: bool = True

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int],
        activation: str,
        steps: int,
        flow_hidden: list[int],
        net: str = "mlp",
        conv_channels: list[int] = (32, 64),
    ):
        latent_dim, data_shape = context_order(latent_dim, data_shape)
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        super().__init__(data_shape, hidden, activation, 2 * latent_dim, net, conv_channels)
        self.latent_dim = latent_dim
        self.steps = nn.ModuleList(
            self.make_step(latent_dim, self.features, list(flow_hidden), self.order(latent_dim, t))
            for t in range(steps)
        )

    @staticmethod
    def order(latent_dim: int, step: int) -> torch.Tensor:
        forwards = torch.arange(latent_dim)
        return forwards if step % 2 == 0 else forwards.flip(0)

    def make_step(
        self, latent_dim: int, context_dim: int, hidden: list[int], permutation: torch.Tensor
    ) -> ConditionalTransformModule:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dist.TorchDistribution:
        h = self.encoder(x)
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        standard = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
        # cached like the flow steps: scoring a sample then inverts no step (a spline's
        # inverse would otherwise take latent_dim network passes)
        affine = AffineTransform(loc, self.positive(raw_scale), event_dim=1, cache_size=1)
        flow = [step.condition(h) for step in self.steps]
        transforms = [affine, *flow] if self.gaussian_first else [*flow, affine]
        return dist.TransformedDistribution(standard, transforms)
