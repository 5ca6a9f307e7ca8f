"""Any Pyro model/guide pair: validation, IWAE, AIS and diagnostics read traces, never site names.

Models with a known log p(x) (:mod:`exact_models`): with the exact posterior every estimate is
log p(x); with a label enumerated in the guide, the ELBO is log p(x) - KL(q(y|x) || p(y|x)) exactly
and every IWAE draw is p(x). Renaming the default VAE's sites changes no number. Each broken rule
of the interface is one line before anything trains. Last, the traces these all read, function by
function: their shapes, the data site, reconstructions and samples.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from exact_models import ConditionalLinear, LabelledLinear, TwoLevelLinear
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
from pyrovae.infer.traces import (
    data_site,
    enumeration_weights,
    expectation,
    generate,
    guide_trace,
    latent_sites,
    narrow_particles,
    plate_nesting,
    reconstruct,
    replay_model,
    run_traces,
    sample_sites,
    scores,
    trace_guide,
)
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
    # eager: the model's Python (which records the rows) runs at every step, not once when traced
    trainer = Trainer(Labelled(), splits, epochs=1, batch_size=3, jit=False, progress=False)
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


@pytest.mark.parametrize("pixels", [2, 6])  # every plate size but 1 is summed, 2 included
def test_a_plate_nested_inside_data_is_summed_per_datapoint_like_an_event(pixels):
    torch.manual_seed(0)
    flat = PixelPlate(nested=False, pixels=pixels)
    nested = PixelPlate(nested=True, pixels=pixels)
    nested.load_state_dict(flat.state_dict())
    x = torch.bernoulli(torch.full((30, pixels), 0.3))
    check_model(nested, x)
    for elbo in (Trace_ELBO(), TraceMeanField_ELBO()):  # sampled and closed-form KL
        a = datapoint_terms(flat, elbo, x, 10, seed=0)
        b = datapoint_terms(nested, elbo, x, 10, seed=0)
        for key in ("loss", "recon", "kl"):
            assert b[key].shape == (30,) and torch.allclose(a[key], b[key], atol=1e-5), key
    assert torch.allclose(iwae(flat, x, 7, batch_size=10), iwae(nested, x, 7, batch_size=10), atol=1e-5)


# -- the traces, function by function (pyrovae.infer.traces) ----------------------------------------
# Shapes are the contract: a latent site's value is (K, B, *event) under the particles plate, an
# enumerated label takes a dimension of its own left of the plates, and every score is one number
# per datapoint, (*leading, B), whatever plates a model nests inside data and in whichever order
# Pyro gives them their dimensions.


def test_one_draw_per_datapoint_needs_no_nesting_but_particles_and_enumeration_do():
    model = TwoLevelLinear()
    x = model.sample(5)
    guide = trace_guide(model, x)
    replayed = replay_model(model, x, None, guide)
    assert guide.nodes["middle"]["value"].shape == (5, 3) and guide.nodes["top"]["log_prob"].shape == (5,)
    assert {n: s["log_prob"].shape for n, s in sample_sites(replayed).items()} == {
        "top": (5,),
        "middle": (5,),
        "pixels": (5,),
    }
    for option in ({"particles": 2}, {"enumerate_guide": True}):
        with pytest.raises(ValueError, match="^particles and enumeration need the plate nesting$"):
            trace_guide(model, x, **option)


def test_particles_lead_the_plates_and_scores_read_the_nesting_without_them():
    model = TwoLevelLinear()
    x = model.sample(5)
    alone = guide_trace(model, x, None, particles=3, nesting=1)  # the guide without the model
    assert alone.nodes["middle"]["value"].shape == (3, 5, 3)  # (K, B, event)
    model_trace, guide = run_traces(model, x, particles=3, nesting=1)
    scored = scores(model_trace, guide)  # no nesting given: read from the plates, the particles' not counted
    assert scored.nesting == 1
    for kind in (scored.observed, scored.prior, scored.posterior):
        assert {n: v.shape for n, v in kind.items()} == {n: (3, 5) for n in kind}


def test_narrowed_particles_are_the_chosen_draws_of_a_scored_or_an_unscored_trace():
    model = TwoLevelLinear()
    x = model.sample(5)
    unscored = guide_trace(model, x, None, particles=6, nesting=1)  # values only, no log_prob
    part = narrow_particles(unscored, 2, 3, 6, 1)
    assert torch.equal(part.nodes["middle"]["value"], unscored.nodes["middle"]["value"][2:5])
    assert "log_prob" not in part.nodes["middle"]
    scored = trace_guide(model, x, particles=6, nesting=1)
    part = narrow_particles(scored, 2, 3, 6, 1)
    for name in ("top", "middle"):
        for key in ("value", "log_prob"):
            assert torch.equal(part.nodes[name][key], scored.nodes[name][key][2:5]), (name, key)
    replayed = replay_model(model, x, None, part, particles=3, nesting=1)
    assert replayed.nodes["pixels"]["log_prob"].shape == (3, 5)  # the model sees the 3 draws


def test_an_enumerated_label_takes_the_first_dimension_left_of_the_plates():
    # Pyro's convention (TraceEnum_ELBO with max_plate_nesting = 1 enumerates at dim -2, or -3 left
    # of vectorized particles): the label's 3 values in a dimension of their own, z drawn for each
    model = LabelledLinear()
    x, _ = model.sample(5)
    plain = trace_guide(model, x, nesting=1, enumerate_guide=True)
    drawn = trace_guide(model, x, particles=4, nesting=1, enumerate_guide=True)
    assert plain.nodes["digit"]["value"].shape == (3, 1) and plain.nodes["code"]["value"].shape == (3, 5, 2)
    assert drawn.nodes["digit"]["value"].shape == (3, 1, 1) and drawn.nodes["code"]["value"].shape == (3, 4, 5, 2)


def test_a_label_sampled_rather_than_enumerated_is_an_ordinary_latent_site():
    model = LabelledLinear()
    x, _ = model.sample(5)
    scored = scores(*run_traces(model, x))  # the guide samples its digit: no enumeration asked for
    assert scored.latent == ["digit", "code"] and scored.enumerated == ()
    assert enumeration_weights(scored) is None


class Auxiliary(Model):
    """A Gaussian VAE whose guide draws an auxiliary variable ``shift`` (``is_auxiliary``) first."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.dim, self.net = dim, nn.Linear(dim, dim)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
            pyro.sample("z", dist.Normal(self.net(x) + shift.unsqueeze(-1), 1.0).to_event(1))


