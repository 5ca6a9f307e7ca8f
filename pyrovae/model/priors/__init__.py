"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape ``(latent_dim,)``.

To add one: write a small class in its own file and list it in ``PRIORS``; the contract
tests in ``tests/model/test_contract.py`` then cover it. A prior's constructor may ask for
``latent_dim``, ``data_shape`` and ``guide`` (the q(z|x) module, for VampPrior-like priors).
"""

from pyrovae.model.priors.flow_prior import FlowPrior
from pyrovae.model.priors.mixture_of_gaussians import MixtureOfGaussians
from pyrovae.model.priors.standard_normal import StandardNormal
from pyrovae.model.priors.vamp_prior import VampPrior

PRIORS = {
    "standard_normal": StandardNormal,
    "mixture_of_gaussians": MixtureOfGaussians,
    "vamp_prior": VampPrior,
    "flow": FlowPrior,
}
