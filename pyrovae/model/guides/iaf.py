"""The inverse autoregressive flow posterior of Kingma et al. (2016)."""

from __future__ import annotations

from typing import Literal

from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN

from pyrovae.model.guides.flow import ConditionalFlowGuide


class InverseAutoregressiveFlow(ConditionalFlowGuide):
    r"""q(z|x): z_0 = mu(x) + sigma(x) * eps, then ``steps`` gated IAF steps conditioned on h(x).

    Step t computes ``(m_t, s_t) = AR-NN_t(z_{t-1}, h)`` with a MADE network whose output i
    sees only z_{<i} (and h), and updates (Kingma et al. 2016, eqs. 11-14, the "stable" form)

    .. math:: g_t = \mathrm{sigmoid}(s_t), \quad z_t = g_t \odot z_{t-1} + (1 - g_t) \odot m_t,
              \quad \log|\det| = \sum_i \log g_{t,i}.

    Sampling is one network pass per step; the gate's bias starts at +2 so every step starts
    near the identity. ``steps`` is T, ``flow_hidden`` the MADE's hidden sizes; ``hidden`` is
    the encoder's. Implemented with Pyro's ``ConditionalAffineAutoregressive(stable=True)``,
    which is this update exactly.

    References: Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improved
    Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016; Germain et al.,
    "MADE", ICML 2015.
    """

    gaussian_first = True

    def __init__(
        self,
        latent_dim: int,
        data_shape: tuple[int, ...],
        hidden: list[int] = (400,),
        activation: str = "relu",
        steps: int = 2,
        flow_hidden: list[int] = (128,),
        net: Literal["mlp", "conv"] = "mlp",
        conv_channels: list[int] = (32, 64),
    ):
        super().__init__(latent_dim, data_shape, hidden, activation, steps, flow_hidden, net, conv_channels)

    def make_step(self, latent_dim, context_dim, hidden, permutation):
        net = ConditionalAutoRegressiveNN(latent_dim, context_dim, hidden, permutation=permutation)
        return ConditionalAffineAutoregressive(net, stable=True)
