"""The contract every prior, guide and likelihood keeps, tested for every entry of the tables.

Adding a class to ``PRIORS``, ``GUIDES`` or ``LIKELIHOODS`` is all it takes to be tested
here: shapes (with leading sample dims), finite log-probs, sampling, a gradient for every
parameter through the ELBO, device moves, and training of every prior x guide pair under both
ELBOs. Likelihoods are also checked against formulas written out with scipy, and a user's own
class is loaded by import path from a file outside the package.
"""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from scipy import special, stats
from torch.distributions import constraints

from pyrovae import cli
from pyrovae.errors import UserError
from pyrovae.infer.terms import validate
from pyrovae.model.components import build, signature
from pyrovae.model.guides import GUIDES
from pyrovae.model.likelihoods import LIKELIHOODS
from pyrovae.model.priors import PRIORS
from pyrovae.model.vae import VAE
from pyrovae.run import config

LATENT, SHAPE, BATCH, K = 3, (1, 4, 4), 6, 5
#: keep networks tiny wherever a constructor offers these arguments (tests stay fast)
TINY = {"hidden": [8], "flow_hidden": [8], "pseudo_inputs": 4, "components": 3, "transforms": 2}
BASE = {"prior": "standard_normal", "guide": "diagonal_normal", "likelihood": "bernoulli"}
TABLES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are tiny: a second thread only adds synchronisation (and stalls on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(kind: str, name: str, net: str = "mlp") -> dict:
    params = signature(TABLES[kind][name])
    tiny = {**TINY, "net": net, "conv_channels": [4, 8]} if net != "mlp" else TINY
    return {"name": name, **{k: v for k, v in tiny.items() if k in params}}


def make_vae(prior=BASE["prior"], guide=BASE["guide"], likelihood=BASE["likelihood"], net="mlp") -> VAE:
    """The VAE with tiny networks (``net``: the guide's and the likelihood's), built through the same
    builder a config goes through."""
    pyro.set_rng_seed(0)  # the same initial weights whatever ran before
    return VAE(
        spec("prior", prior),
        spec("guide", guide, net),
        spec("likelihood", likelihood, net),
        latent_dim=LATENT,
        data_shape=SHAPE,
    )


NETS = ["mlp", "conv"]


def binary_batch(n=BATCH, seed=0) -> torch.Tensor:
    # binary pixels lie in the support of every likelihood (boolean, [0, 1], 8-bit grid, reals)
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(seed))


def patterns(n: int) -> torch.Tensor:
    """Tiny structured binary data: four 4x4 patterns, so there is something to learn."""
    base = torch.zeros(4, *SHAPE)
    base[0, 0, :2], base[1, 0, 2:], base[2, 0, :, :2], base[3, 0, :, 2:] = 1, 1, 1, 1
    return base[torch.arange(n) % 4]


