"""The speed changes change no numbers: one fused Adam, first-step-only validation, the epoch loop.

Correctness only; speed is measured by ``benchmarks/speed.py``, never asserted in a test.
"""

from __future__ import annotations

import copy

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.util import is_validation_enabled

from pyrovae import config
from pyrovae.data import Splits
from pyrovae.faults import NonFiniteLoss
from pyrovae.optim import FusedAdam, make_optim
from pyrovae.pipeline import prepare
from pyrovae.trainer import Trainer


def tiny(tiny_overrides, *extra):
    cfg = config.load(overrides=[*tiny_overrides, *extra])
    vae, splits = prepare(cfg)  # seeds torch with train.seed: same weights every call
    return cfg, vae, splits


def run_steps(vae, optim, x, steps, seed=1):
    svi = SVI(vae.model, vae.guide, optim, Trace_ELBO())
    torch.manual_seed(seed)
    losses = [svi.step(x[i % 4 * 50:(i % 4 + 1) * 50], torch.tensor(0.5)) for i in range(steps)]
    return losses, {k: v.detach().clone() for k, v in vae.named_parameters()}


@pytest.mark.parametrize("impl", ["fused", "foreach"])
def test_one_torch_adam_moves_parameters_as_pyro_adam(tiny_overrides, impl):
    _, vae, splits = tiny(tiny_overrides)
    x = splits.split("train")
    init = {k: v.detach().clone() for k, v in vae.named_parameters()}
    ref_losses, ref = run_steps(vae, pyro.optim.Adam({"lr": 1e-2}), x, 6)
    pyro.clear_param_store()
    _, vae, _ = tiny(tiny_overrides)
    losses, got = run_steps(vae, FusedAdam({"lr": 1e-2}, impl=impl), x, 6)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(ref[name], init[name]) for name in ref)  # every tensor moved


def test_per_parameter_learning_rates_are_honoured(tiny_overrides):
    _, vae, splits = tiny(tiny_overrides)
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    frozen = lambda name: {"lr": 0.0 if "likelihood" in name else 1e-2}  # noqa: E731
    run_steps(vae, FusedAdam(frozen), splits.split("train"), 3)
    for name, value in vae.named_parameters():
        assert torch.equal(value, before[name]) == name.startswith("likelihood"), name


@pytest.mark.parametrize("first", ["fused", "pyro"])
def test_state_round_trip_continues_identically(tiny_overrides, first):
    """Stop after 3 steps, save weights + optimizer state, resume in a fresh FusedAdam: the same
    3 further steps as without the break -- also from a pyro.optim.Adam checkpoint."""
    _, vae, splits = tiny(tiny_overrides)
    x = splits.split("train")
    optim = pyro.optim.Adam({"lr": 1e-2}) if first == "pyro" else FusedAdam({"lr": 1e-2})
    run_steps(vae, optim, x, 3)
    weights, state = copy.deepcopy(vae.state_dict()), copy.deepcopy(optim.get_state())  # as torch.save would
    assert len(state) == len(list(vae.parameters())) and all(s["state"] for s in state.values())
    _, straight = run_steps(vae, optim, x, 3, seed=7)

    pyro.clear_param_store()
    _, resumed_vae, _ = tiny(tiny_overrides)
    resumed_vae.load_state_dict(weights)
    resumed = FusedAdam({"lr": 1e-2})
    resumed.set_state(state)
    _, got = run_steps(resumed_vae, resumed, x, 3, seed=7)
    for name in straight:
        torch.testing.assert_close(got[name], straight[name], rtol=1e-5, atol=1e-6)
    # and FusedAdam's own state loads into a FusedAdam that has already stepped
    resumed.set_state(resumed.get_state())
    assert resumed.get_state().keys() == state.keys()


def test_epoch_loss_is_the_mean_of_the_svi_step_floats(tiny_overrides):
    """The epoch loop (tensor betas, checks off after step 1) gives the same numbers as a plain
    loop of ``svi.step`` floats with beta passed as a Python float keyword."""
    cfg, vae, splits = tiny(tiny_overrides, "train.beta_start=0.3", "train.warmup_epochs=2")
    trainer = Trainer(vae, splits, cfg["train"], cfg["eval"], progress=False)
    torch.manual_seed(3)
    metrics = trainer.train_epoch()

    pyro.clear_param_store()
    _, vae, _ = tiny(tiny_overrides, "train.beta_start=0.3", "train.warmup_epochs=2")
    svi = SVI(vae.model, vae.guide, make_optim(cfg["train"]), Trace_ELBO())
    torch.manual_seed(3)
    losses, n = [], 0
    for step, x in enumerate(splits.train_batches(cfg["train"]["batch_size"])):
        losses.append(svi.step(x, beta=trainer.beta(step)))
        n += x.shape[0]
    assert metrics["train/loss"] == pytest.approx(sum(losses) / n, rel=1e-6)
    assert metrics["train/beta"] == pytest.approx(0.3 + 0.7 * 1.5 / 8)  # mean of steps 0..3 of 8


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_bad_data_in_the_first_step_still_fails_and_the_setting_is_restored(tiny_overrides):
    cfg, vae, splits = tiny(tiny_overrides)
    bad = splits.train.clone()
    bad[:] = float("nan")  # NaN pixels -> NaN loc in q(z|x): Pyro's checks reject the Normal
    broken = Splits("broken", train=bad, val=splits.val, test=splits.test)
    trainer = Trainer(vae, broken, cfg["train"], cfg["eval"], progress=False)
    with pytest.raises(ValueError, match="loc"):
        trainer.train_epoch()
    assert is_validation_enabled()
    pyro.enable_validation(False)
    with pytest.raises(NonFiniteLoss):  # unchecked, the NaN reaches the loss, and that stops it too
        trainer.train_epoch()
    assert not is_validation_enabled()  # the user's choice (off) is respected and restored


def test_jit_option_trains(tiny_overrides):
    cfg, vae, splits = tiny(tiny_overrides, "train.jit=true", "data.subset=230")
    trainer = Trainer(vae, splits, cfg["train"], cfg["eval"], progress=False)
    first, second = trainer.train_epoch(), trainer.train_epoch()  # 230 = 4 x 50 + a ragged 30
    assert type(trainer.elbo).__name__ == "JitTrace_ELBO"
    assert second["train/loss"] < first["train/loss"]
