"""The trainer's core by value: the best epoch and early stopping, the gradient step, the state a
checkpoint keeps and a run continued from it (pyrovae/infer/{stopping,step,resumable,trainer}.py)."""

from __future__ import annotations

import copy
import math
import signal
import time

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import UserError, load_data
from pyrovae.data import Splits
from pyrovae.infer.callbacks import Callback, ProgressBar, default_callbacks
from pyrovae.infer.faults import Interrupted, NonFiniteLoss
from pyrovae.infer.objectives import ImportanceWeighted
from pyrovae.infer.settings import TrainSettings
from pyrovae.infer.step import GradientStep
from pyrovae.infer.stopping import BestEpoch
from pyrovae.infer.strategy import OneProcess
from pyrovae.infer.terms import validate
from pyrovae.infer.trainer import Trainer
from pyrovae.model.vae import VAE


def test_best_epoch_counts_improvements_ties_nan_and_patience_by_hand():
    best = BestEpoch()
    assert (best.best_val_loss, best.best_epoch, best.bad_epochs, best.stopped_early) == (math.inf, 0, 0, False)
    assert not best.improved(0)
    best.update(1, 3.0, patience=2)
    assert (best.best_val_loss, best.best_epoch, best.bad_epochs, best.stopped_early) == (3.0, 1, 0, False)
    assert best.improved(1) and not best.improved(2)
    best.update(2, 3.0, patience=2)  # a tie is no improvement
    assert (best.best_val_loss, best.best_epoch, best.bad_epochs, best.stopped_early) == (3.0, 1, 1, False)
    best.update(3, float("nan"), patience=2)  # NaN never improves
    assert (best.best_val_loss, best.best_epoch, best.bad_epochs, best.stopped_early) == (3.0, 1, 2, True)
    best.update(4, 1.0, patience=2)  # an improvement resets the count and the stop
    assert (best.best_val_loss, best.best_epoch, best.bad_epochs, best.stopped_early) == (1.0, 4, 0, False)
    for epoch in (5, 6, 7):
        best.update(epoch, 2.0)  # patience 0: never stops
    assert (best.bad_epochs, best.stopped_early) == (3, False)
    best.update(8, 2.0, patience=1)
    assert best.stopped_early
    state = best.state_dict()
    assert state == {"best_val_loss": 1.0, "best_epoch": 4, "bad_epochs": 4, "stopped_early": True}
    other = BestEpoch()
    other.load_state_dict({**state, "unrelated": 1})
    assert other == best


# -- the trainer's loop, its gradient step and its state ------------------------------------------

STEPS = 3  # 120 training rows in batches of 40


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", subset=120)


def small_vae(data) -> VAE:
    pyro.set_rng_seed(0)  # the same weights every call
    return VAE(guide={"name": "diagonal_normal", "hidden": [8]}, likelihood={"name": "bernoulli", "hidden": [8]},
               latent_dim=2, data_shape=data.data_shape)  # fmt: skip


def make(data, callbacks=(), **keys) -> Trainer:
    keys = {"epochs": 2, "batch_size": 40, "optimizer": "torch.optim.SGD", "lr": 0.002, "seed": 7, **keys}
    return Trainer(small_vae(data), data, callbacks=list(callbacks), progress=False, **keys)


RESUMABLE = {"optimizer_args": {"momentum": 0.9}, "lr_schedule": "torch.optim.lr_scheduler:ExponentialLR",
             "lr_schedule_args": {"gamma": 0.8}, "beta_start": 0.1, "warmup_epochs": 2.0}  # fmt: skip


def params(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.vae.state_dict().items()}


def without_seconds(history):
    return [{k: v for k, v in m.items() if not k.endswith("/seconds")} for m in history]


class StopAt(Callback):
    """Requests a stop (SIGINT) during optimizer step ``step`` (1-based; 0: never), as a signal would
    arrive; records what it sees."""

    def __init__(self, step: int = 0):
        self.at, self.losses, self.interrupts, self.begins = step, [], [], []

    def on_epoch_begin(self, trainer):
        self.begins.append(trainer.epoch)

    def on_after_backward(self, trainer):
        if trainer.step + 1 == self.at:  # counted once the step is done
            trainer.request_stop(signal.SIGINT)

    def on_step_end(self, trainer, loss):
        self.losses.append(loss)

    def on_interrupt(self, trainer):
        self.interrupts.append(None if trainer.mid_epoch is None else dict(trainer.mid_epoch))


