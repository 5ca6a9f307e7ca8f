"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape ``(latent_dim,)``.

To add one: write a small class in its own file and list it in ``PRIORS``; the contract
tests in ``tests/test_contract.py`` then cover it. A prior's constructor may ask for
``latent_dim``, ``data_shape`` and ``guide`` (the q(z|x) module, for VampPrior-like priors).
"""

from pyrovae.priors.standard_normal import StandardNormal

PRIORS = {
    "standard_normal": StandardNormal,
}
