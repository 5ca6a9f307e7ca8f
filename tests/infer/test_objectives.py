"""The modeller's knobs: objectives (IWAE, Rényi, free bits), beta schedules, any torch optimizer and
scheduler, gradient clipping, the loss reduction. Each checked by value against an independent
computation (Pyro's own RenyiELBO, a hand-written floor), so a planted bug in a gradient fails."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO

from pyrovae import UserError, load_data
from pyrovae.infer.callbacks import Callback
from pyrovae.infer.elbo import ELBOLoss, annealing_beta, make_elbo, validation_elbo
from pyrovae.infer.estimators.diagnostics import univariate_factors
from pyrovae.infer.trainer import Trainer
from pyrovae.model.vae import VAE

SHAPE = (1, 4, 4)


def tiny_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(guide={"name": "diagonal_normal", "hidden": [8]}, likelihood={"name": "bernoulli", "hidden": [8]},
               latent_dim=3, data_shape=SHAPE)  # fmt: skip


def batch(n: int = 6) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind, alpha", [("iwae", 0.0), ("renyi", 0.5), ("renyi", 0.2)])
def test_importance_weighted_objectives_equal_pyros_renyi_elbo_in_value_and_gradient(kind, alpha):
    x, k = batch(), 7
    grads = {}
    for who in ("pyrovae", "pyro"):
        vae = tiny_vae()
        vae.zero_grad()
        torch.manual_seed(3)
        if who == "pyrovae":
            loss = ELBOLoss(vae, make_elbo(kind, k, alpha=alpha))(x, torch.tensor(1.0))
            loss.backward()
            value = float(loss)
        else:  # the same draws: Pyro's vectorized particles plate sits where pyrovae's does (dim -2)
            elbo = RenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
            value = elbo.loss_and_grads(vae.model, vae.guide, x)
        grads[who] = (value, [p.grad.clone() for p in vae.parameters()])
    assert grads["pyrovae"][0] == pytest.approx(grads["pyro"][0], rel=1e-5)
    for ours, theirs in zip(grads["pyrovae"][1], grads["pyro"][1]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


class DiscreteLatent(torch.nn.Module):
    """z ~ Bernoulli per dimension (no rsample: score-function gradients), x ~ Normal(W z, 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.decoder, self.encoder = torch.nn.Linear(3, 4), torch.nn.Linear(4, 3)

    def model(self, x):
        pyro.module("discrete", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(torch.full((x.shape[0], 3), 0.3)).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("discrete", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


def test_tracegraph_gives_pyros_tracegraph_value_and_score_function_gradient():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    grads = {}
    for who in ("pyrovae", "pyro"):
        pyro.clear_param_store()
        net = DiscreteLatent()
        torch.manual_seed(3)
        if who == "pyrovae":
            loss = make_elbo("tracegraph", 4).differentiable_loss(net.model, net.guide, x)
            loss.backward()
            value = float(loss)
        else:
            value = TraceGraph_ELBO(num_particles=4).loss_and_grads(net.model, net.guide, x)
        grads[who] = (value, [p.grad.clone() for p in net.parameters()])
    assert grads["pyrovae"][0] == pytest.approx(grads["pyro"][0], rel=1e-6)
    for ours, theirs in zip(grads["pyrovae"][1], grads["pyro"][1]):
        torch.testing.assert_close(ours, theirs)
    assert grads["pyrovae"][1][2].abs().sum() > 0  # the encoder learns only through the score function


def test_free_bits_floors_the_batch_mean_kl_of_each_dimension():
    vae, x, lam = tiny_vae(), batch(), 0.22  # batch means of the KL: 0.20, 0.24, 1.95
    with torch.no_grad():
        vae.posterior.head.bias[:3] = torch.tensor([0.0, 0.0, 2.0])  # the third dimension carries KL, the others little
    torch.manual_seed(1)
    loss = ELBOLoss(vae, make_elbo("trace", free_bits=lam))(x, torch.tensor(1.0))
    # by hand, with the same draw: recon from the decoder at z, KL per dimension in closed form
    torch.manual_seed(1)
    q = vae.posterior(x)
    z = q.rsample()
    recon = -vae.likelihood(z).log_prob(x).sum()
    kl = torch.distributions.kl_divergence(univariate_factors(q), univariate_factors(vae.prior().expand((6,))))
    floored = kl.mean(0).clamp(min=lam)  # the batch mean, then the floor: not the floor per datapoint
    assert (kl.mean(0) < lam).any() and (kl.mean(0) > lam).any()
    assert float(loss) == pytest.approx(float(recon + x.shape[0] * floored.sum()), rel=1e-5)
    assert float(loss) != pytest.approx(float(recon + kl.clamp(min=lam).sum()), rel=1e-4)
    # a dimension under the floor sends no KL gradient to its mean: only the reconstruction moves it
    loss.backward()
    grad_with_floor = vae.posterior.head.bias.grad[:3].clone()
    vae.zero_grad()
    torch.manual_seed(1)
    ELBOLoss(vae, make_elbo("trace", free_bits=1e9))(x, torch.tensor(1.0)).backward()  # every KL floored away
    torch.testing.assert_close(grad_with_floor[:1], vae.posterior.head.bias.grad[:1])
    assert not torch.allclose(grad_with_floor[1:], vae.posterior.head.bias.grad[1:3])


def test_objectives_that_cannot_be_combined_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"^train.jit compiles Pyro's ELBOs .* not iwae"):
        make_elbo("iwae", 5, jit=True)
    with pytest.raises(UserError, match=r"^train.free_bits floors the KL of the ELBO .* not of iwae$"):
        make_elbo("iwae", 5, free_bits=0.1)


def settings(**keys):
    base = dict(beta_start=0.1, beta=1.0, warmup_epochs=0.0, beta_schedule="linear", beta_cycles=2,
                beta_ratio=0.5, epochs=4)  # fmt: skip
    return SimpleNamespace(**{**base, **keys})


def test_beta_schedules_by_value():
    steps = 10  # per epoch: 40 steps in 4 epochs
    linear = settings(warmup_epochs=2, beta=4.0)  # a beta-VAE after the warm-up
    assert [annealing_beta(t, linear, steps) for t in (0, 10, 20, 35)] == pytest.approx([0.1, 2.05, 4.0, 4.0])
    assert annealing_beta(7, settings(), steps) == 0.1  # no warm-up: beta_start throughout, as runs of 0.2 read it
    assert annealing_beta(0, settings(beta_schedule="constant", beta=2.5), steps) == 2.5
    cyclical = settings(beta_schedule="cyclical")  # 2 cycles of 20 steps, rising over the first 10 of each
    values = [annealing_beta(t, cyclical, steps) for t in (0, 5, 10, 15, 20, 25, 39)]
    assert values == pytest.approx([0.1, 0.55, 1.0, 1.0, 0.1, 0.55, 1.0])


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", subset=120)


class Grads(Callback):
    def __init__(self):
        self.norms = []

    def on_after_backward(self, trainer):
        self.norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in trainer.vae.parameters())))