@pytest.fixture(scope="module")
def reference(data):
    """Two epochs without an interrupt: the parameters, the history and the test metrics."""
    trainer = make(data, **RESUMABLE)
    test = trainer.fit()
    return params(trainer), without_seconds(trainer.history), test


@pytest.mark.parametrize("stop_at, epoch, batch", [(2, 1, 2), (5, 2, 2), (3, 1, 0)])
def test_an_interrupted_run_resumed_from_its_state_ends_bit_for_bit_as_the_uninterrupted_one(
    data, reference, stop_at, epoch, batch
):
    """A stop after step 2 or 5 interrupts mid-epoch (after batch 2 of epoch 1 or 2); after step 3,
    the last of epoch 1, the epoch ends (validation included) and the stop comes before epoch 2."""
    stop = StopAt(stop_at)
    trainer = make(data, [stop], **RESUMABLE)
    with pytest.raises(Interrupted) as info:
        trainer.fit()
    assert (info.value.signum, info.value.epoch, info.value.batch) == (signal.SIGINT, epoch, batch)
    assert trainer.step == stop_at and trainer.epoch == (epoch - 1 if batch else epoch)
    assert len(trainer.history) == trainer.epoch and trainer.batches_done == batch
    state = trainer.state_dict()
    if batch:
        done = stop.losses[-batch:]  # this epoch's steps so far
        expected = {"batch": batch, "loss_sum": sum(done), "n": 40 * batch}
        assert {k: state["mid_epoch"][k] for k in expected} == expected == {k: stop.interrupts[0][k] for k in expected}
        assert trainer.running_loss() == sum(done) / (40 * batch)
    else:
        assert state["mid_epoch"] is None and stop.interrupts == [None]
    assert (state["epoch"], state["step"], state["world_size"]) == (trainer.epoch, stop_at, 1)

    again = make(data, [StopAt()], **RESUMABLE)
    torch.manual_seed(12345)  # the state's random streams replace whatever ran in between
    again.load_state_dict(state)
    assert (again.epoch, again.step, again.reseeded) == (trainer.epoch, stop_at, "")
    test = again.fit()
    expected_params, expected_history, expected_test = reference
    assert all(torch.equal(v, expected_params[k]) for k, v in again.vae.state_dict().items())
    assert without_seconds(again.history) == expected_history
    assert test == expected_test
    assert again.step == 2 * STEPS and again.epoch == 2 and again.batches_done == 0


class Steps(Callback):
    """Each step's gradient norm before clipping, the parameters before and after, and the loss."""

    def __init__(self):
        self.norms, self.before, self.after, self.grads_after, self.losses = [], [], [], [], []

    def on_after_backward(self, trainer):
        ps = list(trainer.vae.parameters())
        self.norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in ps)))
        self.before.append([p.detach().clone() for p in ps])

    def on_step_end(self, trainer, loss):
        ps = list(trainer.vae.parameters())
        self.after.append([p.detach().clone() for p in ps])
        self.grads_after.append([p.grad for p in ps])
        self.losses.append(loss)


def update_norm(before, after) -> float:
    return math.sqrt(sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(before, after, strict=True)))


@pytest.mark.parametrize("clip", [0.0, 2.0])
def test_an_sgd_step_moves_by_lr_times_the_clipped_gradient_and_grad_norm_is_each_epochs_mean(data, clip):
    steps = Steps()
    trainer = make(data, [steps], lr=0.001, grad_clip=clip)
    first, second = trainer.train_epoch(), trainer.train_epoch()
    assert len(steps.norms) == 2 * STEPS and min(steps.norms) > 2.0  # so clipping does clip
    for norm, before, after in zip(steps.norms, steps.before, steps.after, strict=True):
        expected = 0.001 * (min(norm, clip) if clip else norm)
        assert update_norm(before, after) == pytest.approx(expected, rel=1e-3)
    assert all(g is None for grads in steps.grads_after for g in grads)  # cleared, not zero-filled
    if clip:
        assert first["train/grad_norm"] == pytest.approx(sum(steps.norms[:STEPS]) / STEPS, rel=1e-5)
        assert second["train/grad_norm"] == pytest.approx(sum(steps.norms[STEPS:]) / STEPS, rel=1e-5)
    else:
        assert "train/grad_norm" not in first and "train/grad_norm" not in second
    assert first["train/lr"] == second["train/lr"] == 0.001  # the constant schedule
    assert first["train/loss"] == pytest.approx(sum(steps.losses[:STEPS]) / 120, rel=1e-12)
    assert second["train/loss"] == pytest.approx(sum(steps.losses[STEPS:]) / 120, rel=1e-12)
    assert trainer.step == 2 * STEPS and trainer.batches_done == 0 and trainer.running_loss() == second["train/loss"]


