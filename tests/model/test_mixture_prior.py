"""The mixture priors' distribution scores diagonal Gaussian components by matrix products:
the same numbers and gradients as Pyro's ``MixtureSameFamily``, and the zoo takes that path."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.model.guides import DiagonalNormal
from pyrovae.model.priors import MixtureOfGaussians, VampPrior
from pyrovae.model.priors.mixture import Mixture, diagonal_gaussian_parameters


def parameters(seed: int = 0, components: int = 7, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    loc = (3 * torch.randn(components, dim, generator=g)).requires_grad_()
    scale = (0.05 + 2 * torch.rand(components, dim, generator=g)).requires_grad_()
    logits = torch.randn(components, generator=g).requires_grad_()
    z = 3 * torch.randn(3, 4, dim, generator=g)  # sample and batch dimensions in front
    return loc, scale, logits, z


@pytest.mark.parametrize("family", [dist.Normal, dist.Laplace])  # Laplace: the general path
def test_mixture_log_prob_and_gradients_match_pyros_mixture(family):
    values = {}
    for mixture in (Mixture, dist.MixtureSameFamily):
        loc, scale, logits, z = parameters()
        log_p = mixture(dist.Categorical(logits=logits), family(loc, scale).to_event(1)).log_prob(z)
        log_p.sum().backward()
        values[mixture] = (log_p, loc.grad, scale.grad, logits.grad)
    assert values[Mixture][0].shape == (3, 4)
    for ours, pyros in zip(values[Mixture], values[dist.MixtureSameFamily]):
        torch.testing.assert_close(ours, pyros, rtol=1e-5, atol=1e-4)


def test_the_gaussian_mixture_priors_take_the_matrix_product_path():
    mog = MixtureOfGaussians(latent_dim=4, components=3)()
    vamp = VampPrior(
        latent_dim=4, data_shape=(6,), guide=DiagonalNormal(latent_dim=4, data_shape=(6,), hidden=[8]), pseudo_inputs=5
    )()
    for prior, components in ((mog, 3), (vamp, 5)):
        assert isinstance(prior, Mixture)
        loc, scale = diagonal_gaussian_parameters(prior.component_distribution)
        assert loc.shape == scale.shape == (components, 4)


def test_a_mixture_expanded_by_a_plate_keeps_the_matrix_path_and_its_numbers():
    # the model samples z ~ p(z) inside pyro.plate("data", B): the prior arrives expanded to (B,)
    loc, scale, logits, z = parameters()
    batch = z.shape[1]
    ours = Mixture(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    with pyro.plate("data", batch):
        expanded = pyro.poutine.trace(lambda: pyro.sample("z", ours)).get_trace().nodes["z"]["fn"]
    assert expanded.batch_shape == (batch,)
    table_loc, table_scale = diagonal_gaussian_parameters(expanded.component_distribution)
    assert table_loc.shape == table_scale.shape == loc.shape
    reference = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    torch.testing.assert_close(expanded.log_prob(z), reference.expand((batch,)).log_prob(z), rtol=1e-5, atol=1e-4)


def test_components_that_differ_along_the_batch_take_the_general_path():
    loc, scale, logits, z = parameters()
    varying = dist.Normal(torch.stack([loc, loc + 1]), scale).to_event(1)  # batch (2, C)
    assert diagonal_gaussian_parameters(varying) is None
    mixture = Mixture(dist.Categorical(logits=logits.expand(2, -1)), varying)
    reference = dist.MixtureSameFamily(dist.Categorical(logits=logits.expand(2, -1)), varying)
    torch.testing.assert_close(mixture.log_prob(z[..., :2, :]), reference.log_prob(z[..., :2, :]), rtol=1e-5, atol=1e-4)