def test_any_torch_optimizer_and_scheduler_by_import_path_clipping_and_the_backward_hook(data):
    vae, grads = small_vae(data), Grads()
    trainer = Trainer(vae, data, epochs=1, batch_size=40, lr=0.01, optimizer="torch.optim.SGD",
                      optimizer_args={"momentum": 0.9}, lr_schedule="torch.optim.lr_scheduler:ExponentialLR",
                      lr_schedule_args={"gamma": 0.5}, grad_clip=1.0, loss_reduction="mean",
                      callbacks=[grads])  # fmt: skip
    assert type(trainer.optimizer) is torch.optim.SGD and trainer.optimizer.param_groups[0]["momentum"] == 0.9
    metrics = trainer.train_epoch()
    assert len(grads.norms) == 3 and metrics["train/grad_norm"] == pytest.approx(sum(grads.norms) / 3, rel=1e-5)
    assert metrics["train/lr"] == pytest.approx(0.01 * 0.5**3)  # stepped after every optimizer step
    state = trainer.state_dict()
    again = Trainer(vae, data, settings=trainer.settings, callbacks=[])
    again.load_state_dict(state)
    assert again.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


def small_vae(data) -> VAE:
    pyro.set_rng_seed(0)  # the same weights every call
    return VAE(guide={"name": "diagonal_normal", "hidden": [8]}, likelihood={"name": "bernoulli", "hidden": [8]},
               latent_dim=2, data_shape=data.data_shape)  # fmt: skip


