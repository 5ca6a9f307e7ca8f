"""Likelihoods p(x|z): modules whose ``forward(z)`` returns a distribution with event shape
equal to the data's shape.

To add one: a subclass of :class:`~pyrovae.model.likelihoods.base.Likelihood` in its own file plus an
entry in ``LIKELIHOODS``. Its constructor may ask for ``latent_dim`` and ``data_shape``.
"""

from pyrovae.model.likelihoods.bernoulli import Bernoulli
from pyrovae.model.likelihoods.continuous_bernoulli import ContinuousBernoulli
from pyrovae.model.likelihoods.discretized_logistic import DiscretizedLogistic
from pyrovae.model.likelihoods.gaussian import Gaussian

LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "discretized_logistic": DiscretizedLogistic,
}
