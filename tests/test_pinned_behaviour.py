"""Promises of the README pinned by their values, so that a small realistic bug fails a test:
KL annealing in model *and* guide, ``mse`` as a per-pixel mean, dynamic binarization redrawn
every epoch, every RNG restored, and every numeric config range enforced at its edge."""

from __future__ import annotations

import random
import typing

import numpy as np
import pyro
import pytest
import torch

from pyrovae.data import Splits
from pyrovae.infer.elbo import ELBOLoss, make_elbo
from pyrovae.infer.rng import get_rng_state, set_rng_state
from pyrovae.infer.terms import elbo_terms
from pyrovae.model.vae import VAE
from pyrovae.run import config
from pyrovae.run.config import SECTIONS

SHAPE = (1, 4, 4)


def tiny_vae() -> VAE:
    pyro.set_rng_seed(0)
    return VAE(
        guide={"name": "diagonal_normal", "hidden": [8]},
        likelihood={"name": "bernoulli", "hidden": [8]},
        latent_dim=3,
        data_shape=SHAPE,
    )


def batch() -> torch.Tensor:
    return torch.bernoulli(torch.full((6, *SHAPE), 0.4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["trace", "meanfield"])
def test_annealing_removes_exactly_one_minus_beta_times_the_kl(kind):
    """loss(1) - loss(beta) = (1 - beta) KL with the same z: the scale sits on the latent site in
    model and guide (on the model's alone, Trace_ELBO would discount -log p(z) only, and
    TraceMeanField_ELBO would not anneal at all)."""
    vae, x, beta = tiny_vae(), batch(), 0.3
    loss = ELBOLoss(vae, make_elbo(kind))
    with torch.no_grad():
        torch.manual_seed(1)
        full = loss(x, torch.tensor(1.0))
        torch.manual_seed(1)
        annealed = loss(x, torch.tensor(beta))
        torch.manual_seed(1)
        kl = elbo_terms(vae, make_elbo(kind), x)["kl"].sum()
    assert abs(float(kl)) > 0.1
    assert float(full - annealed) == pytest.approx((1 - beta) * float(kl), rel=1e-4)


def test_mse_is_the_per_pixel_mean_squared_error_of_the_decoder_mean_at_the_sampled_z():
    vae, x = tiny_vae(), batch()
    with torch.no_grad():
        torch.manual_seed(2)
        mse = elbo_terms(vae, make_elbo(), x)["mse"]
        torch.manual_seed(2)
        z = vae.posterior(x).rsample()  # the draw the ELBO's guide trace made
        expected = ((vae.likelihood(z).mean - x) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(mse, expected)


def as_multiset(rows: torch.Tensor) -> list[tuple]:
    """The binary rows of an epoch, in no order: the shuffle cannot change this, only a new draw."""
    return sorted(tuple(r.flatten().int().tolist()) for r in rows)


def test_dynamic_binarization_is_redrawn_every_epoch_whatever_the_order():
    grey = torch.full((64, *SHAPE), 0.5)
    data = Splits("grey", train=grey, val=grey[:8], test=grey[:8], binarize=True)
    torch.manual_seed(0)
    first, second = (torch.cat(list(data.train_batches(16))) for _ in range(2))
    assert as_multiset(first) != as_multiset(second)
    assert set(first.unique().tolist()) == {0.0, 1.0} and 0.4 < float(first.mean()) < 0.6
    shards = [torch.cat(list(data.shard_batches(16, rank=0, world_size=2, seed=0, epoch=e))) for e in (0, 1)]
    assert as_multiset(shards[0]) != as_multiset(shards[1])


def test_every_random_generator_is_restored():
    state = get_rng_state()
    draws = lambda: (
        torch.rand(3),
        np.random.rand(3),
        random.random(),  # noqa: E731
        torch.cuda.FloatTensor(3).uniform_() if torch.cuda.is_available() else None,
    )
    before = draws()
    set_rng_state(state)
    after = draws()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    if torch.cuda.is_available():
        assert torch.equal(before[3], after[3])


#: the nearest refused value of every numeric key, with its message, written out here: reading
#: the bounds from the fields would let a removed bound remove its own check
OUTSIDE = {
    "data.seed": (-1, "must be at least 0"),
    "data.subset": (-1, "must be at least 0"),
    "data.train_subset": (-1, "must be at least 0"),
    "data.num_classes": (-1, "must be at least 0"),
    "data.labelled": (-1, "must be at least 0"),
    "train.labelled_every": (-1, "must be at least 0"),
    "train.renyi_alpha": (1.0, "must be less than 1.0"),
    "train.free_bits": (-0.1, "must be at least 0.0"),
    "train.beta": (0, "must be greater than 0.0"),
    "train.beta_cycles": (0, "must be at least 1"),
    "train.beta_ratio": (0, "must be greater than 0.0"),
    "train.grad_clip": (-1, "must be at least 0.0"),
    "data.val_fraction": (0.91, "must be at most 0.9"),
    "data.test_fraction": (-0.01, "must be at least 0.0"),
    "model.latent_dim": (0, "must be at least 1"),
    "train.epochs": (0, "must be at least 1"),
    "train.batch_size": (0, "must be at least 1"),
    "train.lr": (0, "must be greater than 0.0"),
    "train.seed": (-1, "must be at least 0"),
    "train.num_particles": (0, "must be at least 1"),
    "train.beta_start": (0, "must be greater than 0.0"),
    "train.warmup_epochs": (-0.5, "must be at least 0.0"),
    "train.weight_decay": (-0.1, "must be at least 0.0"),
    "train.lr_min": (-1e-6, "must be at least 0.0"),
    "train.lr_decay": (1.01, "must be at most 1.0"),
    "train.lr_decay_epochs": (0, "must be at least 1"),
    "train.checkpoint_every": (0, "must be at least 1"),
    "train.patience": (-1, "must be at least 0"),
    "validation.batch_size": (0, "must be at least 1"),
    "validation.seed": (-1, "must be at least 0"),
    "validation.iwae_every": (-1, "must be at least 0"),
    "validation.iwae_k": (0, "must be at least 1"),
    "validation.iwae_n": (-1, "must be at least 0"),
    "mlflow.images_every": (-1, "must be at least 0"),
}
ALSO_ABOVE = {
    "train.renyi_alpha": (-0.1, "must be at least 0.0"),
    "train.beta_ratio": (1.01, "must be at most 1.0"),
    "train.lr_decay": (0, "must be greater than 0.0"),
    "data.val_fraction": (-0.01, "must be at least 0.0"),
    "data.test_fraction": (0.91, "must be at most 0.9"),
}


def test_the_table_covers_every_numeric_config_key():
    numeric = {
        f"{section}.{name}"
        for section, cls in {**SECTIONS, "model": VAE.__init__}.items()
        for name, hint in typing.get_type_hints(cls).items()
        if hint in (int, float)
    }
    assert numeric == set(OUTSIDE)


@pytest.mark.parametrize("key, value, message", [(k, *v) for k, v in [*OUTSIDE.items(), *ALSO_ABOVE.items()]])
def test_the_nearest_value_outside_each_range_is_refused_in_one_line(key, value, message):
    with pytest.raises(Exception) as err:
        config.load(None, [f"{key}={value}"])
    assert str(err.value) == f"config key '{key}' {message}, got {value!r}"


def test_each_rank_gets_its_slice_of_every_global_batch_and_tiny_last_batches_are_dropped():
    rows = torch.arange(21, dtype=torch.float32).view(21, 1, 1, 1)  # 2 global batches of 8 and one of 5
    data = Splits("numbered", train=rows, val=rows[:2], test=rows[:2], binarize=False)
    epoch = {r: list(data.shard_batches(8, rank=r, world_size=2, seed=3, epoch=0)) for r in (0, 1)}
    assert [b.shape[0] for b in epoch[0]] == [4, 4, 3] and [b.shape[0] for b in epoch[1]] == [4, 4, 2]
    seen = torch.cat([*epoch[0], *epoch[1]]).flatten().sort().values
    assert torch.equal(seen, rows.flatten())  # every row once per epoch, split between the ranks
    again = torch.cat(list(data.shard_batches(8, rank=0, world_size=2, seed=3, epoch=0)))
    assert torch.equal(again, torch.cat(epoch[0]))  # the same order on every call (and every rank)
    other_epoch = torch.cat(list(data.shard_batches(8, rank=0, world_size=2, seed=3, epoch=1)))
    other_seed = torch.cat(list(data.shard_batches(8, rank=0, world_size=2, seed=4, epoch=0)))
    assert not torch.equal(other_epoch, again) and not torch.equal(other_seed, again)
    resumed = torch.cat(list(data.shard_batches(8, rank=0, world_size=2, seed=3, epoch=0, start=1)))
    assert torch.equal(resumed, torch.cat(epoch[0][1:]))
    assert data.num_shard_batches(8, 2) == 3 and data.num_shard_batches(10, 2) == 2  # 21 = 2 x 10 + 1 dropped
    assert len(list(data.shard_batches(10, rank=1, world_size=2, seed=3, epoch=0))) == 2  # 1 row < 2 ranks


def test_the_per_epoch_iwae_scores_the_first_iwae_n_validation_points():
    from pyrovae.infer.estimators.iwae import iwae
    from pyrovae.infer.trainer import Trainer

    x = batch()
    data = Splits("tiny", train=x, val=x, test=x, binarize=False)
    trainer = Trainer(
        tiny_vae(), data, epochs=1, progress=False, validation={"iwae_every": 1, "iwae_k": 5, "iwae_n": 4, "seed": 3}
    )
    scored = trainer.validate("val")["val/nll_iwae"]
    for n, expected in ((4, True), (6, False)):  # the first four points, not all six
        assert (
            scored == pytest.approx(-float(iwae(trainer.vae, x[:n], 5, batch_size=1000, seed=3).mean()), abs=1e-6)
        ) is expected


def test_an_epoch_takes_every_training_row_once_and_each_split_has_its_own_fixed_draw():
    grey = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    data = Splits("grey", train=grey, val=grey, test=grey, binarize=False)
    epoch = torch.cat(list(data.train_batches(3)))
    assert torch.equal(epoch.flatten().sort().values, grey.flatten().sort().values)
    binary = Splits("grey", train=grey, val=grey, test=grey, binarize=True)
    fixed = [binary.evaluation_data(split) for split in ("train", "val", "test")]
    assert not any(torch.equal(a, b) for a, b in ((fixed[0], fixed[1]), (fixed[1], fixed[2]), (fixed[0], fixed[2])))
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        binary.evaluation_data("valid")


def test_a_last_global_batch_with_one_row_per_rank_is_kept_and_binarized_shards_stay_float():
    rows = torch.rand(18, 1, 2, 2, generator=torch.Generator().manual_seed(0))  # 2 x 8 + 2 rows = 2 ranks
    data = Splits("grey", train=rows, val=rows[:2], test=rows[:2], binarize=True)
    assert data.num_shard_batches(8, 2) == 3 and data.num_shard_batches(8, 3) == 2
    shards = list(data.shard_batches(8, rank=1, world_size=2, seed=0, epoch=0))
    assert [b.shape[0] for b in shards] == [4, 4, 1]
    assert all(b.dtype == rows.dtype and set(b.unique().tolist()) <= {0.0, 1.0} for b in shards)


def test_restoring_a_cuda_generator_state_on_a_machine_without_cuda_restores_the_rest():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    state = get_rng_state()
    expected = torch.rand(3)
    set_rng_state({**state, "cuda": [torch.zeros(816, dtype=torch.uint8)]})  # saved on a GPU machine
    assert torch.equal(torch.rand(3), expected)


def test_apply_schedule_sets_the_rates_the_scheduler_reports():
    from types import SimpleNamespace

    from pyrovae.infer.optim import apply_schedule, make_scheduler

    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    settings = SimpleNamespace(epochs=4, lr=0.5, lr_min=0.0, lr_decay=0.1, lr_decay_epochs=1, lr_schedule="step")
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch=10)
    scheduler.last_epoch = 25  # as load_state_dict leaves it: step 25 is in epoch 3
    apply_schedule(scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * 0.1**2)
    assert scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]]