def test_a_mean_reduction_divides_the_gradient_by_the_batch(data):
    x, grads = data.evaluation_data("train")[:30], {}
    for reduction in ("sum", "mean"):
        grads[reduction] = Grads()
        trainer = Trainer(small_vae(data), data, loss_reduction=reduction, callbacks=[grads[reduction]])
        trainer.gradient.hooks = [grads[reduction]]  # as train_epoch sets them
        torch.manual_seed(5)
        trainer._step(x, None, torch.tensor(1.0), 0)
    assert grads["mean"].norms[0] == pytest.approx(grads["sum"].norms[0] / 30, rel=1e-5)


@pytest.mark.parametrize("keys, message", [
    ({"optimizer": "torch.optim.NoSuchThing"}, r"^train.optimizer = 'torch.optim.NoSuchThing' is not a class"),
    ({"optimizer": "torch.optim.SGD", "optimizer_args": {"momentun": 0.9}},
     r"^train.optimizer torch.optim.SGD could not be built"),
    ({"lr_schedule": "torch.optim.lr_scheduler.StepLR"},
     r"^train.lr_schedule torch.optim.lr_scheduler.StepLR could not be built"),
])  # fmt: skip
def test_an_optimizer_or_scheduler_that_cannot_be_built_is_one_line(data, keys, message):
    with pytest.raises(UserError, match=message):
        Trainer(small_vae(data), data, callbacks=[], **keys)


def test_a_checkpoint_of_another_optimizer_is_one_line_on_resume(data):
    sgd = Trainer(small_vae(data), data, epochs=1, batch_size=40, optimizer="torch.optim.SGD",
                  optimizer_args={"momentum": 0.9}, callbacks=[])  # fmt: skip
    sgd.train_epoch()
    adam = Trainer(small_vae(data), data, epochs=1, batch_size=40, callbacks=[])  # the run's config says adam
    with pytest.raises(UserError, match=r"^the checkpoint's optimizer state does not fit train.optimizer = adam"):
        adam.load_state_dict(sgd.state_dict())


def test_validation_is_the_elbo_at_beta_one_whatever_trains():
    from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

    from pyrovae.infer.elbo import validation_elbo

    assert type(validation_elbo("trace")) is Trace_ELBO and type(validation_elbo("enum")) is TraceEnum_ELBO
    meanfield = validation_elbo("meanfield", 3)
    assert type(meanfield) is TraceMeanField_ELBO and meanfield.num_particles == 3
    for kind in ("iwae", "renyi", "tracegraph"):  # a training device; validation stays the one-sample ELBO
        assert type(validation_elbo(kind, 5)) is Trace_ELBO and validation_elbo(kind, 5).num_particles == 1
    assert make_elbo("iwae", 5, alpha=0.5).alpha == 0.0 and make_elbo("renyi", 5, alpha=0.3).alpha == 0.3
    assert make_elbo("enum").strict_enumeration_warning is False  # pyrovae's plates: no warning to give
    assert make_elbo("trace").strict_enumeration_warning is True