def test_each_step_gets_the_annealed_beta_of_its_global_step_and_train_beta_is_the_epochs_mean(data):
    trainer = make(data, beta_start=0.1, warmup_epochs=2.0)  # beta rises linearly over 6 steps
    seen, forward = [], trainer._forward

    def recording(x, beta, y):
        seen.append(float(beta))
        return forward(x, beta, y)

    trainer._forward = recording
    first, second = trainer.train_epoch(), trainer.train_epoch()
    by_hand = [0.1 + 0.9 * k / 6 for k in range(2 * STEPS)]
    assert seen == pytest.approx(by_hand, rel=1e-6)
    assert first["train/beta"] == pytest.approx(sum(by_hand[:STEPS]) / STEPS)
    assert second["train/beta"] == pytest.approx(sum(by_hand[STEPS:]) / STEPS)


def test_a_non_finite_loss_stops_at_its_epoch_and_batch(data):
    trainer = make(data)
    forward = trainer._forward
    trainer._forward = lambda x, beta, y: forward(x, beta, y) * (math.inf if trainer.step == 4 else 1.0)
    with pytest.raises(NonFiniteLoss) as info:
        trainer.fit()
    assert (info.value.value, info.value.epoch, info.value.batch) == (math.inf, 2, 2)  # the fifth step


def test_the_loop_calls_each_hook_with_the_trainer_times_and_returns_the_test_metrics(data):
    calls = []

    class Record(Callback):
        def on_train_begin(self, trainer):
            calls.append(("train_begin", trainer.epoch))

        def on_epoch_begin(self, trainer):
            calls.append(("epoch_begin", trainer.epoch))

        def add_metrics(self, trainer, split, metrics):
            calls.append(("add_metrics", split, sorted(metrics)[0]))
            metrics[f"{split}/extra"] = float(trainer.epoch)

        def on_epoch_end(self, trainer, epoch, metrics):
            calls.append(("epoch_end", epoch, trainer.epoch, metrics["val/extra"]))

        def on_train_end(self, trainer, metrics):
            calls.append(("train_end", trainer.epoch, dict(metrics)))

    trainer = make(data, [Record()])
    started = time.perf_counter()
    test = trainer.fit()
    wall = time.perf_counter() - started
    assert calls[:-1] == [("train_begin", 0), ("epoch_begin", 0), ("add_metrics", "val", "val/kl"),
                          ("epoch_end", 1, 1, 0.0), ("epoch_begin", 1), ("add_metrics", "val", "val/kl"),
                          ("epoch_end", 2, 2, 1.0), ("add_metrics", "test", "test/kl")]  # fmt: skip
    assert calls[-1] == ("train_end", 2, test) and test["test/extra"] == 2.0
    expected = validate(trainer.vae, trainer.validation_elbo, data.evaluation_data("test"), 1000, 0, None)
    assert {k: v for k, v in test.items() if k != "test/extra"} == {f"test/{k}": v for k, v in expected.items()}
    for metrics in trainer.history:
        assert 0 < metrics["train/seconds"] < wall and 0 < metrics["val/seconds"] < wall
    assert [m["val/extra"] for m in trainer.history] == [0.0, 1.0]


def test_validation_uses_the_validation_settings_and_a_callback_adds_to_them(data):
    trainer = make(data, validation={"batch_size": 50, "seed": 3})
    metrics = trainer.validate()  # the validation split by default
    expected = validate(trainer.vae, trainer.validation_elbo, data.evaluation_data("val"), 50, 3, None)
    assert metrics == {f"val/{k}": v for k, v in expected.items()}
    other_seed = validate(trainer.vae, trainer.validation_elbo, data.evaluation_data("val"), 50, 4, None)
    assert other_seed["loss"] != expected["loss"]  # the seed matters, so it is the one passed