# --- shapes, finite log-probs, sampling --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_prior_shapes_samples_and_log_probs(name):
    p = make_vae(prior=name).prior()
    assert tuple(p.batch_shape) == () and tuple(p.event_shape) == (LATENT,)
    z = p.sample((K, BATCH))
    assert z.shape == (K, BATCH, LATENT) and torch.isfinite(z).all()
    log_p = p.log_prob(z)
    assert log_p.shape == (K, BATCH) and torch.isfinite(log_p).all()
    assert torch.isfinite(p.log_prob(torch.randn(BATCH, LATENT))).all()


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide_shapes_samples_and_log_probs(name, net):
    vae, x = make_vae(guide=name, net=net), binary_batch()
    q = vae.posterior(x)
    assert tuple(q.batch_shape) == (BATCH,) and tuple(q.event_shape) == (LATENT,)
    assert q.has_rsample  # the ELBOs reparametrize; TraceMeanField_ELBO insists on it
    z = q.rsample((K,))
    assert z.shape == (K, BATCH, LATENT)
    assert q.log_prob(z).shape == (K, BATCH) and torch.isfinite(q.log_prob(z)).all()
    other = torch.randn(K, BATCH, LATENT)  # not a sample of q: no cached density to fall back on
    # the cached density of a sample equals the one computed by inverting the flow from scratch
    assert torch.allclose(q.log_prob(z), q.log_prob(z.detach().clone()), atol=1e-4)
    assert torch.isfinite(q.log_prob(other)).all()
    # the likelihood takes z with the extra sample dim (IWAE-style scoring)
    assert vae.likelihood(z).log_prob(x).shape == (K, BATCH)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_shapes_samples_and_log_probs(name, net):
    vae, x = make_vae(likelihood=name, net=net), binary_batch()
    lik = vae.likelihood(torch.randn(K, BATCH, LATENT))
    assert tuple(lik.batch_shape) == (K, BATCH) and tuple(lik.event_shape) == SHAPE
    log_p = lik.log_prob(x)
    assert log_p.shape == (K, BATCH) and torch.isfinite(log_p).all()
    assert lik.mean.shape == (K, BATCH, *SHAPE)  # val/mse and the image grids use it
    sample = lik.sample()
    assert sample.shape == (K, BATCH, *SHAPE)
    vae.likelihood.check_data(sample.reshape(-1, *SHAPE))  # its own samples are data it accepts


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_refuses_data_outside_its_support(name):
    lik = make_vae(likelihood=name).likelihood
    if lik.data_support is constraints.real:
        pytest.skip("models every real number")
    with pytest.raises(UserError, match=type(lik).__name__):
        lik.check_data(torch.full((2, *SHAPE), 1.5), "val")


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_a_guide_called_in_the_0_2_order_is_swapped_back_with_a_deprecation_warning(name):
    """Every component takes (latent_dim, data_shape); pyrovae 0.2's guides took the reverse."""
    options = {k: v for k, v in TINY.items() if k in signature(GUIDES[name])}
    torch.manual_seed(0)
    today = GUIDES[name](LATENT, SHAPE, **options)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=r"\(latent_dim, data_shape\)"):
        legacy = GUIDES[name](SHAPE, LATENT, **options)
    for (key, a), (_, b) in zip(today.state_dict().items(), legacy.state_dict().items()):
        assert torch.equal(a, b), key


class ViewDecoder(torch.nn.Module):
    """A likelihood written the usual way for 2-D z only: ``z.view(z.shape[0], ...)``."""

    def __init__(self, latent_dim: int, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = data_shape
        self.net = torch.nn.Linear(latent_dim, math.prod(data_shape))

    def forward(self, z):
        logits = self.net(z).view(z.shape[0], *self.data_shape)
        return pyro.distributions.Bernoulli(logits=logits).to_event(len(self.data_shape))


def test_a_likelihood_that_handles_two_dimensional_z_only_is_refused_before_training():
    vae = VAE(
        likelihood=ViewDecoder, guide={"name": "diagonal_normal", "hidden": [8]}, latent_dim=LATENT, data_shape=SHAPE
    )
    with pytest.raises(
        UserError,
        match=r"^likelihood ViewDecoder fails on z of shape \(2, 6, 3\) .* z.shape\[:-1\], "
        r"not z.shape\[0\]$",
    ):
        vae.check_contract(binary_batch())


# --- gradients, devices -------------------------------------------------------------------------

COMPONENTS = [(kind, name) for kind, table in TABLES.items() for name in sorted(table)]


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("kind,name", COMPONENTS)
def test_every_parameter_gets_a_gradient_through_the_elbo(kind, name, net):
    vae = make_vae(**{kind: name}, net=net)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, binary_batch())
    loss.backward()
    for pname, param in vae.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, pname


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
@pytest.mark.parametrize("kind,name", COMPONENTS)
def test_moves_to_cuda_and_computes_there(kind, name):
    vae = make_vae(**{kind: name}).to("cuda")
    x = binary_batch().cuda()
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    assert vae.generate(3).device.type == "cuda"


# --- every prior x guide pair trains, under TraceMeanField_ELBO -------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("guide", sorted(GUIDES))
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_every_prior_guide_pair_lowers_the_loss(prior, guide):
    """TraceMeanField_ELBO: the closed-form KL where registered, Monte Carlo where not (flows,
    mixtures); Trace_ELBO is exercised for every component by the gradient test above."""
    vae, x, elbo = make_vae(prior=prior, guide=guide), patterns(32), TraceMeanField_ELBO()
    before = validate(vae, elbo, x, batch_size=32, seed=1)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.03}), elbo)
    for _ in range(25):
        svi.step(x)
    after = validate(vae, elbo, x, batch_size=32, seed=1)
    assert math.isfinite(after["loss"]) and after["loss"] < before["loss"] - 0.1
    assert after["loss"] == pytest.approx(after["recon"] + after["kl"])  # the split is still reported


