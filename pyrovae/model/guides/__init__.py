"""Guides q(z|x): modules whose ``forward(x)`` returns a distribution with batch shape ``(B,)``
and event shape ``(latent_dim,)``.

To add one: a small class in its own file plus an entry in ``GUIDES``. A guide's constructor
may ask for ``latent_dim`` and ``data_shape`` (in that order, as priors and likelihoods do).
"""

from pyrovae.model.guides.diagonal_normal import DiagonalNormal
from pyrovae.model.guides.iaf import InverseAutoregressiveFlow
from pyrovae.model.guides.low_rank_normal import LowRankNormal
from pyrovae.model.guides.neural_spline import NeuralSplineFlow

GUIDES = {
    "diagonal_normal": DiagonalNormal,
    "low_rank_normal": LowRankNormal,
    "iaf": InverseAutoregressiveFlow,
    "neural_spline": NeuralSplineFlow,
}