def test_an_auxiliary_guide_site_is_no_latent_site_of_the_model():
    model, x = Auxiliary(), torch.randn(5, 2)
    check_model(model, x)  # the interface allows it
    model_trace, guide = run_traces(model, x)
    assert latent_sites(model_trace, guide) == ["z"]
    assert scores(model_trace, guide).latent == ["z"]


class Density(Model):
    """A Gaussian density with no latent site at all (its guide samples nothing)."""

    def __init__(self, dim: int = 3):
        super().__init__()
        self.loc = nn.Parameter(torch.linspace(-1.0, 1.0, dim))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(self.loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pass


def test_a_model_without_latent_sites_has_one_plate_and_an_exact_iwae():
    model, x = Density(), torch.randn(6, 3)
    check_model(model, x)
    assert plate_nesting(model, x) == 1
    exact = dist.Normal(model.loc, 1.0).log_prob(x).sum(-1).double()
    assert torch.allclose(iwae(model, x, 4, batch_size=4), exact, atol=1e-5)  # every weight is p(x)


# -- one number per datapoint -------------------------------------------------------------------


class Pixels(Model):
    """A Bernoulli VAE whose pixels are a plate inside ``data`` (``plate = True``) with the dims
    Pyro allocates itself: ``data`` -1, the nested ``pixels`` -2, so x is observed transposed and
    the sites in ``data`` only have one dimension fewer than the plate nesting (2). The same density
    as the pixels as one event (``plate = False``)."""

    def __init__(self, plate: bool, pixels: int = 3, latent: int = 2):
        super().__init__()
        self.plate, self.latent = plate, latent
        self.decoder, self.encoder = nn.Linear(latent, pixels), nn.Linear(pixels, 2 * latent)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent), 1.0).to_event(1))
            logits = self.decoder(z)
            if not self.plate:
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
                return
            logits = logits.transpose(-1, -2)  # (..., P, B)
            if logits.dim() > 2:  # particles: z is (K, 1, B, L), the 1 in the pixels' dimension
                logits = logits.squeeze(-3)
            with pyro.plate("pixels", x.shape[-1]):
                pyro.sample("x", dist.Bernoulli(logits=logits), obs=x.T)

    def guide(self, x):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_plates_pyro_gives_dimensions_itself_are_scored_per_datapoint_like_an_event():
    torch.manual_seed(0)
    event, plate = Pixels(plate=False), Pixels(plate=True)
    plate.load_state_dict(event.state_dict())
    x = torch.bernoulli(torch.full((5, 3), 0.3))
    assert plate_nesting(plate, x) == 2
    scored = {}
    for model in (event, plate):
        torch.manual_seed(1)  # the same z for both
        scored[model] = scores(*run_traces(model, x))
    for kind in ("observed", "prior", "posterior"):
        a, b = getattr(scored[event], kind), getattr(scored[plate], kind)
        for name in a:
            assert b[name].shape == (5,) and torch.allclose(a[name], b[name], atol=1e-6), (kind, name)
    assert torch.allclose(iwae(event, x, 4), iwae(plate, x, 4), atol=1e-6)