def test_a_model_written_for_0_2_that_takes_beta_receives_it_with_a_deprecation_warning():
    class TakesBeta(torch.nn.Module):
        seen: list = []

        def model(self, x, beta=1.0):
            self.seen.append(float(beta))
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

        def guide(self, x, beta=1.0):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(0.5, 1.0))

    with pytest.warns(DeprecationWarning, match=r"^TakesBeta\.model takes 'beta': pyrovae now anneals every latent"):
        loss = ELBOLoss(TakesBeta(), make_elbo("trace"))
    loss(torch.zeros(3), 0.25)
    assert TakesBeta.seen == [0.25]  # given to the model as it asked, not applied again by a handler


def test_a_class_that_cannot_be_imported_is_one_line_saying_what_the_key_takes():
    from pyrovae.infer.optim import make_optimizer, make_scheduler

    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(UserError) as err:
        make_optimizer(params, "torch.optim:NoSuchOptimizer")
    assert str(err.value) == (
        "train.optimizer = 'torch.optim:NoSuchOptimizer' is not a class pyrovae can import: "
        "give adam, adamw or an import path such as torch.optim.SGD"
    )
    schedule = SimpleNamespace(lr_schedule="torch.optim.lr_scheduler.NoSuchLR", lr_schedule_args={})
    with pytest.raises(UserError) as err:
        make_scheduler(torch.optim.SGD(params, lr=0.1), schedule, steps_per_epoch=3)
    assert str(err.value) == (
        "train.lr_schedule = 'torch.optim.lr_scheduler.NoSuchLR' is not a class pyrovae can import: "
        "give constant, cosine, step or an import path such as torch.optim.lr_scheduler.ExponentialLR"
    )


def torch_error(build) -> str:
    """What torch itself says when ``build()`` fails: the end of pyrovae's one-line message."""
    with pytest.raises(ValueError) as err:
        build()
    return str(err.value)


def test_optimizer_args_reach_adam_and_an_optimizer_that_cannot_be_built_names_them():
    from pyrovae.infer.optim import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = make_optimizer(params, "adam", lr=0.01, args={"betas": (0.5, 0.8), "amsgrad": True})
    assert adam.defaults["betas"] == (0.5, 0.8) and adam.defaults["amsgrad"] and adam.defaults["lr"] == 0.01
    wrong = {"betas": (1.5, 0.8)}
    with pytest.raises(UserError) as err:
        make_optimizer(params, "adam", args=wrong)
    said = torch_error(lambda: torch.optim.Adam(params, betas=(1.5, 0.8)))
    assert str(err.value) == f"train.optimizer adam could not be built with train.optimizer_args {wrong}: {said}"
    # an optimizer by import path: the learning rate and the arguments it was given (none: {})
    with pytest.raises(UserError) as err:
        make_optimizer(params, "torch.optim.SGD", lr=-1.0)
    said = torch_error(lambda: torch.optim.SGD(params, lr=-1.0))
    assert str(err.value) == (
        f"train.optimizer torch.optim.SGD could not be built with lr = -1.0 and train.optimizer_args {{}}: {said}"
    )
    with pytest.raises(UserError) as err:
        make_optimizer(params, "torch.optim.SGD", lr=0.1, args={"momentum": -0.5})
    said = torch_error(lambda: torch.optim.SGD(params, lr=0.1, momentum=-0.5))
    assert str(err.value) == (
        f"train.optimizer torch.optim.SGD could not be built with lr = 0.1 and train.optimizer_args "
        f"{{'momentum': -0.5}}: {said}"
    )


def test_free_bits_floors_either_elbo_and_refuses_jit_in_one_line():
    from pyrovae.infer.objectives import FreeBits
    from pyrovae.infer.settings import TrainSettings

    for kind in ("trace", "meanfield"):  # both have the KL to floor
        objective = make_elbo(kind, free_bits=0.3)
        assert type(objective) is FreeBits and objective.lam == 0.3
    with pytest.raises(UserError, match=r"^train.free_bits floors the KL of the ELBO .* not of enum$"):
        make_elbo("enum", free_bits=0.3)
    with pytest.raises(UserError) as err:
        make_elbo("trace", jit=True, free_bits=0.3)
    said = "train.jit compiles Pyro's ELBOs (trace, meanfield, enum), not free bits: set train.jit = false"
    assert str(err.value) == said
    # the defaults are the [train] section's
    assert make_elbo("renyi", 5).alpha == TrainSettings().renyi_alpha
    default = validation_elbo()
    assert type(default) is Trace_ELBO and default.num_particles == TrainSettings().num_particles == 1


