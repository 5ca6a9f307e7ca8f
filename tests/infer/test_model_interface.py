"""Any Pyro model/guide pair: validation, IWAE, AIS and diagnostics read traces, never site names.

Models with a known log p(x) (:mod:`exact_models`): with the exact posterior every estimate is
log p(x); with a label enumerated in the guide, the ELBO is log p(x) - KL(q(y|x) || p(y|x)) exactly
and every IWAE draw is p(x). Renaming the default VAE's sites changes no number. Each broken rule
of the interface is one line before anything trains.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from exact_models import LabelledLinear, TwoLevelLinear
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch import nn

from pyrovae import VAE, Model, UserError
from pyrovae.data import Splits
from pyrovae.infer.elbo import ELBOLoss, make_elbo
from pyrovae.infer.estimators.ais import AISSettings, ais, bdmc, check_ais
from pyrovae.infer.estimators.diagnostics import active_units_per_site, kl_per_dimension
from pyrovae.infer.estimators.iwae import iwae
from pyrovae.infer.interface import check_model
from pyrovae.infer.terms import datapoint_terms, elbo_terms
from pyrovae.infer.trainer import Trainer


def se(d: torch.Tensor) -> float:
    return float(d.std() / d.numel() ** 0.5)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- exactness ---------------------------------------------------------------------------------


def test_with_the_exact_posterior_validation_and_iwae_of_a_two_level_model_are_log_px():
    model = TwoLevelLinear()
    x = model.sample(200)
    exact = model.log_px(x)
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO()):
        terms = datapoint_terms(model, elbo, x, batch_size=64, seed=0)
        assert set(terms) == {"loss", "recon", "kl", "mse", "kl/top", "kl/middle"}  # the user's site names
        assert (terms["loss"] + exact).abs().max() < 1e-3
        assert torch.allclose(terms["kl"], terms["kl/top"] + terms["kl/middle"])
    for k in (1, 10):
        assert (iwae(model, x, k, batch_size=64) - exact).abs().max() < 1e-3


def test_with_a_perturbed_guide_elbo_below_iwae_10_below_iwae_1000_below_exact_and_ais_close():
    model = TwoLevelLinear(perturb=0.5)
    x = model.sample(200)
    exact = model.log_px(x)
    elbo = -datapoint_terms(model, Trace_ELBO(), x, batch_size=100, seed=0)["loss"].double()
    iwae_10, iwae_1000 = iwae(model, x, 10, seed=1), iwae(model, x, 1000, seed=2)
    for low, high in ((elbo, iwae_10), (iwae_10, iwae_1000)):
        d = high - low
        assert d.mean() > 3 * se(d) > 0
    d = iwae_1000 - exact
    assert d.mean() <= 2 * se(d)
    settings = AISSettings(steps=100, chains=8, leapfrog_steps=5, step_size=0.1, start="posterior")
    d = ais(model, x[:100], settings, seed=0) - exact[:100]
    assert abs(float(d.mean())) < 0.05


def test_bdmc_sandwiches_log_px_of_a_two_level_model_from_the_prior():
    model = TwoLevelLinear(perturb=0.5)
    settings = AISSettings(steps=100, chains=8, leapfrog_steps=5, step_size=0.1, start="prior")
    result = bdmc(model, torch.zeros(40, 6, dtype=torch.float64), settings, seed=0)
    assert set(result.z) == {"top", "middle"} and result.x.shape == (40, 6)
    exact = model.log_px(result.x)
    lower, upper = result.lower - exact, result.upper - exact
    assert lower.mean() < 3 * se(lower) and upper.mean() > -3 * se(upper)
    assert 0 < result.gap < 1.0


def test_a_label_enumerated_in_the_guide_is_summed_out_exactly():
    model = LabelledLinear(label_guess=0.6)  # q(y|x) far from p(y|x): the ELBO is visibly loose
    x, _ = model.sample(120)
    terms = datapoint_terms(model, TraceEnum_ELBO(), x, batch_size=50, seed=0)
    assert set(terms) == {"loss", "recon", "kl", "mse", "kl/digit", "kl/code"}
    assert torch.allclose(-terms["loss"].double(), model.elbo(x), atol=1e-6)
    q = model.posterior_y(x)
    assert torch.allclose(terms["kl/digit"].double(), (q * (q.log() - model.pi.log())).sum(-1), atol=1e-6)
    assert float((model.log_px(x) - model.elbo(x)).mean()) > 0.1
    # what TraceEnum_ELBO itself computes for the batch, and IWAE: every draw is p(x), q(y|x) cancels
    pyro.clear_param_store()
    assert TraceEnum_ELBO(max_plate_nesting=1).loss(model.model, model.guide, x[:50]) == pytest.approx(
        float(terms["loss"][:50].sum()), rel=1e-6
    )
    assert torch.allclose(iwae(model, x, 3, batch_size=50), model.log_px(x), atol=1e-6)


def test_ais_refuses_a_discrete_latent_in_one_line_and_labels_reach_a_model_that_takes_them():
    model = LabelledLinear()
    x, y = model.sample(20)
    with pytest.raises(UserError, match=r"^AIS needs continuous latent sites, but site 'digit' .* IWAE") as err:
        check_ais(model, x)
    assert "\n" not in str(err.value)
    # given labels, the labelled model scores log p(x, y): y is observed, only z is latent
    terms = elbo_terms(model, Trace_ELBO(), x, y)
    assert set(terms) == {"loss", "recon", "kl", "mse", "kl/code"}


class Renamed(VAE):
    """The default VAE with every site renamed."""

    def model(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            code = pyro.sample("code", self.prior())
            pyro.sample("image", self.likelihood(code), obs=x)

    def guide(self, x):
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("code", self.posterior(x))


def test_renaming_every_site_of_the_default_vae_changes_no_number():
    shape, x = (1, 5, 5), torch.bernoulli(torch.full((30, 1, 5, 5), 0.4), generator=torch.Generator().manual_seed(0))
    models = {}
    for cls in (VAE, Renamed):
        torch.manual_seed(0)
        models[cls] = cls(
            guide={"name": "diagonal_normal", "hidden": [8]},
            likelihood={"name": "bernoulli", "hidden": [8]},
            latent_dim=3,
            data_shape=shape,
        )
    numbers = {}
    for cls, model in models.items():
        terms = datapoint_terms(model, Trace_ELBO(), x, 16, seed=3)
        terms["kl/site"] = terms.pop("kl/z" if cls is VAE else "kl/code")
        torch.manual_seed(4)
        step = ELBOLoss(model, make_elbo()).forward(x, torch.tensor(0.5))
        step.backward()
        settings = AISSettings(steps=5, chains=2, leapfrog_steps=2)
        numbers[cls] = {
            **terms,
            "iwae": iwae(model, x, 7, seed=1),
            "ais": ais(model, x[:4], settings, seed=2),
            "kl_dims": next(iter(kl_per_dimension(model, x).values())),
            "units": torch.tensor(list(active_units_per_site(model, x).values())),
            "step": step.detach(),
            "grad": next(model.parameters()).grad,
        }
    for key, value in numbers[VAE].items():
        assert torch.equal(value, numbers[Renamed][key]), key


# -- the interface, checked up front ------------------------------------------------------------


class Base(Model):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.net = nn.Linear(dim, 2 * dim)
        self.dim = dim

    def q(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 0.1).to_event(1)

    def p(self, z):
        return dist.Normal(z, 1.0).to_event(1)

    def model(self, x):
        pyro.module("base", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
            pyro.sample("x", self.p(z), obs=x)

    def guide(self, x):
        pyro.module("base", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))


class GlobalLatent(Base):
    def model(self, x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
            pyro.sample("x", self.p(z + shift), obs=x)

    def guide(self, x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))
        super().guide(x)


class HyperPrior(Base):
    """A prior component with a sample site of its own: in the model only."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
            z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), tau.unsqueeze(-1)).to_event(1))
            pyro.sample("x", self.p(z), obs=x)