def test_settings_merge_keyword_arguments_over_a_settings_object_or_mapping(data):
    base = TrainSettings(epochs=3, lr=0.2, batch_size=40)
    trainer = Trainer(small_vae(data), data, settings=base, lr=0.3, progress=False, callbacks=[])
    assert (trainer.settings.epochs, trainer.settings.lr, trainer.settings.batch_size) == (3, 0.3, 40)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.3 and trainer.steps_per_epoch == STEPS
    trainer = Trainer(small_vae(data), data, settings={"epochs": 4}, batch_size=60, progress=False, callbacks=[])
    assert (trainer.settings.epochs, trainer.settings.batch_size, trainer.steps_per_epoch) == (4, 60, 2)
    assert (trainer.epoch, trainer.step, trainer.batches_done, trainer.mid_epoch) == (0, 0, 0, None)
    assert trainer.history == []
    assert (trainer.reseeded, trainer.running_loss(), trainer.improved) == ("", 0.0, False)
    defaults = Trainer(small_vae(data), data, batch_size=40, progress=False)
    assert [type(cb) for cb in defaults.callbacks] == [type(cb) for cb in default_callbacks(defaults.validation, False)]


def test_a_state_of_another_world_size_reseeds_by_epoch_and_drops_the_mid_epoch_position(data):
    trainer = make(data, [StopAt(8)], epochs=3)  # stops after batch 2 of epoch 3
    with pytest.raises(Interrupted):
        trainer.fit()
    state = {**trainer.state_dict(), "world_size": 2}
    assert state["mid_epoch"] is not None and trainer.epoch == 2
    again = make(data, epochs=3)
    again.load_state_dict(state)
    assert again.reseeded == "trained on 2 process(es), resumed on 1: random streams reseeded"
    assert again.mid_epoch is None and (again.epoch, again.step) == (2, 8)
    drawn = torch.rand(4)
    pyro.set_rng_seed(7 + 1_000 * 2)  # train.seed + 1000 x epoch + rank 0
    assert torch.equal(drawn, torch.rand(4))


def test_a_state_without_a_world_size_is_one_process_and_continues_its_random_streams(data):
    trainer = make(data)
    trainer.train_epoch()
    state = trainer.state_dict()
    expected = torch.rand(4)  # what the saved stream draws next
    del state["world_size"]  # a checkpoint written before the key existed
    again = make(data)
    again.load_state_dict(state)
    assert again.reseeded == "" and torch.equal(torch.rand(4), expected)


def test_the_state_is_a_copy_that_training_on_does_not_change(data):
    trainer = make(data, optimizer_args={"momentum": 0.9})
    trainer.train_epoch()
    trainer.epoch += 1
    trainer.history.append({"train/loss": 1.0})
    state = trainer.state_dict()
    assert set(state) == {"epoch", "step", "best_val_loss", "best_epoch", "bad_epochs", "stopped_early", "history",
                          "mid_epoch", "module", "optimizer", "scheduler", "rng", "world_size"}  # fmt: skip
    frozen = copy.deepcopy(state)
    trainer.train_epoch()  # parameters and momentum buffers change in place
    trainer.history[0]["train/loss"] = 2.0
    assert all(not torch.equal(v, frozen["module"][k]) for k, v in trainer.vae.named_parameters())
    flat, flat_frozen = _leaves(state), _leaves(frozen)
    assert len(flat) == len(flat_frozen) > 10
    for (path, value), (_, kept) in zip(flat, flat_frozen, strict=True):
        assert type(value) is type(kept), path  # tuples stay tuples (the NumPy and Python RNG states)
        if torch.is_tensor(value):
            assert torch.equal(value, kept) and not value.requires_grad, path
        else:
            assert value == kept, path
    assert isinstance(state["rng"]["numpy"], tuple) and isinstance(state["rng"]["python"], tuple)


def _leaves(obj, path=""):
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, f"{path}/{k}")] + [(path, dict)]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, f"{path}/{i}")] + [(path, type(obj))]
    return [(path, obj)]


