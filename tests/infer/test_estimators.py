"""IWAE, AIS and BDMC against the exact log p(x) of probabilistic PCA.

The VAE is set (not trained) to the true linear-Gaussian model, with the exact posterior mean
and a mean-field scale 1.5x the best one (:mod:`linear_gaussian`), so the ELBO is known in
closed form and sits about 0.47 nats below log p(x). Statistical assertions compare means
over datapoints with a margin of a few standard errors of that mean (computed from the
per-datapoint differences): with a true inequality, a 3-standard-error one-sided margin fails
by chance with probability below 0.2%, and seeds are fixed, so a run is reproducible.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from exact_models import ConditionalLinear, LabelledLinear
from linear_gaussian import exact_elbo, linear_vae
from pyro.infer import RenyiELBO
from torch import nn

from pyrovae import Model
from pyrovae.data import load_data
from pyrovae.infer.estimators import iwae as iwae_module
from pyrovae.infer.estimators.ais import AISSettings, ais, bdmc, schedule
from pyrovae.infer.estimators.iwae import (
    default_chunk_rows,
    iwae,
    iwae_batch,
    log_weights,
    random_numbers_per_draw,
)
from pyrovae.infer.traces import trace_guide
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


class Logged(Model):
    """A small Gaussian VAE whose guide and model log the (draws, datapoints) of every pass."""

    def __init__(self, latent: int = 2, data: int = 3):
        super().__init__()
        self.latent, self.passes = latent, []
        self.encoder, self.decoder = nn.Linear(data, 2 * latent), nn.Linear(latent, data)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent), 1.0).to_event(1))
            self.passes.append(("model", tuple(z.shape[:-1])))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 0.1).to_event(1))
        self.passes.append(("guide", tuple(z.shape[:-1])))

    def draws(self, role: str, rows: int) -> list[int]:
        """Draws per datapoint of each pass of ``role`` with a particle dimension over ``rows`` datapoints."""
        return [shape[0] for who, shape in self.passes if who == role and shape[1:] == (rows,)]


def test_iwae_runs_the_guide_once_per_block_and_the_model_once_per_chunk(monkeypatch):
    model, x, k = Logged(), torch.randn(4, 3), 12
    with torch.no_grad():
        torch.manual_seed(0)
        whole = iwae_batch(model, x, k)
        # without draw_numel (the numbers a draw takes unknown) the guide runs per chunk
        model.passes.clear()
        torch.manual_seed(0)
        chunked = iwae_batch(model, x, k, chunk_size=4)
        assert model.draws("guide", 4) == model.draws("model", 4) == [4, 4, 4]
        # with it, 2 per datapoint: a chunk of 4 x 4 x 2 = 32 numbers, a multiple of 16, so the guide
        # draws one block of all 12 (GUIDE_ROWS is far more), the same numbers as chunk by chunk
        model.passes.clear()
        torch.manual_seed(0)
        blocked = iwae_batch(model, x, k, chunk_size=4, draw_numel=2)
        assert model.draws("guide", 4) == [12] and model.draws("model", 4) == [4, 4, 4]
        assert torch.allclose(chunked, whole, atol=1e-9) and torch.allclose(blocked, whole, atol=1e-9)
        monkeypatch.setattr(iwae_module, "GUIDE_ROWS", 24)
        cases = [
            (x, 2, 2, [6, 6], [2] * 6),  # 2 x 4 x 2 = 16 numbers: blocks of 24 // (4 x 2) = 3 chunks
            (x, 3, 2, [3] * 4, [3] * 4),  # 3 x 4 x 2 = 24, no multiple of 16: no blocks
            (x[:1], 1, 16, [24, 6], [1] * 30),  # 1 x 1 x 16: blocks of 24 // (1 x 1) chunks
        ]
        for rows, chunk, latent, blocks, chunks in cases:
            model = Logged(latent=latent)
            k = sum(blocks)
            torch.manual_seed(0)
            bound = iwae_batch(model, rows, k, chunk_size=chunk, draw_numel=latent)
            assert model.draws("guide", len(rows)) == blocks and model.draws("model", len(rows)) == chunks
            if chunk != 3:
                torch.manual_seed(0)
                assert torch.allclose(bound, iwae_batch(model, rows, k), atol=1e-9)


def test_iwae_counts_the_numbers_a_draw_takes_and_blocks_only_where_chunks_keep_them(monkeypatch):
    monkeypatch.setattr(iwae_module, "GUIDE_ROWS", 24)
    model, x = Logged(), torch.randn(4, 3)
    whole = iwae(model, x, 12, chunk_size=12)
    for chunk, blocks in ((2, [6, 6]), (1, [1] * 12)):  # 2 x 4 x 2 = 16 numbers a chunk, 1 x 4 x 2 = 8
        model.passes.clear()
        bound = iwae(model, x, 12, chunk_size=chunk)
        assert model.draws("guide", 4) == blocks
        if chunk == 2:
            assert torch.allclose(bound, whole, atol=1e-9)


def test_iwae_chunks_default_to_1024_decoder_rows_on_a_cpu():
    # as documented: chunk_size x batch_size near 1,024 rows on a CPU, 50,000 on a GPU
    assert default_chunk_rows("cpu") == 1_024 and default_chunk_rows(torch.device("cuda")) == 50_000
    for rows, k, batch_size, chunks in (
        (4, 300, 100, [256, 44]),  # 1024 // 4 = 256 draws a chunk
        (1, 1100, 100, [1024, 76]),
        (1025, 2, 2000, [1, 1]),  # 1024 // 1025 = 0: at least one draw a chunk
    ):
        model = Logged()
        iwae(model, torch.randn(rows, 3), k, batch_size=batch_size)
        assert model.draws("model", rows) == chunks


def test_iwae_stopped_early_returns_the_datapoints_done_so_far():
    model, x = Logged(), torch.randn(10, 3)
    full = iwae(model, x, 5, batch_size=4)
    stops = iter([False, True])
    assert torch.equal(iwae(model, x, 5, batch_size=4, stop=lambda: next(stops)), full[:8])


class Switch(Model):
    """A binary latent, sampled in the guide (not enumerated): no rsample."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(s.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.Bernoulli(0.3))