@pytest.mark.parametrize("jit", [False, True])
def test_make_elbo_passes_its_options_and_the_loss_defaults_to_beta_one(jit):
    elbo = make_elbo("meanfield", num_particles=3, jit=jit)
    assert elbo.num_particles == 3 and getattr(elbo, "ignore_jit_warnings", jit) is jit
    known = "trace, meanfield, enum, iwae, renyi, tracegraph"
    with pytest.raises(ValueError, match=rf"^elbo must be one of {known}, got 'vimco'$"):
        make_elbo("vimco")
    loss, x = ELBOLoss(tiny_vae(), make_elbo("trace", jit=jit)), batch()
    loss(x)  # a JIT ELBO traces at its first call, which draws random numbers of its own
    pyro.set_rng_seed(1)
    default = loss(x)
    pyro.set_rng_seed(1)
    assert torch.equal(default, loss(x, torch.tensor(1.0)))


def test_the_default_guide_is_the_readme_s_400_unit_relu_encoder():
    from pyrovae.model.guides.diagonal_normal import DiagonalNormal

    guide = DiagonalNormal(latent_dim=2, data_shape=(1, 2, 2))
    assert [type(m) for m in guide.encoder.net] == [torch.nn.Linear, torch.nn.ReLU]
    assert guide.encoder.net[0].out_features == 400 and guide.head.out_features == 2 * 2