class GuideOnly(Base):
    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))
            pyro.sample("extra", dist.Normal(0.0, 1.0))


class ObservesNothing(Base):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))


class ViewDecoder(Base):
    """A decoder written for 2-D z only."""

    def p(self, z):
        return dist.Normal(z.view(z.shape[0], -1), 1.0).to_event(1)


class ModelEnumerated(Base):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
            pyro.sample("x", self.p(z + c.unsqueeze(-1)), obs=x)


class Conditional(Base):
    def model(self, x, y):
        super().model(x)

    def guide(self, x, y):
        super().guide(x)


class Unregistered(Base):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
            pyro.sample("x", self.p(z), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.q(x))


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (GlobalLatent, {}, r"^site 'shift' of the model of GlobalLatent is outside pyro.plate\('data', B\)"),
        (HyperPrior, {}, r"^site 'tau' is sampled by the model of HyperPrior but not by its guide"),
        (GuideOnly, {}, r"^site 'extra' is sampled by the guide of GuideOnly but not by its model$"),
        (ObservesNothing, {}, r"^the model of ObservesNothing observes nothing"),
        (
            ViewDecoder,
            {},
            r"^model ViewDecoder fails with 2 latent draws per datapoint .* z.shape\[:-1\], not z.shape\[0\]",
        ),
        (ModelEnumerated, {"enumerate_guide": True}, r"^site 'c' of ModelEnumerated is enumerated in the model"),
        (Conditional, {}, r"^model Conditional needs labels \(its model takes y\), but the data have none"),
        (Unregistered, {"jit": True}, r"^train.jit needs every parameter of Unregistered registered with pyro.module"),
    ],
)
def test_each_broken_rule_is_one_line_before_training(cls, options, message):
    x = torch.randn(6, 4)
    with pytest.raises(UserError, match=message) as err:
        check_model(cls(), x, **options)
    assert "\n" not in str(err.value)
    if not options:  # the trainer checks before its first step
        splits = Splits("toy", x, x, x)
        with pytest.raises(UserError, match=message):
            Trainer(cls(), splits, epochs=1, progress=False)
    pyro.clear_param_store()  # the trainer above registered another instance under the same name
    check_model(Base(), x, jit=True, enumerate_guide=True)  # the well-formed one passes every check