def test_the_state_of_another_optimizer_is_refused_in_one_line_naming_the_key(data):
    sgd = make(data, optimizer_args={"momentum": 0.9})
    sgd.train_epoch()
    adam = make(data, optimizer="adam")
    with pytest.raises(UserError) as info:
        adam.load_state_dict(sgd.state_dict())
    message = str(info.value)
    try:  # torch's own complaint, which the line quotes
        torch.optim.Adam(adam.vae.parameters()).load_state_dict(sgd.state_dict()["optimizer"])
    except (KeyError, ValueError, RuntimeError) as err:
        complaint = f"({type(err).__name__}: {err})"
    assert message.startswith(f"the checkpoint's optimizer state does not fit train.optimizer = adam {complaint}")
    assert message.endswith(
        "); was the optimizer replaced during training? Name the optimizer the run was trained with in "
        "train.optimizer (an import path and train.optimizer_args) and train again"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_objective_options_reach_the_training_and_the_validation_elbo(data):
    renyi = make(data, elbo="renyi", renyi_alpha=0.3, num_particles=3).elbo
    assert (type(renyi), renyi.num_particles, renyi.alpha, renyi.dreg) == (ImportanceWeighted, 3, 0.3, False)
    iwae = make(data, elbo="iwae", num_particles=4, iwae_gradient="dreg").elbo
    assert (iwae.num_particles, iwae.alpha, iwae.dreg) == (4, 0.0, True)
    assert make(data, free_bits=0.25).elbo.lam == 0.25
    trace = make(data, num_particles=2)
    assert trace.elbo.num_particles == trace.validation_elbo.num_particles == 2


def test_the_old_evaluation_keyword_still_sets_the_validation_settings_with_a_warning(data):
    with pytest.warns(DeprecationWarning, match=r"^evaluation= is now called validation=; the old name will go$"):
        trainer = make(data, evaluation={"batch_size": 50, "seed": 3})
    assert (trainer.validation.batch_size, trainer.validation.seed) == (50, 3)


def test_the_default_callbacks_show_progress_unless_told_not_to(data):
    shown = Trainer(small_vae(data), data, batch_size=40)
    assert [type(cb) for cb in shown.callbacks] == [type(cb) for cb in default_callbacks(shown.validation, True)]
    assert isinstance(shown.callbacks[0], ProgressBar)
    hidden = Trainer(small_vae(data), data, batch_size=40, progress=False)
    assert not any(isinstance(cb, ProgressBar) for cb in hidden.callbacks)


def test_the_running_loss_of_a_one_row_step_is_that_steps_loss(data):
    stop = StopAt(1)
    trainer = make(data, [stop], batch_size=1)
    with pytest.raises(Interrupted) as info:
        trainer.fit()
    assert (info.value.epoch, info.value.batch) == (1, 1)
    assert trainer.running_loss() == stop.losses[0] == trainer.mid_epoch["loss_sum"]


def test_a_gradient_step_on_its_own_is_sgd_by_hand_then_the_schedule():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    settings = TrainSettings(optimizer="torch.optim.SGD", lr=0.1, lr_schedule="torch.optim.lr_scheduler:StepLR",
                             lr_schedule_args={"step_size": 1, "gamma": 0.5})  # fmt: skip
    gradient = GradientStep([w], settings, 1, OneProcess())
    gradient.step(None, (w**2).sum(), 0, 2)  # no hooks set: none called; the gradient is 2 w
    assert torch.equal(w.detach(), torch.tensor([1.0 - 0.1 * 2.0, -2.0 + 0.1 * 4.0])) and w.grad is None
    gradient.step(None, (w**2).sum(), 1, 2)  # at the halved rate
    assert torch.allclose(w.detach(), torch.tensor([0.8 - 0.05 * 1.6, -1.6 + 0.05 * 3.2]))
    assert gradient.epoch_metrics() == {"train/lr": 0.1 * 0.5**2}


def test_an_early_stopped_run_still_validates_on_the_test_split_and_ends_its_callbacks(data):
    ended = []

    class Worse(Callback):
        def add_metrics(self, trainer, split, metrics):
            if split == "val":
                metrics["val/loss"] = float(trainer.epoch)  # the first epoch is the best

        def on_train_end(self, trainer, metrics):
            ended.append(dict(metrics))

    trainer = make(data, [Worse()], epochs=5, patience=1)
    test = trainer.fit()
    assert trainer.epoch == 2 and trainer.best.stopped_early and trainer.best.best_epoch == 1
    assert ended == [test] and "test/loss" in test


class PartlyRegistered(torch.nn.Module):
    """A well-formed VAE whose ``unused`` parameter no ``pyro.module`` call registers."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(144, 4), torch.nn.Linear(2, 144)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def model(self, x):
        pyro.module("partly_dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z).reshape(*z.shape[:-1], *x.shape[1:])).to_event(3), obs=x)

    def guide(self, x):
        pyro.module("partly_enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x.reshape(x.shape[0], -1))
            pyro.sample("z", dist.Normal(h[..., :2], h[..., 2:].exp()).to_event(1))


def test_jit_training_checks_at_construction_that_every_parameter_is_registered(data):
    Trainer(PartlyRegistered(), data, batch_size=40, callbacks=[], progress=False)  # not checked without jit
    with pytest.raises(UserError, match=r"^train.jit needs every parameter of .* e.g. 'unused'"):
        Trainer(PartlyRegistered(), data, batch_size=40, jit=True, callbacks=[], progress=False)


class OneLabelPerRow(torch.nn.Module):
    """Samples its discrete guide site ``c`` fine, but assumes one value of it per row: it breaks
    where ``c`` is enumerated (train.elbo = enum), which the construction's check must find."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 8)

    def model(self, x):
        pyro.module("one_label_per_row", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))
            z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + c.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("one_label_per_row", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(x.shape[0])), infer={"enumerate": "parallel"})
            loc, raw = self.net(x).chunk(2, -1)
            loc = loc + c.reshape(-1, x.shape[0]).unsqueeze(-1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 0.1).to_event(1))