# --- likelihoods against independent formulas --------------------------------------------------


def bernoulli_reference(out, x):
    return stats.bernoulli.logpmf(x, special.expit(out))


def continuous_bernoulli_reference(out, x):
    lam = special.expit(out)
    log_norm = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))  # C(lambda), lambda != 1/2
    return log_norm + x * np.log(lam) + (1 - x) * np.log1p(-lam)


def discretized_logistic_reference(out, x):
    loc, scale = out[:, 0], np.exp(np.maximum(out[:, 1], -7.0))
    cdf = lambda v: stats.logistic.cdf(v, loc=loc, scale=scale)  # noqa: E731
    upper = np.where(x >= 1, 1.0, cdf(x + 0.5 / 255))
    lower = np.where(x <= 0, 0.0, cdf(x - 0.5 / 255))
    return np.log(upper - lower)


REFERENCE = {
    "bernoulli": bernoulli_reference,
    "continuous_bernoulli": continuous_bernoulli_reference,
    "discretized_logistic": discretized_logistic_reference,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_likelihood_log_prob_matches_the_formula(name):
    lik, z = make_vae(likelihood=name).likelihood.double(), torch.randn(BATCH, LATENT, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (BATCH, *SHAPE), generator=gen).double() / 255
    if name == "bernoulli":
        x = x.round()
    expected = REFERENCE[name](lik.decoder(z).detach().numpy(), x.numpy())
    expected = expected.reshape(BATCH, -1).sum(1)
    assert np.allclose(lik(z).log_prob(x).detach().numpy(), expected, rtol=1e-6)


def test_gaussian_log_prob_matches_the_formula_with_per_pixel_scale():
    spec_ = {"name": "gaussian", "hidden": [8], "scale": "per_pixel", "init_scale": 0.7}
    lik = build("likelihood", spec_, LIKELIHOODS, latent_dim=LATENT, data_shape=SHAPE).double()
    z, x = torch.randn(BATCH, LATENT, dtype=torch.float64), torch.randn(BATCH, *SHAPE, dtype=torch.float64)
    expected = stats.norm.logpdf(x.numpy(), lik.decoder(z).detach().numpy(), 0.7 + 1e-4)
    assert lik.scale.shape == SHAPE
    assert np.allclose(lik(z).log_prob(x).detach().numpy(), expected.reshape(BATCH, -1).sum(1), rtol=1e-6)


def test_discretized_logistic_is_a_normalized_mass_with_the_mean_it_claims():
    lik = make_vae(likelihood="discretized_logistic").likelihood
    grid = torch.arange(256.0).view(256, 1, 1, 1, 1).expand(256, 1, *SHAPE) / 255
    p = lik(torch.randn(1, LATENT))
    probs = p.base_dist.log_prob(grid).exp()  # (256, 1, *SHAPE): every level of every pixel
    assert torch.allclose(probs.sum(0), torch.ones(1, *SHAPE), atol=1e-4)
    exact_mean = (grid * probs).sum(0)
    assert torch.allclose(p.mean, exact_mean, atol=0.5 / 255 + 1e-4)


# --- a user's own class, by import path, from the CLI -------------------------------------------

USER_PRIOR = """
import pyro.distributions as dist
import torch
from torch import nn

BUILT, CALLED = [], []


class ShiftedNormal(nn.Module):
    def __init__(self, latent_dim: int, shift: float = 0.0):
        super().__init__()
        BUILT.append(shift)
        self.register_buffer("loc", torch.full((latent_dim,), float(shift)))

    def forward(self):
        CALLED.append(1)
        return dist.Normal(self.loc, 1.0).to_event(1)
"""


def test_a_users_prior_from_a_file_outside_the_package_trains_from_the_cli(
    tmp_path, monkeypatch, store, tiny_overrides
):
    (tmp_path / "user_zoo_prior.py").write_text(USER_PRIOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["train", "--no-progress"]
    for item in [
        *tiny_overrides,
        'model.prior.name="user_zoo_prior:ShiftedNormal"',
        "model.prior.shift=2.5",
        "mlflow.experiment=zoo",
    ]:
        args += ["--set", item]
    assert cli.main(args) == 0
    import user_zoo_prior

    assert user_zoo_prior.BUILT and set(user_zoo_prior.BUILT) == {2.5}  # built from the config's argument
    assert user_zoo_prior.CALLED  # and it served as the prior
    run = mlflow.search_runs(experiment_names=["zoo"], output_format="list")[0]
    assert run.data.params["model.prior.name"] == "user_zoo_prior:ShiftedNormal"
    assert float(run.data.params["model.prior.shift"]) == 2.5
    assert math.isfinite(run.data.metrics["val/loss"])


def test_a_wrong_user_argument_names_the_class_and_the_argument(tmp_path, monkeypatch):
    (tmp_path / "user_zoo_prior2.py").write_text(USER_PRIOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"ShiftedNormal.*'shfit'.*did you mean 'shift'"):
        config.load(None, ['model.prior.name="user_zoo_prior2:ShiftedNormal"', "model.prior.shfit=1"])


def test_discretized_logistic_runs_log_bits_per_dim(tmp_path, store, tiny_overrides):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, *SHAPE), generator=gen, dtype=torch.uint8)
    np.save(tmp_path / "eight_bit.npy", images.numpy())  # uint8 arrays are scaled by 255
    args = ["train", "--no-progress"]
    for item in [
        *tiny_overrides,
        "data.name=arrays",
        f'data.file="{tmp_path}/eight_bit.npy"',
        "data.binarize=false",
        "model.likelihood.name=discretized_logistic",
        "model.likelihood.hidden=[8]",
        "mlflow.experiment=bpd",
    ]:
        args += ["--set", item]
    assert cli.main(args) == 0
    metrics = mlflow.search_runs(experiment_names=["bpd"], output_format="list")[0].data.metrics
    dims = math.prod(SHAPE)
    assert metrics["val/bpd"] == pytest.approx(metrics["val/loss"] / (dims * math.log(2)))
    assert metrics["test/bpd"] == pytest.approx(metrics["test/loss"] / (dims * math.log(2)))