def test_model_and_guide_put_z_in_the_same_data_plate_and_the_vae_defaults_are_the_readme_s():
    vae, x = tiny_vae(), batch()
    for fn in (vae.model, vae.guide):
        (frame,) = pyro.poutine.trace(fn).get_trace(x).nodes["z"]["cond_indep_stack"]
        assert (frame.name, frame.size, frame.dim) == ("data", x.shape[0], -1)
    default = VAE(latent_dim=2, data_shape=SHAPE).config
    assert [default[k]["name"] for k in ("prior", "guide", "likelihood")] == [
        "standard_normal",
        "diagonal_normal",
        "bernoulli",
    ]


class Unbuildable(torch.nn.Module):
    def __init__(self, latent_dim: int):
        raise ValueError("boom")


def test_component_errors_name_their_kind_and_a_vae_of_modules_has_no_config():
    from pyrovae.errors import UserError
    from pyrovae.model.guides.diagonal_normal import DiagonalNormal

    with pytest.raises(
        UserError,
        match=r"^guide 'diagonal_normal' .* 'latent_dim' is set by pyrovae .*"
        r"remove it from \[model\.guide\]$",
    ):
        VAE(guide={"name": "diagonal_normal", "latent_dim": 3}, latent_dim=2, data_shape=SHAPE)
    with pytest.raises(UserError, match=r"^likelihood 'Unbuildable' could not be built: boom$"):
        VAE(likelihood=Unbuildable, latent_dim=2, data_shape=SHAPE)
    vae = VAE(guide=DiagonalNormal(latent_dim=2, data_shape=SHAPE, hidden=[4]), latent_dim=2, data_shape=SHAPE)
    assert vae.config is None  # a module instance cannot be logged as a [model] table
    x = batch()
    assert vae(x).shape == x.shape and ((vae(x) > 0) & (vae(x) < 1)).all()  # forward: decoder means
