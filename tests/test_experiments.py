"""The study scripts of ``experiments/`` build the runs they say they build (no training here)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from pyrovae.run import config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def experiment_module(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.fixture
def likelihood_table(monkeypatch):
    yield from experiment_module(monkeypatch, "likelihood_table")


@pytest.fixture
def validation_loss_study(monkeypatch):
    yield from experiment_module(monkeypatch, "validation_loss_study")


def test_the_likelihood_table_trains_the_baseline_first_and_last_and_each_zoo_variant_once(likelihood_table):
    runs = likelihood_table.runs_to_train(likelihood_table.BUDGETS["full"], ["baseline", *likelihood_table.ZOO])
    names = [name for name, _, _ in runs]
    assert names == ["baseline-seed0", *likelihood_table.ZOO, "baseline-seed1"]
    assert [seed for _, _, seed in runs] == [0] * (1 + len(likelihood_table.ZOO)) + [1]


def test_each_likelihood_table_variant_differs_from_the_baseline_in_one_component(likelihood_table):
    base = config.load(EXPERIMENTS / "mnist.toml", [])["model"]
    for name, sets, _ in likelihood_table.runs_to_train(likelihood_table.BUDGETS["smoke"], likelihood_table.ZOO):
        model = config.load(EXPERIMENTS / "mnist.toml", sets)["model"]
        changed = [part for part in ("prior", "guide", "likelihood") if model[part] != base[part]]
        assert len(changed) == 1 and model[changed[0]]["name"] == name, (name, changed)


def test_each_criterion_picks_the_scored_epoch_where_its_own_curve_is_lowest(validation_loss_study):
    # reconstruction keeps falling (overfitting hides in the KL), the ELBO and IWAE turn up at
    # epoch 20, MSE at 30; the test NLL is lowest at 20. Only scored epochs (test NLL known) count.
    epochs = [10, 20, 30, 40]
    curves = {"val/recon": [80, 75, 72, 70], "val/loss": [100, 95, 97, 99], "val/nll_iwae": [98, 93, 94, 96],
              "val/mse": [0.05, 0.04, 0.03, 0.035], "test_curve/nll_iwae": [99, 94, 96, 98]}
    histories = {key: dict(zip(epochs, values)) for key, values in curves.items()}
    histories["val/recon"][15] = 1.0  # an unscored epoch: never picked
    picks = validation_loss_study.picks(histories)
    assert {name: pick["epoch"] for name, pick in picks.items()} == {
        "recon": 40, "-ELBO": 20, "IWAE": 20, "MSE": 30, "last epoch": 40, "oracle (test)": 20}
    assert picks["recon"]["test_nll"] == 98 and picks["MSE"]["test_nll"] == 96


def test_the_baseline_spread_is_the_mean_and_standard_error_over_its_seeds(likelihood_table):
    table = [{"variant": "baseline", "nll_iwae": 91.0, "nll_elbo": 97.0},
             {"variant": "vamp_prior", "nll_iwae": 88.0, "nll_elbo": 95.0},
             {"variant": "baseline", "nll_iwae": 92.0, "nll_elbo": 98.0}]
    spread = likelihood_table.baseline_spread(table)
    assert spread["seeds"] == 2
    assert spread["nll_iwae"] == pytest.approx((91.5, 0.5)) and spread["nll_elbo"] == pytest.approx((97.5, 0.5))