def test_random_numbers_per_draw_counts_the_sampled_values_of_one_datapoint():
    labelled, gaussian, x = LabelledLinear(), Logged(latent=4), torch.randn(1, 3)
    row, _ = labelled.sample(1)
    state = torch.get_rng_state()
    assert random_numbers_per_draw(gaussian, x, None, 1) == 4
    # the label is enumerated, not drawn; z is drawn for each of its 3 values
    assert random_numbers_per_draw(labelled, row, None, 1) == 3 * 2
    assert random_numbers_per_draw(Switch(), x, None, 1) == 0  # not known without rsample
    assert torch.equal(torch.get_rng_state(), state)  # under a forked RNG


def test_log_weights_are_k_by_b_with_an_enumerated_label_summed_out():
    model = LabelledLinear(label_guess=0.6)  # q(y|x) far from p(y|x); q(z|x, y) exact
    x, _ = model.sample(5)
    with torch.no_grad():
        guide = trace_guide(model, x, particles=4, nesting=1, enumerate_guide=True)
        lw = log_weights(model, x, 4, 1, None, guide)
    assert lw.shape == (4, 5)
    # each draw's weight, sum_y p(x, y, z_y) / q(z_y | x, y) with q(z|x, y) = p(z|x, y), is p(x)
    assert torch.allclose(lw, model.log_px(x).expand(4, 5), atol=1e-6)


def test_a_conditional_model_is_scored_with_each_row_s_own_label():
    model = ConditionalLinear()
    x, y = model.sample(12)
    assert torch.allclose(iwae(model, x, 5, batch_size=5, y=y), model.log_px_given_y(x, y), atol=1e-6)


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