def test_the_student_t_experiment_config_builds_and_scores(monkeypatch):
    from pathlib import Path

    from pyrovae.model.vae import build_vae

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    monkeypatch.syspath_prepend(str(experiments))
    cfg = config.load(
        experiments / "student_t.toml", ["model.latent_dim=3", "model.guide.hidden=[8]", "model.likelihood.hidden=[8]"]
    )
    vae = build_vae(cfg["model"], SHAPE)
    assert type(vae.prior).__name__ == "StudentT" and cfg["model"]["prior"]["df"] == 3.0
    assert vae.prior().event_shape == (3,)
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, binary_batch())
    assert torch.isfinite(loss)


class Reshaped(torch.nn.Module):
    """Wraps a component and reshapes what it returns: a contract violation of a chosen kind."""

    def __init__(self, inner: torch.nn.Module, batch_shape=None, event_dims: int | None = None):
        super().__init__()
        self.inner, self.batch_shape, self.event_dims = inner, batch_shape, event_dims

    def forward(self, *args):
        d = self.inner(*args)
        if self.batch_shape is not None:
            d = d.expand(self.batch_shape)
        return d.to_event(self.event_dims) if self.event_dims else d


@pytest.mark.parametrize(
    "kind, wrong, message",
    [
        (
            "prior",
            dict(batch_shape=(2,)),
            "prior Reshaped returned batch_shape (2,), event_shape (3,); expected () and (3,)",
        ),
        (
            "posterior",
            dict(event_dims=1),
            "guide Reshaped returned batch_shape (), event_shape (4, 3); expected (4,) and (3,)",
        ),
        (
            "likelihood",
            dict(event_dims=1),
            "likelihood Reshaped returned batch_shape (), event_shape (4, 1, 2, 2); expected (4,) and (1, 2, 2)",
        ),
    ],
)
def test_a_component_that_breaks_the_shape_contract_is_named_with_what_it_returned(kind, wrong, message):
    vae = VAE(
        guide={"name": "diagonal_normal", "hidden": [5]},
        likelihood={"name": "bernoulli", "hidden": [5]},
        latent_dim=3,
        data_shape=(1, 2, 2),
    )
    x = torch.ones(4, 1, 2, 2)
    vae.check_contract(x)  # the shipped components keep it
    setattr(vae, kind, Reshaped(getattr(vae, kind), **wrong))
    with pytest.raises(UserError) as err:
        vae.check_contract(x)
    assert str(err.value) == message


