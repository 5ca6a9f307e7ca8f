"""The training step: Pyro's ELBO as a torch loss + a torch optimizer is SVI, bit for bit.

The reference is the step pyrovae used before (``SVI.step`` with one fused torch Adam behind
Pyro's optimizer interface), kept here only to compare against. Correctness only; speed is
measured by ``benchmarks/speed.py``, never asserted in a test.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.util import is_validation_enabled
from pyro.optim import PyroOptim

from pyrovae.data import Splits
from pyrovae.infer.elbo import ELBOLoss, ScaleLatents, make_elbo
from pyrovae.infer.faults import NonFiniteLoss
from pyrovae.infer.optim import lr_factor, make_optimizer
from pyrovae.infer.trainer import Trainer
from pyrovae.run import config
from pyrovae.run.pipeline import prepare

ELBOS = [("trace", False), ("meanfield", False), ("trace", True), ("meanfield", True)]


class OneTorchAdam(PyroOptim):
    """The reference: SVI hands its parameters to one fused ``torch.optim.Adam`` made up front."""

    def __init__(self, params, lr):
        self.optimizer = torch.optim.Adam(list(params), lr=lr, fused=True)

    def __call__(self, params, *args, **kwargs):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def tiny(tiny_overrides, *extra):
    cfg = config.load(overrides=[*tiny_overrides, *extra])
    vae, splits = prepare(cfg)  # seeds torch with train.seed: same weights every call
    return cfg, vae, splits


def with_annealing(fn):
    """``fn(x)`` with pyrovae's annealing handler, as SVI's model or guide taking ``(x, beta)``."""

    def with_beta(x, beta):
        with ScaleLatents(beta):
            fn(x)

    return with_beta


def batches(x, steps):
    return [x[i % 4 * 50 : (i % 4 + 1) * 50] for i in range(steps)]


@pytest.mark.parametrize("kind,jit", ELBOS)
def test_twenty_steps_of_the_elbo_module_equal_svi_step_bit_for_bit(tiny_overrides, kind, jit):
    _, vae, splits = tiny(tiny_overrides)
    xs, beta = batches(splits.evaluation_data("train"), 20), torch.tensor(0.5)
    svi = SVI(
        with_annealing(vae.model),
        with_annealing(vae.guide),
        OneTorchAdam(vae.parameters(), 1e-2),
        make_elbo(kind, jit=jit),
    )
    torch.manual_seed(1)
    with torch.jit.optimized_execution(False):  # as ELBOLoss runs a traced graph: the eager kernels
        ref_losses = [svi.step(x, beta) for x in xs]
    reference = {k: v.detach().clone() for k, v in vae.named_parameters()}

    pyro.clear_param_store()
    _, vae, _ = tiny(tiny_overrides)
    loss_module, optimizer = ELBOLoss(vae, make_elbo(kind, jit=jit)), make_optimizer(vae.parameters(), lr=1e-2)
    torch.manual_seed(1)
    losses = []
    for x in xs:
        loss = loss_module(x, beta)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    for name, value in vae.named_parameters():
        assert torch.equal(value, reference[name]), name
    assert losses == pytest.approx(ref_losses, rel=1e-6)
    assert list(ELBOLoss(vae, make_elbo(kind)).parameters())  # DDP and optimizers see the VAE's


@pytest.mark.parametrize("kind", ["trace", "meanfield"])
def test_a_jit_elbo_gives_the_gradient_of_its_plain_twin(tiny_overrides, kind):
    _, vae, splits = tiny(tiny_overrides)
    x = splits.evaluation_data("train")[:50]
    grads = {}
    for jit in (False, True):
        loss = ELBOLoss(vae, make_elbo(kind, jit=jit))
        loss(x, torch.tensor(0.7))  # a JIT ELBO compiles on its first call, drawing random numbers
        vae.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        loss(x, torch.tensor(0.7)).backward()
        grads[jit] = [p.grad.clone() for p in vae.parameters()]
    for plain, traced in zip(grads[False], grads[True]):
        torch.testing.assert_close(traced, plain, rtol=1e-4, atol=1e-5)  # not twice it


def test_one_epoch_of_the_trainer_equals_the_svi_loop(tiny_overrides):
    """Shuffling, dynamic binarization, the beta schedule and first-step-only checks included."""
    annealed = ("train.beta_start=0.3", "train.warmup_epochs=2")
    cfg, vae, splits = tiny(tiny_overrides, *annealed)
    trainer = Trainer(vae, splits, settings=cfg["train"], validation=cfg["validation"], progress=False)
    torch.manual_seed(3)
    metrics = trainer.train_epoch()
    trained = {k: v.detach().clone() for k, v in vae.named_parameters()}

    pyro.clear_param_store()
    _, vae, _ = tiny(tiny_overrides, *annealed)
    svi = SVI(
        with_annealing(vae.model),
        with_annealing(vae.guide),
        OneTorchAdam(vae.parameters(), cfg["train"]["lr"]),
        make_elbo(),
    )
    torch.manual_seed(3)
    losses, n = [], 0
    for step, x in enumerate(splits.train_batches(cfg["train"]["batch_size"])):
        losses.append(svi.step(x, beta=torch.tensor(trainer.beta(step))))
        n += x.shape[0]
    for name, value in vae.named_parameters():
        assert torch.equal(value, trained[name]), name
    assert metrics["train/loss"] == pytest.approx(sum(losses) / n, rel=1e-6)
    assert metrics["train/beta"] == pytest.approx(0.3 + 0.7 * 1.5 / 8)  # mean of steps 0..3 of 8


@pytest.mark.parametrize(
    "schedule,expected",
    [
        ("constant", [1.0] * 5),
        ("cosine", [1.0, 0.8535534, 0.5, 0.1464466, 0.0]),  # (1 + cos(pi t / 4)) / 2, t = 0..4
        ("step", [1.0, 1.0, 0.5, 0.5, 0.25]),  # x 0.5 every 1 epoch of 2 steps
    ],
)
def test_learning_rate_schedules(schedule, expected):
    got = [lr_factor(schedule, t, 4, 2, lr=1.0, lr_min=0.0, lr_decay=0.5, lr_decay_epochs=1) for t in range(5)]
    assert got == pytest.approx(expected, abs=1e-6)


def test_a_cosine_schedule_ends_at_lr_min_even_when_it_is_one_step_long():
    assert lr_factor("cosine", 1, 1, 1, lr=1e-3, lr_min=1e-4, lr_decay=0.1, lr_decay_epochs=1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule must be constant, cosine or step, got 'linear'"):
        lr_factor("linear", 0, 1, 1, lr=1e-3, lr_min=0.0, lr_decay=0.1, lr_decay_epochs=1)


def test_make_optimizer_defaults_are_the_train_section_defaults():
    from pyrovae.infer.settings import TrainSettings

    defaults = TrainSettings()
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["fused"]
    assert optimizer.defaults["lr"] == defaults.lr and optimizer.defaults["weight_decay"] == defaults.weight_decay
    complex_weights = make_optimizer([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
    assert complex_weights.defaults["foreach"] and not complex_weights.defaults["fused"]  # no fused complex kernel


def test_the_schedule_steps_the_optimizer_and_is_logged_as_train_lr(tiny_overrides):
    cfg, vae, splits = tiny(
        tiny_overrides,
        'train.lr_schedule="cosine"',
        "train.lr_min=1e-4",
        "train.epochs=2",
        'train.optimizer="adamw"',
        "train.weight_decay=0.05",
    )
    trainer = Trainer(vae, splits, settings=cfg["train"], validation=cfg["validation"], progress=False)
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["fused"]
    assert trainer.optimizer.defaults["weight_decay"] == 0.05  # not AdamW's own default, 0.01
    first = trainer.train_epoch()["train/lr"]
    trainer.epoch += 1
    second = trainer.train_epoch()["train/lr"]
    total = 2 * trainer.steps_per_epoch  # 4 steps an epoch
    assert first == pytest.approx(1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 4 / total))))
    assert second == pytest.approx(1e-4)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_a_longer_resumed_run_continues_the_stretched_schedule(tiny_overrides):
    """Defined behaviour: the schedule is a function of (step, epochs now configured)."""
    cfg, vae, splits = tiny(tiny_overrides, 'train.lr_schedule="cosine"', "train.epochs=1")
    trainer = Trainer(vae, splits, settings=cfg["train"], validation=cfg["validation"], progress=False)
    trainer.train_epoch()
    trainer.epoch += 1
    state = trainer.state_dict()
    longer = Trainer(vae, splits, settings={**cfg["train"], "epochs": 2}, validation=cfg["validation"], progress=False)
    longer.load_state_dict(state)
    steps = longer.steps_per_epoch
    assert longer.scheduler.last_epoch == steps
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-3 * lr_factor("cosine", steps, 2 * steps, steps, lr=1e-3, lr_min=0.0, lr_decay=0.1, lr_decay_epochs=30)
    )


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_bad_data_in_the_first_step_still_fails_and_the_setting_is_restored(tiny_overrides):
    cfg, vae, splits = tiny(tiny_overrides, "train.jit=false")  # the traced step checks when it compiles
    bad = splits.train.clone()
    bad[:] = float("nan")  # NaN pixels -> NaN loc in q(z|x): Pyro's checks reject the Normal
    broken = Splits("broken", train=bad, val=splits.val, test=splits.test)
    trainer = Trainer(vae, broken, settings=cfg["train"], validation=cfg["validation"], progress=False)
    with pytest.raises(ValueError, match="loc"):
        trainer.train_epoch()
    assert is_validation_enabled()
    pyro.enable_validation(False)
    with pytest.raises(NonFiniteLoss):  # unchecked, the NaN reaches the loss, and that stops it too
        trainer.train_epoch()
    assert not is_validation_enabled()  # the user's choice (off) is respected and restored


def test_jit_option_trains(tiny_overrides):
    cfg, vae, splits = tiny(tiny_overrides, "train.jit=true", "data.subset=230")
    trainer = Trainer(vae, splits, settings=cfg["train"], validation=cfg["validation"], progress=False)
    first, second = trainer.train_epoch(), trainer.train_epoch()  # 230 = 4 x 50 + a ragged 30
    assert type(trainer.elbo).__name__ == "JitTrace_ELBO"
    assert second["train/loss"] < first["train/loss"]


def test_two_models_in_one_process_never_share_parameters_without_clearing_the_param_store(tiny_overrides):
    """The trainer has no global side effect: each model registers under a name of its own, so a
    second model's JIT-traced step sees its own parameters, not the first one's left in the store."""
    first_losses = []
    for _ in range(2):  # the same seed, weights and data twice in one process, the store never cleared
        cfg, vae, splits = tiny(tiny_overrides, "train.jit=true")
        before = {k: v.detach().clone() for k, v in vae.named_parameters()}
        trainer = Trainer(vae, splits, settings=cfg["train"], validation=cfg["validation"], progress=False)
        torch.manual_seed(3)
        first_losses.append(trainer.train_epoch()["train/loss"])
        assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters())  # its own weights moved
    assert first_losses[1] == pytest.approx(first_losses[0], rel=1e-6)
    assert len({name.split("$$$")[0] for name in pyro.get_param_store().keys()}) == 2  # two names


def test_early_stopping_and_the_best_epoch_follow_val_loss_through_the_trainer(tiny_overrides):
    """The trainer's own loop, by value: a callback scripts each epoch's val/loss (a callback's
    ``add_metrics`` may set it); patience 2 stops after two epochs without a new lowest value
    (a tie is no improvement, NaN never is), and the best epoch is the lowest one."""
    from pyrovae.infer.callbacks import Callback

    scripted = iter([5.0, 4.0, 4.0, float("nan"), 3.0, 2.0])
    seen = []

    class Script(Callback):
        def add_metrics(self, trainer, split, metrics):
            if split == "val":
                metrics["val/loss"] = next(scripted)

        def on_epoch_end(self, trainer, epoch, metrics):
            seen.append((epoch, trainer.improved, trainer.best.best_epoch))

    cfg, vae, splits = tiny(tiny_overrides, "train.epochs=6", "train.patience=2")
    trainer = Trainer(
        vae, splits, settings=cfg["train"], validation=cfg["validation"], callbacks=[Script()], progress=False
    )
    trainer.fit()
    assert seen == [(1, True, 1), (2, True, 2), (3, False, 2), (4, False, 2)]  # stopped after epoch 4
    assert trainer.epoch == 4 and trainer.best.stopped_early and trainer.best.best_val_loss == 4.0


def test_annealing_multiplies_the_scale_a_subsampled_plate_already_gives_a_latent_site():
    import pyro.distributions as dist

    def model(x):
        with pyro.plate("data", 10, subsample_size=x.shape[0]):  # each datapoint stands for 10 / 4
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with ScaleLatents(0.5):
        trace = pyro.poutine.trace(model).get_trace(torch.zeros(4))
    assert trace.nodes["z"]["scale"] == pytest.approx(0.5 * 10 / 4)
    assert trace.nodes["x"]["scale"] == pytest.approx(10 / 4)  # observed: not annealed


def test_the_eager_step_fills_no_pyro_parameter_store_and_switches_registering_back_on(tiny_overrides):
    """Its torch optimizer holds the parameters: registering them at every call would only cost time."""
    _, vae, splits = tiny(tiny_overrides)
    pyro.clear_param_store()
    ELBOLoss(vae, make_elbo())(splits.evaluation_data("train")[:20], torch.tensor(0.5)).backward()
    assert not list(pyro.get_param_store().keys())
    assert vae.registers and all(p.grad is not None for p in vae.parameters())
