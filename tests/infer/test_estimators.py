"""IWAE, AIS and BDMC against the exact log p(x) of probabilistic PCA.

The VAE is set (not trained) to the true linear-Gaussian model, with the exact posterior mean
and a mean-field scale 1.5x the best one (:mod:`linear_gaussian`), so the ELBO is known in
closed form and sits about 0.47 nats below log p(x). Statistical assertions compare means
over datapoints with a margin of a few standard errors of that mean (computed from the
per-datapoint differences): with a true inequality, a 3-standard-error one-sided margin fails
by chance with probability below 0.2%, and seeds are fixed, so a run is reproducible.
"""

from __future__ import annotations

import pytest
import torch
from linear_gaussian import exact_elbo, linear_vae
from pyro.infer import RenyiELBO

from pyrovae.data import load_data
from pyrovae.infer.estimators.ais import AISSettings, ais, bdmc, schedule
from pyrovae.infer.estimators.iwae import iwae, iwae_batch
from pyrovae.run import config


@pytest.fixture(autouse=True)
def one_thread():
    """AIS moves tiny tensors thousands of times; on a busy 2-core machine torch's second
    thread made each step ~10x slower (measured), so these tests run on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ppca():
    splits = load_data(config.load(None, ["data.name=ppca"])["data"])
    return splits.truth, splits.test


def se(d: torch.Tensor) -> float:
    """Standard error of the mean of per-datapoint values."""
    return float(d.std() / d.numel() ** 0.5)


def test_chunked_iwae_equals_unchunked_and_renyi_elbo_alpha_0(ppca):
    truth, x = ppca
    vae, x, k = linear_vae(truth, 1.5), x[:8], 40
    with torch.no_grad():
        # chunks of 16, 16 and 8 draws x 8 points x 2 dims: multiples of 16 random numbers, so the
        # chunked draws are the very same numbers as one draw of all K (torch's CPU sampler)
        torch.manual_seed(5)
        chunked = iwae_batch(vae, x, k, chunk_size=16)
        torch.manual_seed(5)
        whole = iwae_batch(vae, x, k)
        torch.manual_seed(5)  # max_plate_nesting given: guessing it would draw samples first
        renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
        pyro_loss = renyi.loss(vae.model, vae.guide, x)
    assert chunked.shape == (8,)
    assert torch.allclose(chunked, whole, atol=1e-9)
    assert -chunked.sum().item() == pytest.approx(pyro_loss, rel=1e-5)
    # the public entry point: batches of datapoints, a seeded RNG of its own
    assert torch.equal(iwae(vae, x, k, batch_size=8, chunk_size=16, seed=5), chunked)


def test_iwae_reports_progress_per_batch_is_float64_and_seeded_with_zero_by_default(ppca):
    truth, x = ppca
    vae, x = linear_vae(truth, 1.5), x[:10]
    calls = []
    default = iwae(vae, x, 4, batch_size=4, progress=calls.append)
    assert calls == [4, 4, 2] and default.shape == (10,) and default.dtype == torch.float64
    assert torch.equal(default, iwae(vae, x, 4, batch_size=4, seed=0))


def test_elbo_below_iwae_below_exact_and_iwae_grows_with_k(ppca):
    truth, x = ppca
    vae = linear_vae(truth, 1.5)
    exact, elbo = truth.log_prob(x).double(), exact_elbo(vae, truth, x).double()
    bounds = {k: iwae(vae, x, k, seed=k) for k in (1, 10, 100)}
    # K = 1 is a one-sample ELBO estimate: unbiased for the closed-form ELBO
    d = bounds[1] - elbo
    assert abs(d.mean()) < 4 * se(d)
    for k in (10, 100):
        above_elbo, below_exact = bounds[k] - elbo, bounds[k] - exact
        assert above_elbo.mean() > 3 * se(above_elbo) > 0  # strictly tighter than the ELBO
        assert below_exact.mean() < 3 * se(below_exact)  # still a lower bound
    gain = bounds[10] - bounds[1]
    assert gain.mean() > 3 * se(gain)  # ~0.48 nats, se ~0.06
    gain = bounds[100] - bounds[10]
    assert gain.mean() > -3 * se(gain)  # ~0.02 nats: no decrease
    assert (exact - bounds[100]).mean() < 0.05  # and close to the truth


def test_ais_from_the_posterior_is_close_to_exact(ppca):
    truth, x = ppca
    vae, x = linear_vae(truth, 1.5), x[:100]
    settings = AISSettings(steps=50, chains=16, leapfrog_steps=5, step_size=0.1, start="posterior")
    d = ais(vae, x, settings, seed=0) - truth.log_prob(x).double()
    assert d.shape == (100,)
    # measured: +0.006 +- 0.007 over 200 points; 0.05 nats is ~5 standard errors here
    assert abs(d.mean()) < 0.05
    assert d.mean() < 3 * se(d)  # a stochastic lower bound


def test_bdmc_bounds_sandwich_the_exact_log_likelihood(ppca):
    truth, _ = ppca
    vae = linear_vae(truth, 1.5)
    settings = AISSettings(steps=100, chains=8, leapfrog_steps=5, step_size=0.1, start="prior")
    result = bdmc(vae, 40, settings, seed=0)
    exact = truth.log_prob(result.x).double()
    lower, upper = result.lower - exact, result.upper - exact
    # the model simulates from the truth, so the exact value is known; each bound holds in
    # expectation, checked on the mean with a 3-standard-error margin
    assert lower.mean() < 3 * se(lower)
    assert upper.mean() > -3 * se(upper)
    assert result.gap == pytest.approx(float((result.upper - result.lower).mean()))
    assert 0 < result.gap < 1.0  # measured ~0.4 nats with these few steps


def test_sigmoid_schedule_runs_from_0_to_1_and_increases():
    betas = schedule(100)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 101
    assert (betas.diff() > 0).all()
    assert betas.diff()[0] < betas.diff()[50]  # sigmoid: small steps at the ends


@pytest.mark.parametrize(
    "wrong, said",
    [
        (dict(steps=0), "steps = 0, step_size = 0.05"),
        (dict(chains=-2, leapfrog_steps=0), "chains = -2, leapfrog_steps = 0, step_size = 0.05"),
        (dict(step_size=0.0), "got step_size = 0.0"),
    ],
)
def test_ais_settings_name_the_count_that_is_wrong(wrong, said):
    from pyrovae.errors import UserError

    with pytest.raises(UserError, match="^AIS needs steps, chains and leapfrog steps >= 1") as err:
        AISSettings(**wrong)
    assert str(err.value).endswith(said)
