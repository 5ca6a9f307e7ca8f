"""The study scripts of ``experiments/`` build the runs they say they build (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyrovae.run import config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def likelihood_table(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import likelihood_table

    yield likelihood_table
    sys.modules.pop("likelihood_table", None)


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
