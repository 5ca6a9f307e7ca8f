"""Guides q(z|x): modules whose ``forward(x)`` returns a distribution with batch shape ``(B,)``
and event shape ``(latent_dim,)``.

To add one: a small class in its own file plus an entry in ``GUIDES``. A guide's constructor
may ask for ``data_shape`` and ``latent_dim``.
"""

from pyrovae.guides.diagonal_normal import DiagonalNormal
from pyrovae.guides.iaf import InverseAutoregressiveFlow
from pyrovae.guides.low_rank_normal import LowRankNormal
from pyrovae.guides.neural_spline import NeuralSplineFlow

GUIDES = {
    "diagonal_normal": DiagonalNormal,
    "low_rank_normal": LowRankNormal,
    "iaf": InverseAutoregressiveFlow,
    "neural_spline": NeuralSplineFlow,
}