def test_a_warm_up_shorter_than_two_epochs_still_rises_linearly():
    steps = 10  # per epoch
    for warmup in (1.0, 0.5):  # over 10 and 5 steps
        schedule = settings(warmup_epochs=warmup, beta_start=0.2, beta=1.0)
        rise = warmup * steps
        values = [annealing_beta(t, schedule, steps) for t in (0, 2, 4, 10, 30)]
        assert values == pytest.approx([0.2 + 0.8 * min(1.0, t / rise) for t in (0, 2, 4, 10, 30)])


class Legacy(torch.nn.Module):
    """A pyrovae 0.2 model: its methods take ``beta`` and anneal the latent site themselves."""

    def model(self, x, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x, beta=1.0):
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=beta):
            pyro.sample("z", dist.Normal(0.5 * x, 1.0))


def test_the_deprecation_warning_of_a_0_2_model_names_the_line_that_built_the_loss(monkeypatch):
    """stacklevel 2: attributed to the caller of ``ELBOLoss(...)``, not to pyrovae (Python's default
    filters show a DeprecationWarning only where it is attributed to ``__main__``: a user's script)."""
    import warnings

    levels, warn = [], warnings.warn

    def spy(message, category=None, stacklevel=1, source=None):
        levels.append(stacklevel)
        warn(message, category, stacklevel + 1, source)  # + the spy's own frame

    monkeypatch.setattr(warnings, "warn", spy)
    with pytest.warns(DeprecationWarning, match=r"^Legacy\.model takes 'beta'") as record:
        ELBOLoss(Legacy(), make_elbo("trace"))
    assert levels == [2]  # the frame above __init__ (mutmut's trampoline puts one of its own there)
    trampolined = ELBOLoss.__init__.__code__.co_filename != sys.modules[ELBOLoss.__module__].__file__
    assert record[0].filename == __file__ or trampolined


def test_a_0_2_model_is_given_beta_and_the_data_and_anneals_as_pyrovae_does():
    x, beta = torch.linspace(-1.0, 1.0, 5), 0.3
    with pytest.warns(DeprecationWarning):
        legacy = ELBOLoss(Legacy(), make_elbo("trace"))
    torch.manual_seed(2)
    ours = float(legacy(x, beta))
    torch.manual_seed(2)  # the same draw, the model's own scale applied by Pyro's Trace_ELBO
    expected = Trace_ELBO().loss(Legacy().model, Legacy().guide, x, beta)
    assert ours == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(2)
    assert ours != pytest.approx(Trace_ELBO().loss(Legacy().model, Legacy().guide, x), rel=1e-3)  # beta reached it


