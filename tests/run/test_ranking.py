"""``pyrovae compare`` answers "which is better": trained runs joined with their evaluations, ranked
only against evaluations with the same settings, with the paired difference to the best computed
from the per-point estimates; and ``pyrovae evaluate`` says its cost first and keeps to a time limit."""

from __future__ import annotations

import json
import math
import tempfile

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import pyrovae
from pyrovae.cli import main
from pyrovae.run import budget
from pyrovae.run.compare import component_first, param_clause
from pyrovae.run.config import load
from pyrovae.run.evaluation import evaluate_run
from pyrovae.run.pipeline import train_config
from pyrovae.run.ranking import Joined, rank
from tests.conftest import TINY, tracking_store

pytestmark = pytest.mark.slow  # trains and evaluates several runs

RUNS = {"good-a": [], "good-b": [], "bad": ["train.lr=1e-6"]}  # good-a and good-b: the same settings


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Three runs, each evaluated with K=20 on 60 test points; good-a also with K=50 afterwards."""
    with tracking_store(tmp_path_factory.mktemp("ranking")) as uri:
        ids = {}
        for name, extra in RUNS.items():
            config = load(None, [*TINY, "train.epochs=3", "mlflow.experiment=rank", f"mlflow.run_name={name}", *extra])
            ids[name] = train_config(config, progress=False).run_id
        evaluations = {name: evaluate_run(run_id, iwae_k=20, subset=60, progress=False) for name, run_id in ids.items()}
        evaluations["good-a K=50"] = evaluate_run(ids["good-a"], iwae_k=50, subset=60, progress=False)
        yield uri, ids, evaluations


def nll_per_point(client, evaluation_id: str) -> np.ndarray:
    local = client.download_artifacts(evaluation_id, "evaluation/loglik_test_iwae.npy", tempfile.mkdtemp())
    return -np.load(local)


def rows(table) -> dict[str, dict[str, str]]:
    return {row[1]: dict(zip(table.header, row)) for row in table.rows}


def test_evaluation_runs_are_named_by_their_settings(scored):
    uri, _, evaluations = scored
    names = {MlflowClient(uri).get_run(e.run_id).info.run_name for e in evaluations.values()}
    assert names == {"evaluation test n=60 K=20 seed=0 final", "evaluation test n=60 K=50 seed=0 final"}


def test_each_run_is_joined_with_its_newest_evaluation_and_other_settings_rank_apart(scored):
    uri, ids, evaluations = scored
    table = pyrovae.compare(experiment="rank", tracking_uri=uri)
    assert table.metrics[0] == "test/nll_iwae" and "evaluation" in table.header
    by_name = rows(table)
    assert "K=50" in by_name["good-a"]["evaluation"]  # its newest
    assert float(by_name["good-a"]["test/nll_iwae"]) == pytest.approx(
        evaluations["good-a K=50"].metrics["test/nll_iwae"], abs=1e-4
    )
    groups = {name: row["evaluation"][:3] for name, row in by_name.items()}
    assert groups["good-b"] == groups["bad"] != groups["good-a"]  # K=50 is never ranked with K=20
    assert by_name["good-a"]["vs_best"] == ""  # alone in its group: nothing to pair with
    order = [row[1] for row in table.rows]
    assert order.index("good-b") < order.index("bad")  # within the K=20 group, best first


def test_paired_differences_match_the_per_point_values_and_mark_the_noise(scored):
    uri, ids, evaluations = scored
    client = MlflowClient(uri)
    table = pyrovae.compare(experiment="rank", evaluation=["eval.iwae_k=20"], tracking_uri=uri)
    by_name = rows(table)
    assert {row["evaluation"][:3] for row in by_name.values()} == {"[A]"}  # one group now
    per_point = {name: nll_per_point(client, evaluations[name].run_id) for name in RUNS}
    means = {name: float(values.mean()) for name, values in per_point.items()}
    best = table.rows[0][1]  # good-a and good-b tie: the same settings train the same model
    assert means[best] == min(means.values()) and by_name[best]["vs_best"] == ""
    for name in RUNS:
        assert float(by_name[name]["test/nll_iwae"]) == pytest.approx(evaluations[name].metrics["test/nll_iwae"])
        if name == best:
            continue
        d = per_point[name] - per_point[best]
        se = d.std(ddof=1) / math.sqrt(d.size)
        assert float(by_name[name]["vs_best"]) == pytest.approx(d.mean(), abs=1e-4)
        assert float(by_name[name]["vs_best_se"]) == pytest.approx(se, abs=1e-4)
        assert by_name[name]["within_2se"] == ("~" if abs(d.mean()) <= 2 * se else "")
    assert by_name["bad"]["within_2se"] == "" and float(by_name["bad"]["vs_best"]) > 0  # far worse: no mark
    assert {by_name["good-a"]["within_2se"], by_name["good-b"]["within_2se"]} == {"~", ""}  # the same model

    against_bad = rows(pyrovae.compare(experiment="rank", evaluation=["eval.iwae_k=20"], baseline=ids["bad"][:8],
                                       tracking_uri=uri))  # fmt: skip
    assert against_bad["bad"]["vs_best"] == "" and float(against_bad["good-b"]["vs_best"]) < 0


def test_the_cli_table_explains_itself_and_exports_numbers(scored, capsys):
    uri, ids, _ = scored
    assert main(["compare", "--experiment", "rank", "--evaluation", "eval.iwae_k=20"]) == 0
    out = capsys.readouterr().out
    assert "~: within 2 standard errors" in out and "ranked apart" in out
    assert main(["compare", "--experiment", "rank", "--evaluation", "eval.iwae_k=20", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["run"] for r in records} == set(ids.values())  # full ids
    frame = pyrovae.compare(experiment="rank", evaluation=["eval.iwae_k=20"], tracking_uri=uri).to_dataframe()
    assert frame["test/nll_iwae"].dtype.kind == "f" and frame["vs_best"].isna().sum() == 1


def test_a_run_s_own_metric_ranks_all_runs_together(scored):
    uri, _, _ = scored
    table = pyrovae.compare(["val/loss"], experiment="rank", tracking_uri=uri)
    values = [float(row[table.header.index("val/loss")]) for row in table.rows]
    assert values == sorted(values) and "vs_best" not in table.header  # no grouping by evaluation


def test_runs_without_the_ranking_metric_come_last_in_order_of_their_validation_loss():
    def entry(name, **metrics):
        return Joined(run=name, metrics={k.replace("_", "/", 1): v for k, v in metrics.items()})

    unscored = [entry("c", val_loss=150.0), entry("none"), entry("b", val_loss=140.0)]
    ranked = rank(None, [*unscored, entry("a", test_nll_iwae=130.0, val_loss=145.0)], "test/nll_iwae")
    assert [e.run for e in ranked] == ["a", "b", "c", "none"]


def test_mlflow_filter_syntax_passes_as_it_is_and_component_names_lead():
    clause = "params.`model.guide.name` = 'iaf'"
    assert param_clause(clause) == clause
    assert param_clause("model.guide.name=iaf") == "params.`model.guide.name` = 'iaf'"
    assert param_clause("metrics.`val/loss` < 100") == "metrics.`val/loss` < 100"
    keys = ["model.guide.bins", "model.guide.bound", "train.lr", "model.guide.name", "model.prior.name"]
    assert component_first(keys)[:2] == ["model.guide.name", "model.prior.name"]


def test_evaluate_says_its_cost_first_and_a_time_limit_keeps_the_points_done(scored, monkeypatch, caplog):
    uri, ids, evaluations = scored
    monkeypatch.setattr(budget, "TELL_ABOVE_S", 0.0)  # announce even a pass of a second
    caplog.set_level("INFO", logger="pyrovae")
    limited = evaluate_run(ids["bad"], iwae_k=20, subset=60, batch_size=20, progress=False, time_limit=1e-3)
    assert "IWAE K=20 on 60 datapoints: about" in caplog.text and "the time limit stops it" in caplog.text
    run = MlflowClient(uri).get_run(limited.run_id)
    assert run.data.params["eval.iwae_n"] == "20" and "IWAE on 20 of 60" in run.data.tags["pyrovae.evaluate.truncated"]
    whole = evaluate_run(ids["bad"], iwae_k=20, subset=60, batch_size=20, progress=False)
    full = nll_per_point(MlflowClient(uri), whole.run_id)
    assert limited.metrics["test/nll_iwae"] == pytest.approx(full[:20].mean())  # the same draws, the first batch
    assert limited.metrics["test/nll_elbo"] == pytest.approx(whole.metrics["test/nll_elbo"])  # ELBO: every point
    assert "eval.iwae_n" not in MlflowClient(uri).get_run(whole.run_id).data.params
    assert main(["evaluate", ids["bad"], "--time-limit", "0"]) == 2