def test_an_expectation_over_enumerated_values_weights_them_by_q_and_keeps_each_datapoint():
    weights = torch.tensor([0.25, 0.75]).reshape(2, 1)  # q(e) of 2 enumerated values
    per_value = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])  # (2, B = 3)
    assert torch.equal(expectation(per_value, weights, 3), torch.tensor([4.0, 5.0, 6.0]))
    # a term the same for every datapoint, (2, 1), is one number per datapoint all the same
    assert torch.equal(expectation(torch.tensor([[1.0], [3.0]]), weights, 3), torch.full((3,), 2.5))
    # with particles: (values, K, B) -> (K, B)
    drawn, weights = torch.stack([per_value, 2 * per_value], 1), weights.unsqueeze(-1)  # (2, K = 2, 3)
    expected = torch.tensor([[4.0, 5.0, 6.0], [8.0, 10.0, 12.0]])
    assert torch.equal(expectation(drawn, weights, 3, particles=True), expected)
    constant = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).unsqueeze(-1)  # (2, K, 1)
    assert torch.equal(expectation(constant, weights, 3, particles=True), torch.tensor([[2.5], [3.5]]).expand(2, 3))
    # nothing enumerated: the value itself, a constant broadcast over the batch
    assert torch.equal(expectation(per_value[0], None, 3), per_value[0])
    assert torch.equal(expectation(torch.ones(2, 1), None, 3, particles=True), torch.ones(2, 3))


# -- the data site and pictures ----------------------------------------------------------------------


class CastsTheData(LabelledLinear):
    """Observes its own float64 copy of float32 data (no site observes ``x`` itself)."""

    def model(self, x, y=None):
        super().model(x.to(torch.float64), y)

    def guide(self, x, y=None):
        super().guide(x.to(torch.float64), y)


def test_the_data_site_is_found_by_its_event_shape_when_the_model_observes_a_copy_of_x():
    model = CastsTheData()
    x, y = model.sample(5)
    x = x.float()
    model_trace, _ = run_traces(model, x, y)  # the label is observed first: an event shape of ()
    assert data_site(model_trace, x)["name"] == "x"
    assert reconstruct(model, x, y).shape == (5, 5)
    with pytest.raises(ValueError, match="^no observed site of the model observes the data$"):
        data_site(model_trace, x.unsqueeze(-1))  # nothing has the shape (5, 1)


def test_reconstructions_and_samples_of_a_conditional_model_follow_its_labels():
    model = ConditionalLinear()
    x, y = model.sample(6)
    projection = model.W @ torch.linalg.pinv(model.W)  # onto the column space of W
    for mean in (reconstruct(model, x, y), generate(model, torch.zeros_like(x), y)):
        assert mean.shape == x.shape
        # the mean of p(x | z, y) is W z + B_y: less B_y, it lies in the column space of W
        residual = mean - model.B[y]
        assert torch.allclose(residual @ projection.T, residual, atol=1e-9)


class LabelsToTheModel(nn.Module):
    """p(x | z, y) with q(z | x): only the model takes the labels."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(0.3))

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + y, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.shift * x, 1.0))


class LabelsToTheGuide(LabelsToTheModel):
    """p(x | z) with q(z | x, y): only the guide takes the labels."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.shift * x + y, 1.0))


@pytest.mark.parametrize("cls", [LabelsToTheModel, LabelsToTheGuide])
def test_the_labels_go_to_the_method_that_takes_them_only(cls):
    net, x, y = cls(), torch.linspace(-1.0, 1.0, 6), torch.arange(6.0) % 2
    model = net.model if cls is LabelsToTheModel else lambda x, y: net.model(x)
    guide = net.guide if cls is LabelsToTheGuide else lambda x, y: net.guide(x)
    torch.manual_seed(4)
    ours = ELBOLoss(net, make_elbo("trace"))(x, 1.0, y).item()
    torch.manual_seed(4)  # the same draw: Pyro's ELBO with the labels handed on by hand
    assert ours == pytest.approx(Trace_ELBO().loss(model, guide, x, y), rel=1e-6)
