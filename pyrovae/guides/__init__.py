"""Guides q(z|x): modules whose ``forward(x)`` returns a distribution with batch shape ``(B,)``
and event shape ``(latent_dim,)``.

To add one: a small class in its own file plus an entry in ``GUIDES``. A guide's constructor
may ask for ``data_shape`` and ``latent_dim``.
"""

from pyrovae.guides.diagonal_normal import DiagonalNormal

GUIDES = {
    "diagonal_normal": DiagonalNormal,
}