def test_the_construction_checks_the_model_with_its_guide_enumerated_only_for_the_enum_elbo():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    toy = Splits("toy", x, x, x)
    Trainer(OneLabelPerRow(), toy, elbo="trace", batch_size=3, callbacks=[], progress=False)  # c drawn: fine
    with pytest.raises(UserError, match=r"^model OneLabelPerRow failed on a batch of 4 datapoints: RuntimeError"):
        Trainer(OneLabelPerRow(), toy, elbo="enum", batch_size=3, callbacks=[], progress=False)


class LabelsOnlyForTheGuide(PartlyRegistered):
    """Its model takes no labels, so training never hands any: neither may the construction's check
    (here a guide given labels fails)."""

    def guide(self, x, y=None):
        if y is not None:
            raise ValueError("the guide was given labels the model does not take")
        super().guide(x)


def test_the_construction_checks_the_model_without_the_labels_a_model_that_takes_none_never_gets(data):
    assert data.labels("val") is not None  # the data have labels
    trainer = Trainer(LabelsOnlyForTheGuide(), data, batch_size=40, callbacks=[], progress=False)
    assert not trainer.labelled


def test_an_optimizer_and_schedule_a_callback_puts_in_place_are_the_ones_the_steps_use(data):
    """Replacing ``trainer.optimizer`` (or ``scheduler``) from a callback takes effect: plain SGD with
    a constant rate then moves every parameter by exactly lr times its gradient."""

    class Swap(Callback):
        def on_train_begin(self, trainer):
            trainer.optimizer = torch.optim.SGD(trainer.vae.parameters(), lr=0.05)
            trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)

    class Watch(Callback):
        def on_after_backward(self, trainer):
            self.before = {n: p.detach().clone() for n, p in trainer.vae.named_parameters()}
            self.grads = {n: p.grad.detach().clone() for n, p in trainer.vae.named_parameters()}

    watch = Watch()
    trainer = Trainer(small_vae(data), data, epochs=1, batch_size=120, callbacks=[Swap(), watch], progress=False)
    trainer.fit()
    assert trainer.gradient.optimizer is trainer.optimizer and type(trainer.optimizer) is torch.optim.SGD
    for name, p in trainer.vae.named_parameters():
        torch.testing.assert_close(p.detach(), watch.before[name] - 0.05 * watch.grads[name])