class OneDimensional(torch.nn.Module):
    """p(z) = N(0, 1), p(x|z) = N(a z + b, 1) (theta = a, b); q(z) = N(m, exp(log_s)) (phi = m, log_s)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(1.3)), torch.nn.Parameter(torch.tensor(-0.4))
        self.m, self.log_s = torch.nn.Parameter(torch.tensor(0.2)), torch.nn.Parameter(torch.tensor(-0.5))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(self.a * z + self.b, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.m, self.log_s.exp()))


def test_the_doubly_reparameterized_gradient_equals_tucker_et_al_s_formula_by_hand():
    """Tucker et al. 2019, eq. 5 and its model part, written out for a model small enough to
    differentiate by hand: the same draws, the same bound, theta's gradient sum_k w_k d log p / d theta,
    phi's sum_k w_k^2 d log w_k / d z_k d z_k / d phi with q's parameters held fixed in log w."""
    x, k = torch.tensor([0.5, -1.0, 2.0]), 6
    model = OneDimensional()
    loss = ELBOLoss(model, make_elbo("iwae", k, iwae_gradient="dreg"))
    torch.manual_seed(3)
    value = loss(x)
    value.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.manual_seed(3)  # the same draws, read back as the noise of z = m + s eps
    with torch.no_grad(), pyro.plate("particles", k, dim=-2):
        z = pyro.poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    eps = (z - model.m) / model.log_s.exp()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    a, b, m, log_s = params["a"], params["b"], params["m"], params["log_s"]
    z = m + log_s.exp() * eps.detach()
    normal = torch.distributions.Normal
    log_w = (
        normal(0.0, 1.0).log_prob(z)
        + normal(a * z + b, 1.0).log_prob(x)
        - normal(m.detach(), log_s.exp().detach()).log_prob(z)
    )
    w = torch.softmax(log_w.detach(), 0)
    bound = (log_w.logsumexp(0) - math.log(k)).sum()
    theta = torch.autograd.grad((w * normal(a * z.detach() + b, 1.0).log_prob(x)).sum(), [a, b])
    phi = torch.autograd.grad((w.square() * log_w).sum(), [m, log_s])
    assert value.item() == pytest.approx(-bound.item(), rel=1e-6)
    for name, hand in zip(("a", "b", "m", "log_s"), (*theta, *phi)):
        assert ours[name].item() == pytest.approx(-hand.item(), rel=1e-5, abs=1e-7), name
    torch.manual_seed(3)  # Burda et al.'s estimator: the same value and model gradient, another guide gradient
    model.zero_grad()
    standard = ELBOLoss(model, make_elbo("iwae", k))(x)
    standard.backward()
    assert standard.item() == pytest.approx(value.item(), rel=1e-6) and model.a.grad.item() == pytest.approx(
        ours["a"].item(), rel=1e-5
    )
    assert abs(model.m.grad.item() - ours["m"].item()) > 1e-3


def test_with_the_exact_posterior_the_doubly_reparameterized_guide_gradient_is_zero_on_both_levels():
    """log w = log p(x) for every draw of an exact two-level guide, so the path derivative vanishes;
    Burda et al.'s estimator keeps the score term, noise around zero. A parameter held fixed by name
    would miss one level: the shift moves the lower level, whose draw the upper level's path carries."""
    from exact_models import TwoLevelLinear

    class Shifted(TwoLevelLinear):
        def __init__(self):
            super().__init__()
            self.shift = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                loc = (x - self.b) @ self.gain1.T + self.shift
                middle = pyro.sample("middle", dist.MultivariateNormal(loc, scale_tril=self.tril1))
                pyro.sample("top", dist.MultivariateNormal(middle @ self.gain2.T, scale_tril=self.tril2))

    model = Shifted()
    x = model.sample(20)
    for gradient, vanishes in (("dreg", True), ("standard", False)):
        model.zero_grad()
        torch.manual_seed(0)
        value = ELBOLoss(model, make_elbo("iwae", 5, iwae_gradient=gradient))(x)
        value.backward()
        assert value.item() == pytest.approx(-model.log_px(x).sum().item(), rel=1e-9)  # the bound is exact here
        assert (model.shift.grad.abs().max().item() < 1e-9) is vanishes, gradient


def test_the_doubly_reparameterized_gradient_is_refused_in_one_line_where_it_does_not_apply():
    with pytest.raises(
        UserError, match=r"^train.iwae_gradient = 'dreg' is a gradient of the iwae bound: set train.elbo = iwae$"
    ):
        make_elbo("renyi", 5, iwae_gradient="dreg")

    class Coin(OneDimensional):
        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Bernoulli(torch.sigmoid(self.m)))

    with pytest.raises(
        UserError, match=r"^train.iwae_gradient = 'dreg' needs reparameterized latent sites; 'z' is not$"
    ):
        ELBOLoss(Coin(), make_elbo("iwae", 3, iwae_gradient="dreg"))(torch.tensor([0.5]))


