"""The study scripts of ``experiments/`` build the runs they say they build (no training here, but
for one study stopped by SIGTERM) and tabulate what they exported."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pyrovae.run import config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


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


@pytest.fixture
def validation_loss_figure(monkeypatch):
    yield from experiment_module(monkeypatch, "validation_loss_figure")


def test_the_likelihood_table_trains_the_baseline_first_and_last_and_each_zoo_variant_once(likelihood_table):
    runs = likelihood_table.runs_to_train(likelihood_table.BUDGETS["full"], ["baseline", *likelihood_table.ZOO])
    names = [name for name, _, _ in runs]
    assert names == ["baseline-seed0", *likelihood_table.ZOO, "baseline-seed1"]
    assert [seed for _, _, seed in runs] == [0] * (1 + len(likelihood_table.ZOO)) + [1]


def test_each_likelihood_table_variant_differs_from_the_baseline_in_one_component_or_its_model(likelihood_table):
    base = config.load(EXPERIMENTS / "mnist.toml", [])["model"]
    for name, sets, _ in likelihood_table.runs_to_train(likelihood_table.BUDGETS["smoke"], likelihood_table.ZOO):
        model = config.load(EXPERIMENTS / "mnist.toml", sets)["model"]
        changed = [part for part in ("prior", "guide", "likelihood") if model[part] != base[part]]
        if model["name"] != base["name"]:  # another model built of the baseline's components (the HVAE)
            assert model["name"] == name and changed == [] and model["latent_dim"] == base["latent_dim"], name
        else:
            assert len(changed) == 1 and model[changed[0]]["name"] == name, (name, changed)


def test_each_criterion_picks_the_scored_epoch_where_its_own_curve_is_lowest(validation_loss_study):
    # reconstruction keeps falling (overfitting hides in the KL), the ELBO and IWAE turn up at
    # epoch 20, MSE at 30; the test NLL is lowest at 20. Only scored epochs (test NLL known) count.
    epochs = [10, 20, 30, 40]
    curves = {
        "val/recon": [80, 75, 72, 70],
        "val/loss": [100, 95, 97, 99],
        "val/nll_iwae": [98, 93, 94, 96],
        "val/mse": [0.05, 0.04, 0.03, 0.035],
        "test_curve/nll_iwae": [99, 94, 96, 98],
    }
    histories = {key: dict(zip(epochs, values)) for key, values in curves.items()}
    histories["val/recon"][15] = 1.0  # an unscored epoch: never picked
    picks = validation_loss_study.picks(histories)
    assert {name: pick["epoch"] for name, pick in picks.items()} == {
        "recon": 40,
        "-ELBO": 20,
        "IWAE": 20,
        "MSE": 30,
        "last epoch": 40,
        "oracle (test)": 20,
    }
    assert picks["recon"]["test_nll"] == 98 and picks["MSE"]["test_nll"] == 96


def test_a_cut_of_the_full_grid_trains_only_its_cell_with_seeds_outside_warmups(validation_loss_study):
    study = validation_loss_study
    full = study.grid(study.BUDGETS["full"])
    assert len(full) == 2 * 2 * 3 * 2 and len(set(full)) == len(full)
    cut = study.grid(study.BUDGETS["full"] | {"datasets": ["fashion_mnist"], "sizes": [1000]})
    assert cut == [("fashion_mnist", 1000, seed, warmup) for seed in (0, 1, 2) for warmup in (0, 50)]
    assert set(cut) < set(full)


def test_a_cell_with_one_seed_has_no_standard_error_and_its_export_stays_json(validation_loss_study):
    def run(seed, recon_nll, oracle_nll):
        return {
            "dataset": "fashion_mnist",
            "train_size": 1000,
            "batch_size": 32,
            "warmup_epochs": 0.0,
            "seed": seed,
            "picks": {
                name: {"epoch": 10 * (seed + 1), "test_nll": oracle_nll}
                for name in [*validation_loss_study.CRITERIA, "last epoch", "oracle (test)"]
            }
            | {"recon": {"epoch": 40, "test_nll": recon_nll}},
        }

    one = {row["criterion"]: row for row in validation_loss_study.tabulate([run(0, 245.0, 244.0)])}
    assert one["recon"]["cost"] == [1.0, None] and one["recon"]["seeds"] == 1
    json.dumps(one, allow_nan=False)  # NaN would make the export invalid JSON
    two = {
        row["criterion"]: row for row in validation_loss_study.tabulate([run(0, 245.0, 244.0), run(1, 247.0, 244.0)])
    }
    assert two["recon"]["cost"] == [2.0, 1.0] and two["recon"]["test_nll"] == [246.0, 1.0]


def test_the_study_figure_shows_the_run_where_picking_by_reconstruction_costs_most(validation_loss_figure):
    def run(name, recon_nll, oracle_nll):
        return {"name": name, "picks": {"recon": {"test_nll": recon_nll}, "oracle (test)": {"test_nll": oracle_nll}}}

    record = {"runs": [run("cheap", 99.3, 99.0), run("warm-up trap", 113.0, 98.6), run("best model", 98.9, 98.5)]}
    assert validation_loss_figure.example_run(record)["name"] == "warm-up trap"


def test_the_baseline_spread_is_the_mean_and_standard_error_over_its_seeds(likelihood_table):
    table = [
        {"variant": "baseline", "nll_iwae": 91.0, "nll_elbo": 97.0},
        {"variant": "vamp_prior", "nll_iwae": 88.0, "nll_elbo": 95.0},
        {"variant": "baseline", "nll_iwae": 92.0, "nll_elbo": 98.0},
    ]
    spread = likelihood_table.baseline_spread(table)
    assert spread["seeds"] == 2
    assert spread["nll_iwae"] == pytest.approx((91.5, 0.5)) and spread["nll_elbo"] == pytest.approx((97.5, 0.5))


def test_one_baseline_seed_gives_no_standard_error_rather_than_nan_in_the_export(likelihood_table):
    spread = likelihood_table.baseline_spread([{"variant": "baseline", "nll_iwae": 91.0, "nll_elbo": 97.0}])
    assert spread == {"nll_iwae": [91.0, None], "nll_elbo": [97.0, None], "seeds": 1}


def _row(variant, run_id, nll, **extra):
    return {
        "variant": variant,
        "seed": 0,
        "run_id": run_id,
        "evaluation_run_id": f"e{run_id}",
        "nll_iwae": nll,
        "nll_iwae_se": 0.2,
        **extra,
    }


def test_a_table_continued_in_a_new_store_keeps_the_earlier_rows_and_replaces_the_retrained_one(likelihood_table):
    from carried_rows import carry_over

    earlier = {
        "parent_run_id": "P1",
        "store": "old",
        "runs": [{"run_id": "A"}, {"run_id": "V"}],
        "table": [
            _row("baseline", "A", 91.0),
            _row("vamp_prior", "V", 87.0, nll_iwae_vs_baseline=-4.0, nll_iwae_vs_baseline_se=0.04),
        ],
    }
    record = {
        "parent_run_id": "P2",
        "runs": [{"run_id": "B"}, {"run_id": "L"}],
        "table": [_row("baseline", "B", 91.5), _row("low_rank_normal", "L", 92.0)],
    }
    carry_over(record, earlier)
    assert [row["run_id"] for row in record["table"]] == ["B", "V", "L"]  # B takes A's place
    assert record["table"][1]["paired_with"] == "eA"  # V's difference is from A, not from B
    assert record["table"][1]["parent_run_id"] == "P1"
    assert record["reproduced"] == [
        {
            "variant": "baseline",
            "seed": 0,
            "earlier_run_id": "A",
            "earlier_evaluation_run_id": "eA",
            "earlier_nll_iwae": 91.0,
            "earlier_nll_iwae_se": 0.2,
            "run_id": "B",
            "evaluation_run_id": "eB",
            "nll_iwae": 91.5,
            "nll_iwae_se": 0.2,
            "exact": False,
        }
    ]
    assert [p["parent_run_id"] for p in record["earlier_parents"]] == ["P1"]

    again = {"parent_run_id": "P2", "runs": record["runs"], "table": [_row("baseline", "B", 91.5)]}
    carry_over(again, json.loads(json.dumps(record)))  # this parent's own export read back: nothing doubled
    assert [row["run_id"] for row in again["table"]] == ["V", "B"]
    assert [p["parent_run_id"] for p in again["earlier_parents"]] == ["P1"] and len(again["reproduced"]) == 1


def test_rows_are_paired_image_by_image_with_the_first_baseline_that_has_per_image_numbers(likelihood_table):
    arrays = {"eB": np.array([90.0, 92.0, 91.0]), "eL": np.array([91.0, 92.5, 91.5])}
    vamp = _row("vamp_prior", "V", 87.0, nll_iwae_vs_baseline=-4.0, nll_iwae_vs_baseline_se=0.04, paired_with="eA")
    table = [_row("baseline", "A", 91.0), vamp, _row("baseline", "B", 91.0), _row("low_rank_normal", "L", 91.67)]
    likelihood_table.paired_with_baseline(table, arrays)
    low_rank = table[3]
    assert low_rank["nll_iwae_vs_baseline"] == pytest.approx(2 / 3) and low_rank["paired_with"] == "eB"
    assert low_rank["nll_iwae_vs_baseline_se"] == pytest.approx(np.std([1.0, 0.5, 0.5], ddof=1) / np.sqrt(3))
    assert table[2]["nll_iwae_vs_baseline"] == 0
    assert (vamp["nll_iwae_vs_baseline"], vamp["paired_with"]) == (-4.0, "eA")  # as exported


@pytest.mark.slow  # a fresh interpreter
def test_a_study_stopped_by_sigterm_ends_every_run_it_holds_killed(store, tiny_overrides):
    sets = [arg for value in (*tiny_overrides, "train.epochs=100000") for arg in ("--set", value)]
    study = subprocess.Popen(
        [sys.executable, str(EXPERIMENTS / "zoo_study.py"), "--variants", "standard_normal", *sets],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def all_runs():
        return mlflow.search_runs(search_all_experiments=True, output_format="list")

    try:
        deadline = time.monotonic() + 120
        while not [run for run in all_runs() if "val/loss" in run.data.metrics]:
            assert study.poll() is None and time.monotonic() < deadline, "the study never started training"
            time.sleep(0.5)
        study.send_signal(signal.SIGTERM)  # as a scheduler or `timeout` would
        err = study.communicate(timeout=60)[1]
    finally:
        study.kill()
    assert study.returncode == 143 and err.strip().splitlines()[-1].startswith("zoo_study.py: stopped by SIGTERM")
    runs = all_runs()
    assert sorted(run.info.run_name for run in runs) == ["standard_normal", "zoo-study"]
    assert {run.info.status for run in runs} == {"KILLED"}
