"""Exact, fast checks of AIS and its building blocks: the HMC transition and its step-size rule
(:mod:`pyrovae.infer.estimators.hmc`), the potential of a model's latent sites
(:mod:`pyrovae.infer.estimators.potential`) and the annealing, AIS and BDMC themselves
(:mod:`pyrovae.infer.estimators.ais`).

The HMC target here is Gaussian in every coordinate, so a leapfrog trajectory is a linear map
with a closed form and the Metropolis test reads the exact energy change: with the random
numbers the transition draws replayed from the same seed, every accepted or rejected chain is
known in advance. The potential is checked on a small model with positive, simplex and
real-valued latent sites whose densities are written out by hand (float64 throughout). AIS is
exact, whatever its moves, when it starts from the exact posterior (every log-weight is then
log p(x)), and with a single distribution (no move) it is importance sampling from its start.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import pyro
import pyro.distributions as dist
import pytest
import torch
from exact_models import ConditionalLinear, LabelledLinear, TwoLevelLinear
from torch import nn
from torch.distributions import biject_to, constraints

from pyrovae import Model
from pyrovae.errors import UserError
from pyrovae.infer.estimators.ais import AISSettings, BDMCResult, ais, anneal, bdmc, check_ais, schedule, simulate
from pyrovae.infer.estimators.hmc import State, adapt_step_size, evaluate_state, hmc_step
from pyrovae.infer.estimators.potential import Potential
from pyrovae.infer.traces import plate_nesting

F64 = torch.float64


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# -- HMC on a Gaussian target ------------------------------------------------------------------
#
# log b(z) = -a/2 |z|^2 and h(z) = -c/2 |z - m|^2 per coordinate, so log f_beta is Gaussian with
# precision k = a + beta c and mean mu = beta c m / k in each coordinate: one leapfrog step of
# size e maps (y = z - mu, p) linearly by [[1 - e^2 k/2, e], [-e k (1 - e^2 k/4), 1 - e^2 k/2]].

A = t(1.0, 2.0)  # the base's precision per coordinate
C = t(3.0, 0.5)  # h's precision per coordinate
M = t(0.4, -1.0)  # h's mean


def gaussian_parts(z: torch.Tensor):
    return -0.5 * (A * z**2).sum(-1), -0.5 * (C * (z - M) ** 2).sum(-1)


def leapfrog_closed_form(z, p, beta, eps, steps):
    """The end of ``steps`` leapfrog steps of size ``eps`` from (z, p) on log f_beta."""
    k = A + beta * C
    mu = beta * C * M / k
    y = z - mu
    for _ in range(steps):
        y, p = (1 - eps**2 * k / 2) * y + eps * p, -eps * k * (1 - eps**2 * k / 4) * y + (1 - eps**2 * k / 2) * p
    return y + mu, p


def energy(z, p, beta):
    """-log f_beta(z) + |p|^2 / 2, written out."""
    return 0.5 * (A * z**2).sum(-1) + beta * 0.5 * (C * (z - M) ** 2).sum(-1) + 0.5 * (p**2).sum(-1)


def start_state() -> State:
    z = t(0.3, -0.8, 1.1, 0.2, -0.5, 0.9, 0.0, 1.5, -1.2, -0.4, 0.7, 0.6).reshape(3, 2, 2)
    return evaluate_state(gaussian_parts, z)


# step sizes per chain (3 x 2 chains): from accurate (0.1) to past the stability limit (e sqrt(k) > 2)
STEP = t(0.1, 0.5, 0.9, 1.2, 0.7, 1.5).reshape(3, 2, 1)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_log_target_and_gradient_are_the_base_plus_beta_times_h(beta):
    state = State(
        z=t(0.0, 0.0).reshape(1, 2),
        base=t(-1.5),
        h=t(4.0),
        grad_base=t(1.0, -2.0).reshape(1, 2),
        grad_h=t(0.5, 3.0).reshape(1, 2),
    )
    assert torch.equal(state.log_target(beta), t(-1.5 + beta * 4.0))
    assert torch.equal(state.grad(beta), t(1.0 + beta * 0.5, -2.0 + beta * 3.0).reshape(1, 2))


def test_evaluate_state_caches_both_parts_and_their_gradients_even_without_grad_mode():
    z = t(0.3, -0.8, 1.1, 0.2).reshape(2, 2)
    with torch.no_grad():  # AIS runs under evaluation_mode, which turns gradients off
        state = evaluate_state(gaussian_parts, z)
    assert torch.equal(state.z, z)
    assert torch.allclose(state.base, -0.5 * (A * z**2).sum(-1), rtol=0, atol=1e-15)
    assert torch.allclose(state.h, -0.5 * (C * (z - M) ** 2).sum(-1), rtol=0, atol=1e-15)
    assert torch.allclose(state.grad_base, -A * z, rtol=0, atol=1e-15)
    assert torch.allclose(state.grad_h, -C * (z - M), rtol=0, atol=1e-15)
    # a cache, not a graph: nothing that AIS keeps holds on to autograd
    assert not any(v.requires_grad for v in (state.z, state.base, state.h, state.grad_base, state.grad_h))


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_hmc_step_is_the_closed_form_leapfrog_and_the_exact_metropolis_test_per_chain(steps, beta):
    state = start_state()
    torch.manual_seed(0)
    new, accept_prob = hmc_step(gaussian_parts, state, beta, STEP, steps)
    # the same random numbers, replayed: the initial momentum, then one uniform per chain
    torch.manual_seed(0)
    p0 = torch.randn(3, 2, 2, dtype=F64)
    uniform = torch.rand(3, 2, dtype=F64)

    z1, p1 = leapfrog_closed_form(state.z, p0, beta, STEP, steps)
    ratio = (energy(state.z, p0, beta) - energy(z1, p1, beta)).exp()
    assert torch.allclose(accept_prob, ratio.clamp(max=1), rtol=1e-12, atol=0)
    accepted = uniform < ratio
    assert accepted.any() and not accepted.all()  # both outcomes occur among the six chains
    assert (ratio > 1).any()  # and so does a gain in energy: the probability is capped at 1
    assert torch.allclose(new.z, torch.where(accepted.unsqueeze(-1), z1, state.z), rtol=1e-12, atol=1e-14)
    # the cache moves with each chain: its parts and gradients are those at its new position
    fresh = evaluate_state(gaussian_parts, new.z)
    for field in ("base", "h", "grad_base", "grad_h"):
        assert torch.allclose(getattr(new, field), getattr(fresh, field), rtol=1e-12, atol=1e-14), field


def test_hmc_step_with_one_step_size_for_all_chains_of_a_datapoint():
    """A step size of shape (1, B, 1), as AIS adapts per datapoint, broadcasts over the chains."""
    state = start_state()
    shared = t(0.2, 0.9).reshape(1, 2, 1)
    torch.manual_seed(3)
    new, accept_prob = hmc_step(gaussian_parts, state, 0.5, shared, 2)
    torch.manual_seed(3)
    p0 = torch.randn(3, 2, 2, dtype=F64)
    z1, p1 = leapfrog_closed_form(state.z, p0, 0.5, shared, 2)
    ratio = (energy(state.z, p0, 0.5) - energy(z1, p1, 0.5)).exp()
    assert accept_prob.shape == (3, 2)
    assert torch.allclose(accept_prob, ratio.clamp(max=1), rtol=1e-12, atol=0)


def test_a_long_accurate_trajectory_is_reversible_and_accepted():
    """Tiny steps keep the energy: acceptance ~1, and running the end point back with the
    momentum negated returns to the start (leapfrog is reversible)."""
    state = start_state()
    torch.manual_seed(1)
    new, accept_prob = hmc_step(gaussian_parts, state, 1.0, torch.tensor(1e-3, dtype=F64), 3)
    assert torch.all(accept_prob > 1 - 1e-5)
    torch.manual_seed(1)
    p0 = torch.randn(3, 2, 2, dtype=F64)
    z1, p1 = leapfrog_closed_form(state.z, p0, 1.0, 1e-3, 3)
    assert torch.allclose(new.z, z1, rtol=1e-12, atol=1e-14)
    back, p_back = leapfrog_closed_form(z1, -p1, 1.0, 1e-3, 3)
    assert torch.allclose(back, state.z, rtol=0, atol=1e-12) and torch.allclose(-p_back, p0, rtol=0, atol=1e-12)


def test_a_diverging_trajectory_is_rejected_and_its_chain_stays():
    """h is NaN beyond |z| = 2 (log of a negative number): a chain whose proposal lands there has
    acceptance probability 0 and keeps its state; the others move as usual."""

    def parts(z):
        return -0.5 * (z**2).sum(-1), torch.log(4 - z**2).sum(-1)

    z = t(0.1, 0.0, 0.0, 0.1).reshape(2, 2)
    state = evaluate_state(parts, z)
    steps = t(100.0, 1e-3).reshape(2, 1)  # the first chain jumps far out, the second barely moves
    torch.manual_seed(0)
    new, accept_prob = hmc_step(parts, state, 0.5, steps, 1)
    assert accept_prob[0] == 0
    assert torch.equal(new.z[0], z[0]) and torch.equal(new.h[0], state.h[0])
    assert accept_prob[1] > 0.999 and not torch.equal(new.z[1], z[1])


def test_adapt_step_size_grows_above_the_target_and_shrinks_at_or_below_it():
    steps = t(0.1, 0.2, 0.4, 0.8).reshape(2, 2, 1)
    accept = t(0.9, 0.65, 0.650001, 0.0).reshape(2, 2)
    adapted = adapt_step_size(steps, accept)  # the defaults: 65% target, 2% rate
    expected = t(0.1 * 1.02, 0.2 / 1.02, 0.4 * 1.02, 0.8 / 1.02).reshape(2, 2, 1)
    assert torch.equal(adapted, expected)
    custom = adapt_step_size(steps, accept, target=0.8, rate=0.5)
    assert torch.equal(custom, t(0.1 * 1.5, 0.2 / 1.5, 0.4 / 1.5, 0.8 / 1.5).reshape(2, 2, 1))


def test_adapt_step_size_broadcasts_a_per_datapoint_acceptance_over_its_chains():
    """AIS's default: one step size per datapoint (shape (1, B, 1)) moved by its chains' mean
    acceptance (shape (1, B))."""
    steps = t(0.1, 0.2, 0.3).reshape(1, 3, 1)
    adapted = adapt_step_size(steps, t(0.7, 0.6, 1.0).reshape(1, 3), 0.65, 0.1)
    assert adapted.shape == (1, 3, 1)
    assert torch.equal(adapted, t(0.1 * 1.1, 0.2 / 1.1, 0.3 * 1.1).reshape(1, 3, 1))


# -- the potential of a model's latent sites ------------------------------------------------------


class Constrained(Model):
    """Latent sites of three kinds: ``rate`` > 0 (one per datapoint), ``weights`` on the simplex
    (3 values, 2 unconstrained), ``gains`` > 0 in a nested ``features`` plate (2 per datapoint),
    and ``x`` observed in that plate: x ~ N(gains * rate + weights_0, 0.5^2)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            rate = pyro.sample("rate", dist.Gamma(t(2.0), t(3.0)))
            weights = pyro.sample("weights", dist.Dirichlet(t(1.0, 2.0, 3.0)))
            with pyro.plate("features", 2, dim=-1):
                gains = pyro.sample("gains", dist.LogNormal(t(0.0), t(1.0)))
                pyro.sample("x", dist.Normal(gains * rate + weights[..., 0], 0.5), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("rate", dist.LogNormal(t(-0.7), t(0.2)))
            pyro.sample("weights", dist.Dirichlet(t(2.0, 2.0, 2.0)))
            with pyro.plate("features", 2, dim=-1):
                pyro.sample("gains", dist.Gamma(x.abs() + 1, 2.0))


X = t(0.5, -1.0, 2.0, 0.3).reshape(2, 2)  # two datapoints of two features
CHAINS = 3
STICK = biject_to(constraints.simplex)


def constrained_potential() -> Potential:
    model = Constrained()
    return Potential(model, X, None, CHAINS, plate_nesting(model, X))


def some_u() -> torch.Tensor:
    """(C, B, D) = (3, 2, 5): log rate, the stick-breaking coordinates of weights, log gains."""
    return torch.linspace(-1.2, 1.3, 30, dtype=F64).reshape(3, 2, 5)


def by_hand(u: torch.Tensor):
    """The site values, the Jacobian term, log p(z), log p(x|z) and log q(z|x), each (C, B)."""
    rate, gains = u[..., :1].exp(), u[..., 3:].exp()
    weights = STICK(u[..., 1:3])
    jacobian = u[..., 0] + STICK.log_abs_det_jacobian(u[..., 1:3], weights) + u[..., 3:].sum(-1)
    log_prior = (
        dist.Gamma(t(2.0), t(3.0)).log_prob(rate[..., 0])
        + dist.Dirichlet(t(1.0, 2.0, 3.0)).log_prob(weights)
        + dist.LogNormal(t(0.0), t(1.0)).log_prob(gains).sum(-1)
    )
    log_lik = dist.Normal(gains * rate + weights[..., :1], 0.5).log_prob(X).sum(-1)
    log_q = (
        dist.LogNormal(t(-0.7), t(0.2)).log_prob(rate[..., 0])
        + dist.Dirichlet(t(2.0, 2.0, 2.0)).log_prob(weights)
        + dist.Gamma(X.abs() + 1, 2.0).log_prob(gains).sum(-1)
    )
    return dict(rate=rate, weights=weights.unsqueeze(-2), gains=gains), jacobian, log_prior, log_lik, log_q


def test_potential_lays_out_the_unconstrained_sites_in_the_guide_s_order():
    potential = constrained_potential()
    assert potential.sites == ["rate", "weights", "gains"]
    assert potential.shapes == {"rate": (1,), "weights": (1, 2), "gains": (2,)}
    assert potential.sizes == [1, 2, 2]  # D = 5: a simplex of 3 has 2 free coordinates


def test_unpack_maps_each_piece_to_its_support_with_the_jacobian_term_per_chain_and_datapoint():
    potential = constrained_potential()
    u = some_u()
    values, jacobian = potential.unpack(u)
    expected, expected_jacobian, *_ = by_hand(u)
    assert values.keys() == expected.keys()
    for name in expected:
        assert values[name].shape == expected[name].shape, name
        assert torch.allclose(values[name], expected[name], rtol=1e-13, atol=0), name
    assert jacobian.shape == (3, 2) and jacobian.dtype == F64
    assert torch.allclose(jacobian, expected_jacobian, rtol=1e-13, atol=1e-15)
    assert torch.allclose(potential.pack(values), u, rtol=0, atol=1e-13)  # pack undoes unpack


@pytest.mark.parametrize("start", ["prior", "posterior"])
def test_parts_are_the_densities_of_u_written_out(start):
    potential = constrained_potential()
    u = some_u()
    _, jacobian, log_prior, log_lik, log_q = by_hand(u)
    base, h = potential.parts(start)(u)
    assert base.shape == h.shape == (3, 2)
    if start == "prior":  # b = log p_u(u), h = log p(x|z)
        expected = log_prior + jacobian, log_lik
    else:  # b = log q_u(u|x), h = log p(x, z) - log q(z|x)
        expected = log_q + jacobian, log_prior + log_lik - log_q
    assert torch.allclose(base, expected[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(h, expected[1], rtol=1e-12, atol=1e-12)
    # either way b + h at beta = 1 is log p(x, z) + J, whose normalizer is p(x)
    assert torch.allclose(base + h, log_prior + log_lik + jacobian, rtol=1e-12, atol=1e-12)


class Observed(Model):
    """No latent site at all: x ~ N(0, I)."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pass


def test_a_model_without_latent_sites_has_an_empty_u_and_its_likelihood_as_h():
    """Nothing to transform: the Jacobian term is a zero of u's dtype per chain and datapoint, so
    b = 0 and h = log p(x)."""
    potential = Potential(Observed(), X, None, CHAINS, 1)
    assert potential.sites == [] and potential.sizes == []
    u = torch.zeros(CHAINS, 2, 0, dtype=F64)
    values, jacobian = potential.unpack(u)
    assert values == {} and jacobian.dtype == F64 and torch.equal(jacobian, torch.zeros(3, 2, dtype=F64))
    base, h = potential.parts("prior")(u)
    assert base.dtype == F64 and torch.equal(base, torch.zeros(3, 2, dtype=F64))
    assert torch.allclose(h, dist.Normal(t(0.0), 1.0).log_prob(X).sum(-1).expand(3, 2), rtol=1e-13, atol=0)


def test_draw_packs_values_drawn_from_the_prior_or_from_the_guide():
    potential = constrained_potential()
    shape = (CHAINS, 2, 1)
    torch.manual_seed(11)
    prior = potential.draw("prior")
    torch.manual_seed(11)  # the model's draws, in its order
    rate = dist.Gamma(t(2.0), t(3.0)).expand(shape).sample()
    weights = dist.Dirichlet(t(1.0, 2.0, 3.0)).expand(shape).sample()
    gains = dist.LogNormal(t(0.0), t(1.0)).expand((CHAINS, 2, 2)).sample()
    expected = torch.cat([rate.log(), STICK.inv(weights).flatten(-2), gains.log()], -1)
    assert prior.shape == (3, 2, 5)
    assert torch.allclose(prior, expected, rtol=1e-12, atol=1e-12)

    torch.manual_seed(11)
    posterior = potential.draw("posterior")
    torch.manual_seed(11)  # the guide's
    rate = dist.LogNormal(t(-0.7), t(0.2)).expand(shape).sample()
    weights = dist.Dirichlet(t(2.0, 2.0, 2.0)).expand(shape).sample()
    gains = dist.Gamma(X.abs() + 1, 2.0).expand((CHAINS, 2, 2)).sample()
    expected = torch.cat([rate.log(), STICK.inv(weights).flatten(-2), gains.log()], -1)
    assert torch.allclose(posterior, expected, rtol=1e-12, atol=1e-12)


def test_building_a_potential_leaves_the_random_stream_where_it_was():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    constrained_potential()  # traces the guide and the model for the shapes, drawing nothing for good
    assert torch.equal(torch.rand(4), expected)


def test_a_discrete_latent_site_is_refused_in_one_line():
    model = LabelledLinear()
    x = model.sample(2)[0]
    with pytest.raises(UserError) as err:
        Potential(model, x, None, 2, plate_nesting(model, x))
    assert str(err.value) == (
        "AIS needs continuous latent sites, but site 'digit' of LabelledLinear is discrete (Categorical): "
        "score it by IWAE, which sums it out"
    )


def test_a_conditional_model_s_potential_reads_each_row_s_label():
    model = ConditionalLinear()
    x, y = model.sample(3)
    potential = Potential(model, x, y, 2, plate_nesting(model, x, y))
    assert potential.sites == ["code"] and potential.sizes == [2]
    u = torch.linspace(-1.0, 1.0, 12, dtype=F64).reshape(2, 3, 2)
    base, h = potential.parts("prior")(u)
    assert torch.allclose(base, dist.Normal(t(0.0), 1.0).log_prob(u).sum(-1), rtol=1e-13, atol=0)
    mean = u @ model.W.T + model.B[y]
    assert torch.allclose(h, dist.Normal(mean, model.sigma).log_prob(x).sum(-1), rtol=1e-13, atol=0)


def test_a_two_level_model_s_prior_and_posterior_potentials_meet_at_the_joint():
    """Both levels at once (D = 3 + 2, in the guide's order middle, top); real-valued sites need
    no Jacobian term."""
    model = TwoLevelLinear()
    x = model.sample(2)
    potential = Potential(model, x, None, 4, plate_nesting(model, x))
    assert potential.sites == ["middle", "top"] and potential.sizes == [3, 2]
    u = torch.linspace(-2.0, 2.0, 40, dtype=F64).reshape(4, 2, 5)
    middle, top = u[..., :3], u[..., 3:]
    log_prior = dist.Normal(t(0.0), 1.0).log_prob(top).sum(-1) + dist.Normal(top @ model.A.T, model.s1).log_prob(
        middle
    ).sum(-1)
    log_lik = dist.Normal(middle @ model.W.T + model.b, model.sigma).log_prob(x).sum(-1)
    base, h = potential.parts("prior")(u)
    assert torch.allclose(base, log_prior, rtol=1e-12, atol=0)
    assert torch.allclose(h, log_lik, rtol=1e-12, atol=0)
    log_q = dist.MultivariateNormal((x - model.b) @ model.gain1.T, scale_tril=model.tril1).log_prob(middle)
    log_q = log_q + dist.MultivariateNormal(middle @ model.gain2.T, scale_tril=model.tril2).log_prob(top)
    base_q, h_q = potential.parts("posterior")(u)
    assert torch.allclose(base_q, log_q, rtol=1e-12, atol=0)
    assert torch.allclose(base_q + h_q, log_prior + log_lik, rtol=1e-12, atol=0)


# -- AIS settings and schedules ---------------------------------------------------------------------


def test_ais_settings_defaults_and_their_tags():
    assert AISSettings().as_tags() == {
        "ais.steps": "500",
        "ais.chains": "16",
        "ais.leapfrog_steps": "10",
        "ais.step_size": "0.05",
        "ais.target_accept": "0.65",
        "ais.adapt_rate": "0.02",
        "ais.adapt_over": "datapoint",
        "ais.schedule": "sigmoid",
        "ais.start": "prior",
    }


def test_ais_settings_accept_the_smallest_counts_and_any_positive_step_size():
    settings = AISSettings(steps=1, chains=1, leapfrog_steps=1, step_size=1e-12, schedule="linear", start="posterior")
    assert asdict(settings)["steps"] == 1 and settings.adapt_over == "datapoint"
    assert AISSettings(adapt_over="chain").adapt_over == "chain"


def test_ais_settings_refuse_a_negative_step_size_naming_it():
    with pytest.raises(UserError) as err:
        AISSettings(step_size=-0.1)
    assert str(err.value) == (
        "AIS needs steps, chains and leapfrog steps >= 1 and a positive step size, got step_size = -0.1"
    )


@pytest.mark.parametrize(
    "wrong, said",
    [
        (dict(schedule="cosine"), "'cosine', 'prior', 'datapoint'"),
        (dict(start="middle"), "'sigmoid', 'middle', 'datapoint'"),
        (dict(adapt_over="batch", schedule="linear"), "'linear', 'prior', 'batch'"),
    ],
)
def test_ais_settings_refuse_an_unknown_schedule_start_or_adaptation(wrong, said):
    with pytest.raises(UserError) as err:
        AISSettings(**wrong)
    assert str(err.value) == (
        "AIS schedule must be sigmoid or linear, start prior or posterior and adapt_over datapoint or chain, "
        f"got {said}"
    )


def test_linear_schedule_is_evenly_spaced_in_float64():
    betas = schedule(4, "linear")
    assert betas.dtype == F64 and torch.equal(betas, t(0.0, 0.25, 0.5, 0.75, 1.0))


@pytest.mark.parametrize("delta", [4.0, 1.5])
def test_sigmoid_schedule_is_the_rescaled_logistic(delta):
    sigmoid = [1 / (1 + math.exp(-delta * (2 * i / 4 - 1))) for i in range(5)]
    expected = t(*((s - sigmoid[0]) / (sigmoid[-1] - sigmoid[0]) for s in sigmoid))
    betas = schedule(4) if delta == 4.0 else schedule(4, "sigmoid", delta)
    assert betas.dtype == F64 and torch.allclose(betas, expected, rtol=0, atol=1e-15)
    assert betas[0] == 0 and betas[-1] == 1


# -- annealing --------------------------------------------------------------------------------------


def test_anneal_through_two_distributions_is_importance_sampling_from_the_start():
    """betas (0, 1): the log-weight is h(z0), no HMC move is made (nothing to accept)."""
    z0 = start_state().z.float()  # float32 parts: the log-weight is still float64
    calls = []
    log_w, accept = anneal(gaussian_parts, z0, schedule(1), AISSettings(steps=1), on_step=lambda: calls.append(1))
    assert log_w.dtype == F64 and log_w.shape == (3, 2)
    assert torch.equal(log_w, gaussian_parts(z0)[1].double())
    assert accept == 0.0 and calls == [1]


def reference_anneal(z0, betas, settings):
    """The AIS recursion written out: add (beta_t - beta_t-1) h(z) before each move, move at
    beta_t except at the last distribution, adapt the step sizes after each move."""
    state = evaluate_state(gaussian_parts, z0)
    per_chain = settings.adapt_over == "chain"
    shape = (3, 2, 1) if per_chain else (1, 2, 1)
    step = torch.full(shape, settings.step_size)
    log_w, accepts = torch.zeros(3, 2, dtype=F64), []
    for i in range(1, len(betas)):
        log_w = log_w + float(betas[i] - betas[i - 1]) * state.h
        if i < len(betas) - 1:
            state, accept = hmc_step(gaussian_parts, state, float(betas[i]), step, settings.leapfrog_steps)
            mean = accept if per_chain else accept.mean(0, keepdim=True)
            step = adapt_step_size(step, mean, settings.target_accept, settings.adapt_rate)
            accepts.append(float(accept.mean()))
    return log_w, sum(accepts) / len(accepts)


@pytest.mark.parametrize("adapt_over", ["datapoint", "chain"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("steps", [2, 4])
def test_anneal_adds_each_temperature_step_of_h_and_moves_in_between(adapt_over, direction, steps):
    """With steps = 2 there is one move, whose mean acceptance is the one reported."""
    settings = AISSettings(
        steps=steps, leapfrog_steps=2, step_size=0.7, target_accept=0.8, adapt_rate=0.5, adapt_over=adapt_over
    )
    betas = schedule(steps, "linear") if direction == "forward" else schedule(steps).flip(0)
    z0 = start_state().z
    torch.manual_seed(2)
    calls = []
    log_w, accept = anneal(gaussian_parts, z0, betas, settings, on_step=lambda: calls.append(1))
    torch.manual_seed(2)
    expected, expected_accept = reference_anneal(z0, betas, settings)
    assert log_w.dtype == F64
    assert torch.allclose(log_w, expected, rtol=1e-12, atol=1e-12)
    assert accept == pytest.approx(expected_accept, rel=1e-12)
    assert calls == [1] * steps  # once per annealing step


def test_anneal_step_sizes_adapt_per_datapoint_or_per_chain_differently():
    """The two adaptation modes give different chains from the same seed (the step sizes differ
    after the first move), so the choice is really made."""
    results = []
    for adapt_over in ("datapoint", "chain"):
        settings = AISSettings(steps=4, leapfrog_steps=2, step_size=0.7, adapt_rate=0.5, adapt_over=adapt_over)
        torch.manual_seed(2)
        results.append(anneal(gaussian_parts, start_state().z, schedule(4), settings)[0])
    assert not torch.allclose(results[0], results[1])


# -- AIS, BDMC and simulation on models with a known log p(x) ------------------------------------------


class Gauss(Model):
    """z ~ N(0, I_2), x | z ~ N(z, 0.25 I): p(x) = N(0, 1.25 I) and p(z | x) = N(x / 1.25, 0.2 I).
    The guide is that exact posterior, its mean moved by ``shift``."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift, self.data_shape = shift, (2,)
        self.dummy = nn.Parameter(torch.zeros((), dtype=F64))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + self.dummy, 0.5).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 1.25 + self.shift, 0.2**0.5).to_event(1))

    def log_px(self, x):
        return dist.Normal(t(0.0), 1.25**0.5).log_prob(x).sum(-1)


XS = t(0.5, -1.0, 2.0, 0.3, -0.2, 1.1, 0.0, -2.5, 1.4, 0.8).reshape(5, 2)


def test_ais_from_the_exact_posterior_is_exact_in_every_batch():
    """h = log p(x, z) - log q(z|x) = log p(x) at every z: each log-weight is log p(x)."""
    model = Gauss()
    settings = AISSettings(steps=3, chains=2, leapfrog_steps=2, step_size=0.3, start="posterior")
    estimate = ais(model, XS, settings, batch_size=2)
    assert estimate.dtype == F64 and estimate.shape == (5,)
    assert torch.allclose(estimate, model.log_px(XS), rtol=0, atol=1e-12)


def reference_ais(model, x, settings, batch_size, seed, y=None):
    """AIS batch by batch from one seeded stream: draw C starts per datapoint, anneal, average
    the weights over the chains."""
    betas = schedule(settings.steps, settings.schedule)
    out = []
    torch.manual_seed(seed)
    with torch.no_grad():
        nesting = plate_nesting(model, x[:1], None if y is None else y[:1])
        for start in range(0, x.shape[0], batch_size):
            labels = None if y is None else y[start : start + batch_size]
            potential = Potential(model, x[start : start + batch_size], labels, settings.chains, nesting)
            log_w, _ = anneal(potential.parts(settings.start), potential.draw(settings.start), betas, settings)
            out.append(log_w.logsumexp(0) - math.log(settings.chains))
    return torch.cat(out)


def test_ais_with_one_distribution_averages_the_likelihood_of_prior_draws():
    """steps = 1 from the prior: log (1/C) sum_c p(x | z_c), z_c ~ p(z), from seed 0 by default."""
    model = Gauss()
    settings = AISSettings(steps=1, chains=3)
    torch.manual_seed(0)
    z = [torch.randn(3, n, 2, dtype=F64) for n in (2, 2, 1)]  # the draws, batch by batch
    log_lik = dist.Normal(torch.cat(z, 1), 0.5).log_prob(XS).sum(-1)
    expected = log_lik.logsumexp(0) - math.log(3)
    torch.manual_seed(123)
    estimate = ais(model, XS, settings, batch_size=2)
    assert torch.allclose(estimate, expected, rtol=1e-12, atol=0)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the caller's stream is where it was


@pytest.mark.parametrize("start, kind", [("prior", "sigmoid"), ("posterior", "linear")])
def test_ais_is_annealing_batch_by_batch_from_the_seed(start, kind):
    model = Gauss(shift=0.4)
    settings = AISSettings(steps=3, chains=2, leapfrog_steps=2, step_size=0.4, start=start, schedule=kind)
    estimate = ais(model, XS, settings, batch_size=2, seed=5)
    assert torch.allclose(estimate, reference_ais(model, XS, settings, 2, 5), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(estimate, model.log_px(XS), rtol=0, atol=1e-3)  # not exact: q is off


def test_ais_reports_progress_and_stops_after_the_batch_stop_asks():
    model = Gauss()
    settings = AISSettings(steps=3, chains=2, leapfrog_steps=1, start="posterior")
    calls, asked = [], []
    estimate = ais(
        model, XS, settings, batch_size=2, progress=calls.append, stop=lambda: len(asked.append(1) or asked) == 2
    )
    assert calls == [1] * 6  # 3 steps in each of the 2 batches done
    assert torch.allclose(estimate, model.log_px(XS[:4]), rtol=0, atol=1e-12)


def test_ais_of_a_conditional_model_is_log_p_x_given_each_row_s_label():
    model = ConditionalLinear()
    x, y = model.sample(3)
    settings = AISSettings(steps=2, chains=2, leapfrog_steps=1, step_size=0.2, start="posterior")
    estimate = ais(model, x, settings, batch_size=2, y=y)
    assert torch.allclose(estimate, model.log_px_given_y(x, y), rtol=0, atol=1e-10)


def test_check_ais_refuses_a_discrete_latent_at_once_and_accepts_a_continuous_one():
    model = LabelledLinear()
    x, y = model.sample(3)
    with pytest.raises(UserError, match=r"^AIS needs continuous latent sites, but site 'digit' of LabelledLinear"):
        check_ais(model, x)
    conditional = ConditionalLinear()
    torch.manual_seed(4)
    assert check_ais(conditional, x, y) is None  # given its labels, as AIS would be
    after = torch.rand(2)
    torch.manual_seed(4)
    assert torch.equal(after, torch.rand(2))  # and draws nothing from the caller's stream


def test_simulate_draws_the_latents_then_the_data_from_the_model_at_the_seed():
    model = Gauss()
    torch.manual_seed(9)
    z = torch.randn(4, 2, dtype=F64)
    x = z + 0.5 * torch.randn(4, 2, dtype=F64)
    latent, simulated = simulate(model, torch.full((4, 2), 7.0, dtype=F64), seed=9)  # template values unused
    assert latent.keys() == {"z"}  # the observed site is data, not a latent
    assert torch.allclose(latent["z"], z, rtol=1e-12, atol=0)
    assert torch.allclose(simulated, x, rtol=1e-12, atol=1e-15)
    latent0, _ = simulate(model, XS[:4])
    torch.manual_seed(0)
    assert torch.allclose(latent0["z"], torch.randn(4, 2, dtype=F64), rtol=1e-12, atol=0)  # seed 0 by default


def test_simulate_hands_a_conditional_model_its_labels():
    model = ConditionalLinear()
    template, y = model.sample(3)
    latent, x = simulate(model, template, y, seed=1)
    torch.manual_seed(1)
    code = torch.randn(3, 2, dtype=F64)
    assert latent.keys() == {"code"} and torch.allclose(latent["code"], code, rtol=1e-12, atol=0)
    noise = torch.randn(3, 5, dtype=F64)
    assert torch.allclose(x, code @ model.W.T + model.B[y] + model.sigma * noise, rtol=1e-12, atol=1e-14)


def test_bdmc_from_the_exact_posterior_closes_the_gap():
    """Both directions are exact from the exact posterior: lower = upper = log p(x)."""
    model = Gauss()
    settings = AISSettings(steps=3, chains=2, leapfrog_steps=2, step_size=0.3, start="posterior")
    calls = []
    result = bdmc(model, XS[:3], settings, batch_size=2, seed=4, progress=calls.append)
    assert isinstance(result, BDMCResult) and calls == [1] * 12  # 2 * 3 steps in each of 2 batches
    assert torch.allclose(result.lower, model.log_px(result.x), rtol=0, atol=1e-12)
    assert torch.allclose(result.upper, model.log_px(result.x), rtol=0, atol=1e-12)
    assert result.gap == pytest.approx(0.0, abs=1e-12)


def test_bdmc_is_forward_ais_and_reverse_annealing_from_the_latents_that_made_x():
    model = Gauss(shift=0.4)
    settings = AISSettings(steps=3, chains=2, leapfrog_steps=2, step_size=0.4, schedule="linear")
    result = bdmc(model, XS[:3], settings, batch_size=2, seed=4)
    z, x = simulate(model, XS[:3], seed=4)
    assert torch.equal(result.x, x) and result.z.keys() == {"z"} and torch.equal(result.z["z"], z["z"])
    assert torch.allclose(result.lower, reference_ais(model, x, settings, 2, 5), rtol=1e-12, atol=1e-12)
    betas = schedule(3, "linear").flip(0)
    upper = []
    torch.manual_seed(6)
    with torch.no_grad():
        for rows in (slice(0, 2), slice(2, 3)):
            potential = Potential(model, x[rows], None, 2, 1)
            z0 = z["z"][rows].expand(2, -1, -1).contiguous()  # every chain from the generating z
            log_w, _ = anneal(potential.parts("prior"), z0, betas, settings)
            upper.append(math.log(2) - log_w.logsumexp(0))
    assert torch.allclose(result.upper, torch.cat(upper), rtol=1e-12, atol=1e-12)
    assert result.gap == pytest.approx(float((result.upper - result.lower).mean()), rel=1e-12)


def test_bdmc_with_one_distribution_reads_the_likelihood_at_the_generating_latents():
    """steps = 1 backwards: log w = -log p(x | z*) for every chain, so the upper bound is log p(x | z*)."""
    model = Gauss()
    result = bdmc(model, 3, AISSettings(steps=1, chains=2))
    assert result.x.shape == (3, 2)  # n datapoints of the model's data_shape
    assert torch.equal(result.x, simulate(model, torch.zeros(3, 2))[1])  # simulated at seed 0 by default
    expected = dist.Normal(result.z["z"], 0.5).log_prob(result.x).sum(-1).double()
    assert torch.allclose(result.upper, expected, rtol=1e-6, atol=0)


def test_bdmc_of_a_conditional_model_simulates_and_scores_each_row_given_its_label():
    model = ConditionalLinear()
    template, y = model.sample(3)
    settings = AISSettings(steps=2, chains=2, leapfrog_steps=1, step_size=0.2, start="posterior")
    result = bdmc(model, template, settings, batch_size=2, seed=3, y=y)
    assert torch.equal(result.x, simulate(model, template, y, seed=3)[1])
    exact = model.log_px_given_y(result.x, y)
    assert torch.allclose(result.lower, exact, rtol=0, atol=1e-10)
    assert torch.allclose(result.upper, exact, rtol=0, atol=1e-10)


def test_ais_and_bdmc_take_100_datapoints_per_batch_by_default():
    model = Gauss()
    settings = AISSettings(steps=1, chains=1)
    calls = []
    ais(model, torch.zeros(101, 2, dtype=F64), settings, progress=calls.append)
    assert calls == [1, 1]  # two batches: 100 rows and 1
    calls.clear()
    bdmc(model, 101, settings, progress=calls.append)
    assert calls == [1] * 4  # each way, two batches