def drawn_noise(model: OneDimensional, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The standard normal noise eps of the guide's draws z = m + s eps under ``seed``: (k, B)."""
    torch.manual_seed(seed)
    with torch.no_grad(), pyro.plate("particles", k, dim=-2):
        z = pyro.poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    return (z - model.m) / model.log_s.exp()


@pytest.mark.parametrize("kind, alpha", [("iwae", 0.0), ("renyi", 0.5)])
def test_the_importance_weighted_gradients_equal_the_bound_written_out_by_hand(kind, alpha):
    """L_alpha = 1/(1 - alpha) log 1/K sum_k w_k^(1 - alpha), z_k = m + s eps_k, differentiated as written:
    an implementation independent of Pyro's RenyiELBO (which the test above compares against)."""
    x, k = torch.tensor([0.5, -1.0, 2.0]), 6
    model = OneDimensional()
    torch.manual_seed(4)
    value = ELBOLoss(model, make_elbo(kind, k, alpha=alpha))(x)
    value.backward()
    eps = drawn_noise(model, x, k, 4)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    a, b, m, log_s = params["a"], params["b"], params["m"], params["log_s"]
    z, normal = m + log_s.exp() * eps, torch.distributions.Normal
    log_w = normal(0.0, 1.0).log_prob(z) + normal(a * z + b, 1.0).log_prob(x) - normal(m, log_s.exp()).log_prob(z)
    bound = (((1 - alpha) * log_w).logsumexp(0) - math.log(k)).sum() / (1 - alpha)
    hand = torch.autograd.grad(bound, list(params.values()))
    assert value.item() == pytest.approx(-bound.item(), rel=1e-6)
    for (name, p), g in zip(model.named_parameters(), hand):
        assert p.grad.item() == pytest.approx(-g.item(), rel=1e-5, abs=1e-7), name


def test_the_tracegraph_gradient_equals_the_score_function_surrogate_written_out_by_hand():
    """z ~ Bernoulli(sigmoid(m)) in the guide, Bernoulli(0.3) in the model, x ~ N(a z + b, 1): the
    gradient of E_q[log p(x, z) - log q(z)] estimated by one draw per datapoint is
    grad(log p) + grad(log q) * (log p - log q), each datapoint's z costing its own terms only; the
    direct derivative of -log q(z), zero in expectation, is left out (Pyro's surrogate has no entropy
    term for a site without rsample)."""

    class Coin(OneDimensional):
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Bernoulli(torch.tensor(0.3)))
                pyro.sample("x", dist.Normal(self.a * z + self.b, 1.0), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Bernoulli(torch.sigmoid(self.m)))

    x, model = torch.tensor([0.5, -1.0, 2.0, 0.1]), Coin()
    torch.manual_seed(2)
    value = ELBOLoss(model, make_elbo("tracegraph"))(x)
    value.backward()
    torch.manual_seed(2)
    z = pyro.poutine.trace(model.guide).get_trace(x).nodes["z"]["value"].detach()
    a, b, m = (getattr(model, n).detach().clone().requires_grad_() for n in ("a", "b", "m"))
    log_p = dist.Bernoulli(torch.tensor(0.3)).log_prob(z) + dist.Normal(a * z + b, 1.0).log_prob(x)
    log_q = dist.Bernoulli(torch.sigmoid(m)).log_prob(z)
    elbo = log_p - log_q
    surrogate = (log_p + log_q * elbo.detach()).sum()
    hand = torch.autograd.grad(surrogate, [a, b, m])
    assert value.item() == pytest.approx(-elbo.sum().item(), rel=1e-6)
    for name, g in zip(("a", "b", "m"), hand):
        assert getattr(model, name).grad.item() == pytest.approx(-g.item(), rel=1e-5, abs=1e-6), name
    assert model.log_s.grad is None  # the guide of this model does not use it
