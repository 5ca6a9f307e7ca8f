"""KL per latent dimension and active units on a linear VAE with two dead dimensions, built exactly.

The generative model is probabilistic PCA with a 4-d latent whose last two columns of W are
zero: those dimensions do not reach x, the exact posterior of them is the prior, and the
guide built from the exact posterior (:mod:`linear_gaussian`) puts q(z_u|x) = N(0, 1) there.
"""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import linear_vae
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from pyrovae.data import PPCA
from pyrovae.infer.estimators.diagnostics import (
    KLPerDimensionUnavailable,
    active_units,
    activity,
    has_kl_per_dimension,
    kl_per_dimension,
)
from pyrovae.infer.terms import elbo_terms


@pytest.fixture(scope="module")
def dead_two():
    truth = PPCA(data_dim=10, latent_dim=4, noise=0.5, seed=1)
    truth.weight[:, 2:] = 0.0
    return linear_vae(truth), truth.sample(400)


def test_dead_dimensions_have_zero_kl_and_are_inactive(dead_two):
    vae, x = dead_two
    kl = kl_per_dimension(vae, x, batch_size=150)["z"]
    assert kl.shape == (4,)
    assert (kl[2:].abs() < 1e-4).all()  # q(z_u|x) = p(z_u): exactly 0 up to float error
    assert (kl[:2] > 0.5).all()  # live dimensions carry information
    act = activity(vae, x)["z"]
    assert (act[2:] < 1e-8).all() and (act[:2] > 0.1).all()
    assert active_units(vae, x) == 2


def test_kl_per_dimension_sums_to_the_closed_form_kl(dead_two):
    vae, x = dead_two
    with torch.no_grad():
        closed = elbo_terms(vae, TraceMeanField_ELBO(), x)["kl"].mean()
    assert kl_per_dimension(vae, x)["z"].sum().item() == pytest.approx(closed.item(), rel=1e-4)


class CorrelatedPrior(nn.Module):
    """A prior that does not factorize over dimensions."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("cov", torch.eye(latent_dim) + 0.5)

    def forward(self):
        return dist.MultivariateNormal(torch.zeros(len(self.cov)), covariance_matrix=self.cov)


def test_kl_per_dimension_is_refused_clearly_when_the_prior_does_not_factorize(dead_two):
    _, x = dead_two
    vae = linear_vae(PPCA(data_dim=10, latent_dim=4, seed=1))
    live = active_units(vae, x)
    vae.prior = CorrelatedPrior(4)
    assert not has_kl_per_dimension(vae, x)
    with pytest.raises(KLPerDimensionUnavailable, match="not available"):
        kl_per_dimension(vae, x)
    assert active_units(vae, x) == live == 4  # needs only E_q[z] (all 4 directions live here): still available