def test_a_model_needing_labels_trains_with_each_batch_s_own_labels():
    seen = []

    class Labelled(Conditional):
        def model(self, x, y):
            seen.append((x[:, 0].round().long().tolist(), y.tolist()))
            super().model(x, y)

    x = torch.arange(12.0).repeat_interleave(4).reshape(12, 4)  # row i is all i
    labels = torch.arange(12)
    splits = Splits(
        "toy", x[:8], x[8:10], x[10:], train_labels=labels[:8], val_labels=labels[8:10], test_labels=labels[10:]
    )
    trainer = Trainer(Labelled(), splits, epochs=1, batch_size=3, progress=False)
    seen.clear()
    trainer.fit()
    assert seen and all(rows == ys for rows, ys in seen)  # every batch arrives with its own labels
    assert sorted(sum((ys for _, ys in seen[:3]), [])) == list(range(8))  # one epoch of 8 training rows


def test_the_labels_follow_their_rows_into_every_shard():
    x = torch.arange(21.0).unsqueeze(-1)
    splits = Splits("toy", x, x[:2], x[:2], train_labels=torch.arange(21) * 10)
    for rank in (0, 1):
        for rows, labels in splits.shard_batches(8, rank=rank, world_size=2, seed=3, epoch=0, labelled=True):
            assert torch.equal(labels, rows[:, 0].long() * 10)


def test_jit_compiles_once_whatever_beta_and_batch_and_anneals_every_latent_site(monkeypatch):
    compiles = []
    trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: compiles.append(1) or trace(*a, **k))
    model = TwoLevelLinear(perturb=0.5)
    x = model.sample(40).float()
    model = model.float()
    plain, jitted = ELBOLoss(model, make_elbo("trace")), ELBOLoss(model, make_elbo("trace", jit=True))
    jitted(x[:10], torch.tensor(1.0))  # compiles (and draws) once
    for beta in (0.1, 0.5, 1.0):
        for start in (0, 20):
            losses = []
            for loss in (plain, jitted):
                torch.manual_seed(start)
                losses.append(float(loss(x[start : start + 20], torch.tensor(beta))))
            assert losses[1] == pytest.approx(losses[0], rel=1e-5)  # beta reaches the traced graph
    assert len(compiles) == 1
    torch.manual_seed(0)
    low = float(plain(x, torch.tensor(0.1)))
    torch.manual_seed(0)
    kl = float(elbo_terms(model, Trace_ELBO(), x)["kl"].sum())
    torch.manual_seed(0)
    assert float(plain(x, torch.tensor(1.0))) - low == pytest.approx(0.9 * kl, rel=1e-4)  # both sites annealed


class PixelPlate(Model):
    """A Bernoulli VAE whose pixels are a plate of their own inside ``data`` (``nested = True``)
    instead of one event: the same density, so every per-datapoint number must be the same."""

    def __init__(self, nested: bool, pixels: int = 6, latent: int = 2):
        super().__init__()
        self.nested, self.latent = nested, latent
        self.decoder, self.encoder = nn.Linear(latent, pixels), nn.Linear(pixels, 2 * latent)

    def model(self, x):
        pyro.module("pixel_plate", self)
        with pyro.plate("data", x.shape[0], dim=-2 if self.nested else -1):
            prior = dist.Normal(torch.zeros(self.latent), 1.0).to_event(1)
            z = pyro.sample("z", prior.expand([1] if self.nested else []))
            if self.nested:  # z carries the pixels plate's dimension (size 1): drop it before decoding
                with pyro.plate("pixels", x.shape[-1], dim=-1):
                    pyro.sample("x", dist.Bernoulli(logits=self.decoder(z.squeeze(-2))), obs=x)
            else:
                pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("pixel_plate", self)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        if self.nested:  # the batch on dim -2, as the model's data plate
            loc, log_scale = loc.unsqueeze(-2), log_scale.unsqueeze(-2)
        with pyro.plate("data", x.shape[0], dim=-2 if self.nested else -1):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_plate_nested_inside_data_is_summed_per_datapoint_like_an_event():
    torch.manual_seed(0)
    flat = PixelPlate(nested=False)
    nested = PixelPlate(nested=True)
    nested.load_state_dict(flat.state_dict())
    x = torch.bernoulli(torch.full((30, 6), 0.3))
    check_model(nested, x)
    a = datapoint_terms(flat, Trace_ELBO(), x, 10, seed=0)
    b = datapoint_terms(nested, Trace_ELBO(), x, 10, seed=0)
    for key in ("loss", "recon", "kl"):
        assert b[key].shape == (30,) and torch.allclose(a[key], b[key], atol=1e-5), key
    assert torch.allclose(iwae(flat, x, 7, batch_size=10), iwae(nested, x, 7, batch_size=10), atol=1e-5)