class RefusesSampleDims(torch.nn.Module):
    """A likelihood for 2-D z only that says so with ``error`` when given more dimensions."""

    def __init__(self, inner: torch.nn.Module, error: Exception):
        super().__init__()
        self.inner, self.error = inner, error

    def forward(self, z):
        if z.dim() > 2:
            raise self.error
        return self.inner(z)


@pytest.mark.parametrize(
    "error, said",
    [
        (ValueError("z must be (B, latent_dim)\nreshape it first"), "ValueError: z must be (B, latent_dim)"),
        (NotImplementedError(), "NotImplementedError: "),  # no message of its own: the type alone
    ],
)
def test_a_likelihood_failing_on_sample_dims_is_named_with_its_error_type_and_first_line(error, said):
    vae = make_vae()
    vae.likelihood = RefusesSampleDims(vae.likelihood, error)
    with pytest.raises(UserError) as err:
        vae.check_contract(binary_batch())
    assert str(err.value) == (
        f"likelihood RefusesSampleDims fails on z of shape (2, {BATCH}, {LATENT}) ({said}); IWAE and AIS pass z "
        f"with leading sample dimensions (K, B, latent_dim): reshape with z.shape[:-1], not z.shape[0]"
    )


class FlattensSampleDims(torch.nn.Module):
    """A likelihood that folds leading sample dims into the batch: right for (B, latent_dim) only."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, z):
        return self.inner(z.reshape(-1, z.shape[-1]))


def test_a_likelihood_that_folds_sample_dims_into_the_batch_is_named_with_the_shapes_expected():
    vae, x = make_vae(), binary_batch()
    vae.likelihood = FlattensSampleDims(vae.likelihood)
    vae.likelihood(vae.posterior(x).sample())  # right for one draw per datapoint, so only the (K, B) check sees it
    with pytest.raises(UserError) as err:
        vae.check_contract(x)
    assert str(err.value) == (
        f"likelihood FlattensSampleDims returned batch_shape ({2 * BATCH},), event_shape {SHAPE}; "
        f"expected (2, {BATCH}) and {SHAPE}"
    )


def test_the_vae_samples_z_and_observes_the_data_as_x():
    """The names :mod:`pyrovae.model.base` documents (``pyro.condition`` and ``Predictive`` use them)."""
    vae, x = make_vae(), binary_batch()
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    sites = {name: site["is_observed"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    assert {k: v for k, v in sites.items() if k != "data"} == {"z": False, "x": True}
    assert trace.nodes["x"]["value"] is x


def test_parameters_go_to_pyros_store_in_training_only():
    """``eval()`` (validation, IWAE, AIS) runs model and guide without registering every parameter."""
    vae, x = make_vae(), binary_batch()
    pyro.clear_param_store()
    vae.eval()
    pyro.poutine.trace(vae.guide).get_trace(x)
    pyro.poutine.trace(vae.model).get_trace(x)
    assert not list(pyro.get_param_store().keys())
    vae.train()
    pyro.poutine.trace(vae.guide).get_trace(x)
    assert sorted(pyro.get_param_store().keys()) == sorted(f"{vae.store_name}$$${n}" for n, _ in vae.named_parameters())
    pyro.clear_param_store()


@pytest.mark.parametrize("name", sorted(n for n in GUIDES if "conv_channels" in signature(GUIDES[n])))
def test_a_guide_s_conv_channels_reach_its_encoder(name):
    options = {k: v for k, v in TINY.items() if k in signature(GUIDES[name])}
    guide = GUIDES[name](LATENT, (1, 8, 8), **options, net="conv", conv_channels=[3, 5])
    convs = [m.out_channels for m in guide.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [3, 5]


def test_a_model_built_from_a_checked_table_checks_no_component_again(monkeypatch):
    """Settings are checked where they enter: a VAE built from resolve_model's table hands each
    component its checked table as it is (a plain copy would be checked again)."""
    from pyrovae.model import components
    from pyrovae.model.models import build_model, resolve_model

    table = resolve_model({"latent_dim": 2, "guide": {"hidden": [4]}, "likelihood": {"hidden": [4]}})
    checked, original = [], components.check_arguments

    def counting(kind, spec, known, context):
        if not components.is_checked(spec):
            checked.append(kind)
        return original(kind, spec, known, context)

    monkeypatch.setattr(components, "check_arguments", counting)
    vae = build_model(table, (1, 4, 4))
    assert checked == [] and vae.posterior.encoder is not None
