"""A normalizing-flow prior: a neural spline flow over z, from zuko."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import zuko
from pyro.contrib.zuko import ZukoToPyro
from torch import Size, nn


class ZukoDistribution(ZukoToPyro):
    """Pyro's ``ZukoToPyro`` plus ``rsample``/``sample`` (it only samples through ``__call__``).

    ``vae.generate`` and the contract tests call ``prior().sample((n,))``; the wrapper in
    Pyro 1.9.2 raises ``NotImplementedError`` there. ``expand`` keeps this class.
    """

    def rsample(self, sample_shape: Size = Size()) -> torch.Tensor:
        return self(sample_shape)

    def expand(self, batch_shape, _instance=None) -> ZukoDistribution:
        return ZukoDistribution(self.dist.expand(batch_shape))


class FlowPrior(nn.Module):
    r""":math:`p(z) = N(u; 0, I)\,|\det \partial u/\partial z|`, :math:`u = f(z)`, f a neural spline flow
    (zuko's ``NSF``).

    ``transforms`` autoregressive rational-quadratic spline steps with ``bins`` bins each,
    their conditioners MLPs of sizes ``hidden``, alternating the variable order.
    ``forward()`` returns a distribution with ``batch_shape == ()`` and
    ``event_shape == (latent_dim,)``.

    Why zuko, through ``pyro.contrib.zuko.ZukoToPyro``: a prior is *scored* at every training
    step (log p(z) at the guide's samples) and *sampled* only to draw images. zuko's
    autoregressive flows evaluate the density in one network pass (the MAF direction) and
    sample in latent_dim passes, the right trade here; zuko is maintained (Pyro's own flow
    API is not developed further) and a zuko flow is a module whose call returns a
    distribution, the same contract as ours. ``ZukoToPyro`` lacks ``sample``/``rsample``,
    which :class:`ZukoDistribution` adds. (The flow *guides* use Pyro's conditional
    transforms instead: there the sampling direction must be the fast one.)

    References: Durkan et al., "Neural Spline Flows", NeurIPS 2019; Papamakarios et al.,
    "Masked Autoregressive Flow", NeurIPS 2017; Pyro's ``vae_flow_prior`` tutorial.
    """

    def __init__(self, latent_dim: int, transforms: int = 3, hidden: list[int] = (64, 64), bins: int = 8):
        super().__init__()
        if transforms < 1:
            raise ValueError(f"transforms must be at least 1, got {transforms}")
        self.flow = zuko.flows.NSF(features=latent_dim, transforms=transforms, bins=bins, hidden_features=list(hidden))

    def forward(self) -> dist.TorchDistribution:
        return ZukoDistribution(self.flow())
