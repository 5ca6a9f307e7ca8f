"""``pyrovae compare`` (:mod:`pyrovae.run.compare`) pinned by value on runs logged straight into real
sqlite MLflow stores, as pyrovae logs them (params, metrics, tags, evaluation child runs with their
per-point estimates), without training: the table's columns, order, cells and formats, its defaults,
the filters and their errors, and the fitting of params into the width."""

from __future__ import annotations

import csv
import io
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pyrovae.errors import UserError, first_line
from pyrovae.run import lease
from pyrovae.run.compare import (
    DEFAULT_METRICS,
    Table,
    _fmt,
    compare,
    compare_runs,
    component_first,
    existing_store,
    find_runs,
    newest_experiment,
    nll_order,
    param_clause,
)
from pyrovae.run.ranking import describe
from pyrovae.run.tracking import sqlite_path
from tests.stores import fresh_store


def new_store(folder: Path) -> tuple[str, MlflowClient]:
    uri = fresh_store(folder)
    return uri, MlflowClient(uri)


def experiment(client: MlflowClient, name: str, folder: Path) -> str:
    """A new experiment whose artifacts (the evaluations' per-point files) live under ``folder``."""
    return client.create_experiment(name, artifact_location=str(folder / "artifacts" / name))


def log_run(client, experiment_id, name, start, params=(), metrics=(), tags=(), status="FINISHED") -> str:
    """A run as pyrovae leaves it: its params, final metrics and tags; ``status`` RUNNING leaves it open."""
    run_id = client.create_run(experiment_id, start_time=start, run_name=name).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, start, 1) for k, v in dict(metrics).items()],
        params=[Param(k, str(v)) for k, v in dict(params).items()],
        tags=[RunTag(k, v) for k, v in dict(tags).items()],
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status, end_time=start + 1)
    return run_id


def log_evaluation(client, experiment_id, of: str, start: int, k: int, nll: list[float], folder: Path) -> str:
    """``pyrovae evaluate``'s child run of ``of``: its settings as params, the mean NLLs as metrics and
    the per-point log-likelihoods (``-nll``) as ``evaluation/loglik_test_iwae.npy``."""
    params = {
        "eval.of": of,
        "eval.split": "test",
        "eval.n": len(nll),
        "eval.seed": 0,
        "eval.weights": "final",
        "eval.weights_epoch": 3,
        "eval.iwae_k": k,
    }
    run_id = log_run(
        client,
        experiment_id,
        f"evaluation {describe(params)}",
        start,
        params,
        {"test/nll_iwae": float(np.mean(nll)), "test/nll_elbo": float(np.mean(nll)) + 1.0},
        {"pyrovae.kind": "evaluation", "mlflow.parentRunId": of},
    )
    npy = folder / run_id / "loglik_test_iwae.npy"
    npy.parent.mkdir()
    np.save(npy, -np.asarray(nll, dtype=np.float64))
    client.log_artifact(run_id, str(npy), "evaluation")
    return run_id


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One store read by many tests: (uri, client, run ids by name).

    ``sweeps`` (created first, older runs): the parent ``grid`` (newest of them) of the children
    ``lr=1e-2`` and ``lr=1e-3``, and ``solo``, not in the grid. ``evals`` (newer): the trained runs
    ``a1``, ``a2`` (each evaluated with K=20; a1 first with K=50) and ``b1`` (evaluated with K=50).
    """
    folder = tmp_path_factory.mktemp("lab")
    uri, client = new_store(folder)
    sweeps = experiment(client, "sweeps", folder)
    ids = {}
    common = {"train.epochs": 3, "model.guide.name": "iaf"}
    ids["lr=1e-3"] = 1100, {**common, "train.lr": 0.001, "train.seed": 7}, {"val/loss": 95.25, "test/loss": 96.5}
    ids["lr=1e-2"] = 1200, {**common, "train.lr": 0.01}, {"val/loss": 93.75, "test/loss": 94.0}
    ids["solo"] = 1300, {**common, "train.lr": 0.1, "model.guide.name": "diagonal"}, {"val/loss": 99.0}
    ids["grid"] = log_run(client, sweeps, "grid", 1400, tags={"pyrovae.group": "parent"})
    for name in ("lr=1e-3", "lr=1e-2", "solo"):
        start, params, metrics = ids[name]
        tags = {"mlflow.parentRunId": ids["grid"]} if name.startswith("lr=") else {}
        ids[name] = log_run(client, sweeps, name, start, {**params, "mlflow.run_name": name}, metrics, tags)

    evals = experiment(client, "evals", folder)
    for name, start, val in (("a1", 2000, 91.0), ("a2", 2100, 89.0), ("b1", 2200, 90.0)):
        ids[name] = log_run(client, evals, name, start, {"data.name": "mnist"}, {"val/loss": val})
    ids["a1 K=50"] = log_evaluation(client, evals, ids["a1"], 3000, 50, [91.0, 92.0, 91.0, 92.0], folder)
    ids["a1 K=20"] = log_evaluation(client, evals, ids["a1"], 3100, 20, [90.0, 92.0, 92.0, 94.0], folder)
    ids["a2 K=20"] = log_evaluation(client, evals, ids["a2"], 3200, 20, [89.0, 90.0, 90.0, 91.0], folder)
    ids["b1 K=50"] = log_evaluation(client, evals, ids["b1"], 3300, 50, [91.0, 91.0, 91.0, 91.0], folder)
    return uri, client, ids


def cells(table: Table) -> list[list[str]]:
    """The rows without the run column (random ids), which :func:`ids_of` checks."""
    return [row[1:] for row in table.rows]


def ids_of(table: Table, ids: dict, *names: str) -> None:
    assert table.run_ids == [ids[n] for n in names]
    assert [row[0] for row in table.rows] == [ids[n][:8] for n in names]


K20 = "test n=4 K=20 seed=0 final"
K50 = "test n=4 K=50 seed=0 final"


# --- Table: the formats


def two_runs() -> Table:
    return Table(
        ["run", "name", "x", "val/loss"],
        [["aaaaaaaa", "first", "16", "90.5000"], ["bbbbbbbb", "second run", "", "91.0000"]],
        ["a" * 32, "b" * 32],
        ["val/loss"],
    )


def test_text_aligns_columns_two_spaces_apart_under_a_rule_without_trailing_spaces():
    assert two_runs().render() == (
        "run       name        x   val/loss\n"
        "--------  ----------  --  --------\n"
        "aaaaaaaa  first       16  90.5000\n"
        "bbbbbbbb  second run      91.0000"
    )
    assert two_runs().render("text") == two_runs().render()
    assert two_runs().width() == 34
    assert two_runs().experiment == "" and two_runs().hidden == []  # several experiments, nothing hidden


def test_csv_holds_full_run_ids_and_every_cell_as_it_is():
    table = two_runs()
    table.rows[1][1] = "second, kept "  # a comma (quoted) and a trailing space
    table.header[-1] = "note "
    table.rows[1][-1] = "91.0000 "
    assert table.render("csv") == (
        f'run,name,x,note \n{"a" * 32},first,16,90.5000\n{"b" * 32},"second, kept ",,91.0000 '
    )
    assert list(csv.reader(io.StringIO(table.render("csv")))) == [table.header, *table._full_ids()]
    assert table._full_ids()[1] == ["b" * 32, "second, kept ", "", "91.0000 "]
    table.rows[1][-1] = "XX"
    assert table.render("csv").endswith(f'\n{"b" * 32},"second, kept ",,XX')


def test_json_is_one_object_per_run_with_its_full_id_indented_by_one():
    table = Table(["run", "name"], [["aaaaaaaa", "one"]], ["a" * 32], [])
    assert table.render("json") == '[\n {\n  "run": "' + "a" * 32 + '",\n  "name": "one"\n }\n]'


def test_dataframe_turns_numeric_columns_into_numbers_and_keeps_names_and_text_as_text():
    table = Table(
        ["run", "name", "train.lr", "model.guide.name", "model.guide.hidden", "val/loss"],
        [["aaaaaaaa", "1", "0.001", "iaf", "16", "90.5000"], ["bbbbbbbb", "2", "0.01", "diagonal", "[16, 8]", ""]],
        ["a" * 32, "b" * 32],
        ["val/loss"],
    )
    frame = table.to_dataframe()
    assert list(frame.columns) == table.header
    assert frame["run"].tolist() == ["a" * 32, "b" * 32]
    assert frame["name"].tolist() == ["1", "2"]  # a name that reads as a number stays a name
    assert frame["model.guide.name"].tolist() == ["iaf", "diagonal"]
    assert frame["model.guide.hidden"].tolist() == ["16", "[16, 8]"]  # not every cell a number: text
    assert frame["train.lr"].dtype.kind == "f" and frame["train.lr"].tolist() == [0.001, 0.01]
    loss = frame["val/loss"].tolist()
    assert frame["val/loss"].dtype.kind == "f" and loss[0] == 90.5 and math.isnan(loss[1])  # '' is missing


def test_cells_show_four_decimals_and_missing_values_as_empty():
    assert [_fmt(90.5), _fmt(-1e-5), _fmt(math.nan), _fmt(None), _fmt(3), _fmt("iaf")] == [
        "90.5000",
        "-0.0000",
        "",
        "",
        "3",
        "iaf",
    ]


# --- the pieces: filters, the order of columns


@pytest.mark.parametrize(
    ("condition", "clause"),
    [
        ("model.guide.name=iaf", "params.`model.guide.name` = 'iaf'"),
        (" data.name = mnist ", "params.`data.name` = 'mnist'"),
        ("label=a=b", "params.`label` = 'a=b'"),  # the first '=' splits
        ("params.`model.guide.name` = 'iaf'", "params.`model.guide.name` = 'iaf'"),
        ("  PARAMS.`a` = 'b'", "  PARAMS.`a` = 'b'"),
        ("Metrics.`val/loss` < 100", "Metrics.`val/loss` < 100"),
        ("tags.pyrovae.kind = 'evaluation'", "tags.pyrovae.kind = 'evaluation'"),
        ("attributes.status = 'FINISHED'", "attributes.status = 'FINISHED'"),
        ("datasets.name = 'mnist'", "datasets.name = 'mnist'"),
        ("val_loss < 3", "val_loss < 3"),  # no '=': MLflow's to judge
        ("a<=3", "a<=3"),
        ("a>=3", "a>=3"),
        ("a!=3", "a!=3"),
        ("a==3", "a==3"),
        ("run name = x", "run name = x"),  # a key with a space is no param name
    ],
)
def test_param_equals_value_becomes_an_mlflow_param_clause_and_anything_else_passes(condition, clause):
    assert param_clause(condition) == clause


def test_component_names_lead_and_the_rest_keep_their_order():
    keys = ["train.lr", "model.guide.hidden", "data.name", "model.guide.name", "a", "model.prior.name"]
    assert component_first(keys) == [
        "model.guide.name",
        "model.prior.name",
        "train.lr",
        "model.guide.hidden",
        "data.name",
        "a",
    ]


def test_nll_columns_order_test_split_first_then_iwae_ais_elbo_then_by_name():
    keys = ["val/nll_iwae", "test/nll_elbo", "train/nll_iwae", "test/nll_ais", "val/nll_ais", "test/nll_iwae"]
    assert sorted(keys, key=nll_order) == [
        "test/nll_iwae",
        "test/nll_ais",
        "test/nll_elbo",
        "train/nll_iwae",
        "val/nll_iwae",
        "val/nll_ais",
    ]
    assert nll_order("val/nll_elbo") == (True, 2, "val/nll_elbo")


# --- stores and experiments


def test_existing_store_refuses_a_missing_sqlite_file_without_creating_it(tmp_path):
    db = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(UserError) as err:
        existing_store(f"sqlite:///{db}")
    assert str(err.value) == (
        f"no MLflow store at {db} (nothing trained from this folder yet?); run from the "
        f"folder you trained in, or set MLFLOW_TRACKING_URI"
    )
    assert not db.exists() and not db.parent.exists()


def test_existing_store_refuses_a_server_that_does_not_answer():
    with pytest.raises(UserError, match=r"^the MLflow tracking server at http://127\.0\.0\.1:1 does not answer"):
        existing_store("http://127.0.0.1:1")


def test_existing_store_is_a_client_of_that_store(lab, store):
    uri, _, _ = lab
    client = existing_store(uri)
    assert client.tracking_uri == uri
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "evals", "sweeps"]


def test_the_newest_experiment_is_the_one_with_the_latest_run(lab, tmp_path):
    _, client, _ = lab
    assert newest_experiment(client, client.search_experiments()) == "evals"
    _, empty = new_store(tmp_path)
    assert newest_experiment(empty, empty.search_experiments()) is None


def test_find_runs_defaults_to_the_newest_experiment_and_leaves_out_parents_and_evaluations(lab):
    _, client, ids = lab
    assert [r.info.run_name for r in find_runs(client, None, None, 10)] == ["b1", "a2", "a1"]
    everything = find_runs(client, None, None, 10, all_experiments=True)
    assert [r.info.run_name for r in everything] == ["b1", "a2", "a1", "solo", "lr=1e-2", "lr=1e-3"]
    children = find_runs(client, None, ids["a1"], 10)  # a run's evaluations, newest first
    assert [r.info.run_id for r in children] == [ids["a1 K=20"], ids["a1 K=50"]]


def test_an_unknown_experiment_names_the_store_s_experiments_sorted(lab, tmp_path):
    _, client, _ = lab
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/loss"], experiment="nope")
    assert str(err.value) == "no experiment named 'nope' in this store; experiments: Default, evals, sweeps"
    _, bare = new_store(tmp_path)
    bare.delete_experiment("0")
    with pytest.raises(UserError) as err:
        compare_runs(bare, ["val/loss"], experiment="nope")
    assert str(err.value) == "no experiment named 'nope' in this store; experiments: none"


def test_no_runs_is_one_line_naming_the_parent_when_given(tmp_path):
    _, client = new_store(tmp_path)
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/loss"])
    assert str(err.value) == "no runs to compare; train some with 'pyrovae train' or 'pyrovae sweep'"
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/loss"], parent="f" * 32)
    assert str(err.value) == (
        f"no runs to compare under parent run '{'f' * 32}'; train some with 'pyrovae train' or 'pyrovae sweep'"
    )


# --- compare(): the table of a store


def test_default_columns_are_the_differing_params_and_val_then_test_loss_best_first(lab, store):
    uri, _, ids = lab
    assert DEFAULT_METRICS == ["val/loss", "test/loss"]
    table = compare(experiment="sweeps", tracking_uri=uri)
    # model.guide.name leads; train.epochs is the same for all and mlflow.run_name is the name
    assert table.header == ["run", "name", "model.guide.name", "train.lr", "train.seed", "val/loss", "test/loss"]
    assert cells(table) == [
        ["lr=1e-2", "iaf", "0.01", "", "93.7500", "94.0000"],
        ["lr=1e-3", "iaf", "0.001", "7", "95.2500", "96.5000"],
        ["solo", "diagonal", "0.1", "", "99.0000", ""],
    ]
    ids_of(table, ids, "lr=1e-2", "lr=1e-3", "solo")
    assert table.metrics == ["val/loss", "test/loss"] and table.experiment == "sweeps" and table.hidden == []


def test_compare_reads_the_default_store_when_no_uri_is_given(lab, monkeypatch):
    uri, _, ids = lab
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    table = compare(["val/loss"], experiment="sweeps")
    assert [row[1] for row in table.rows] == ["lr=1e-2", "lr=1e-3", "solo"]


def test_chosen_metrics_are_the_only_metric_columns_and_all_must_exist(lab, store):
    uri, _, _ = lab
    table = compare(["test/loss"], experiment="sweeps", tracking_uri=uri)
    assert table.header[-1:] == ["test/loss"] and table.metrics == ["test/loss"]
    assert [row[-1] for row in table.rows] == ["94.0000", "96.5000", ""]  # without it: last
    with pytest.raises(UserError) as err:
        compare(["val/loss", "x/y"], experiment="sweeps", tracking_uri=uri)
    assert str(err.value) == "no run has metric 'x/y'; metrics logged: test/loss, val/loss"


def test_the_newest_experiment_s_runs_joined_with_their_newest_evaluation_rank_within_groups(lab, store):
    uri, _, ids = lab
    table = compare(tracking_uri=uri)  # the newest experiment; test/loss: no run has it, no column
    assert table.experiment == "evals" and table.metrics == ["test/nll_iwae", "val/loss"]
    assert table.header == [
        "run", "name", "evaluation", "test/nll_iwae", "val/loss", "vs_best", "vs_best_se", "within_2se"
    ]  # fmt: skip
    # b1 (newest) is joined first: its K=50 group is [A]; the K=20 group holds the best, so it leads
    assert cells(table) == [
        ["a2", f"[B] {K20}", "90.0000", "89.0000", "", "", ""],
        ["a1", f"[B] {K20}", "92.0000", "91.0000", "+2.0000", "0.4082", ""],
        ["b1", f"[A] {K50}", "91.0000", "90.0000", "", "", ""],
    ]
    ids_of(table, ids, "a2", "a1", "b1")


def test_evaluation_conditions_choose_the_evaluation_and_close_runs_are_marked(lab, store):
    uri, _, ids = lab
    table = compare(experiment="evals", evaluation=["eval.iwae_k=50"], tracking_uri=uri)
    assert cells(table) == [
        ["b1", f"[A] {K50}", "91.0000", "90.0000", "", "", ""],
        ["a1", f"[A] {K50}", "91.5000", "91.0000", "+0.5000", "0.2887", "~"],  # within 2 se
        ["a2", "", "", "89.0000", "", "", ""],  # no K=50 evaluation: last
    ]


def test_a_baseline_is_the_run_the_others_are_compared_with(lab, store):
    uri, _, ids = lab
    table = compare(experiment="evals", baseline=ids["a1"][:8], tracking_uri=uri)
    assert [row[1] for row in table.rows] == ["a2", "a1", "b1"]
    assert [row[-3:] for row in table.rows] == [["-2.0000", "0.4082", ""], ["", "", ""], ["", "", ""]]


def test_a_run_s_own_metric_ranks_every_run_together_beside_its_evaluation(lab):
    _, client, ids = lab
    table = compare_runs(client, ["val/loss", "test/nll_iwae"], experiment="evals")
    assert table.header == ["run", "name", "evaluation", "val/loss", "test/nll_iwae"]
    assert cells(table) == [
        ["a2", f"[B] {K20}", "89.0000", "90.0000"],
        ["b1", f"[A] {K50}", "90.0000", "91.0000"],
        ["a1", f"[B] {K20}", "91.0000", "92.0000"],
    ]
    grouped = compare_runs(client, ["test/nll_iwae", "val/loss"], experiment="evals")
    assert [row[1] for row in grouped.rows] == ["a2", "a1", "b1"]  # an evaluation's metric: by group


def test_compare_runs_lists_the_newest_experiment_unless_told_otherwise(lab):
    _, client, ids = lab
    table = compare_runs(client, ["val/loss"])
    assert table.experiment == "evals" and [row[1] for row in table.rows] == ["a2", "b1", "a1"]


def test_parent_by_prefix_lists_its_children_across_experiments(lab, store):
    uri, _, ids = lab
    table = compare(parent=ids["grid"][:8], tracking_uri=uri)  # not the newest experiment
    assert table.header == ["run", "name", "train.lr", "train.seed", "val/loss", "test/loss"]
    assert cells(table) == [
        ["lr=1e-2", "0.01", "", "93.7500", "94.0000"],
        ["lr=1e-3", "0.001", "7", "95.2500", "96.5000"],
    ]
    ids_of(table, ids, "lr=1e-2", "lr=1e-3")


def test_a_run_as_parent_lists_its_evaluations_by_their_nll(lab, store):
    uri, _, ids = lab
    table = compare(parent=ids["a1"], tracking_uri=uri)
    assert table.header == ["run", "name", "eval.iwae_k", "test/nll_iwae"]
    assert cells(table) == [[f"evaluation {K50}", "50", "91.5000"], [f"evaluation {K20}", "20", "92.0000"]]
    ids_of(table, ids, "a1 K=50", "a1 K=20")


def test_where_params_and_max_runs_pass_through(lab, store):
    uri, _, ids = lab
    iaf = compare(["val/loss"], experiment="sweeps", where=["model.guide.name=iaf"], tracking_uri=uri)
    assert [row[1] for row in iaf.rows] == ["lr=1e-2", "lr=1e-3"]
    both = compare(["val/loss"], parent=ids["grid"], where=["train.lr=0.001"], tracking_uri=uri)
    assert [row[1] for row in both.rows] == ["lr=1e-3"]  # the parent AND the condition
    chosen = compare(experiment="sweeps", params=["train.epochs"], tracking_uri=uri)
    assert chosen.header == ["run", "name", "train.epochs", "val/loss", "test/loss"]
    assert [row[2] for row in chosen.rows] == ["3", "3", "3"]
    # the newest two that are not parents, though the parent is the newest run (the first page of two)
    newest = compare(experiment="sweeps", max_runs=2, tracking_uri=uri)
    assert [row[1] for row in newest.rows] == ["lr=1e-2", "solo"]


def test_all_experiments_lists_every_trained_run_under_no_experiment_name(lab, store):
    uri, _, _ = lab
    table = compare(["val/loss"], all_experiments=True, tracking_uri=uri)
    assert [row[1] for row in table.rows] == ["a2", "b1", "a1", "lr=1e-2", "lr=1e-3", "solo"]
    assert table.experiment == ""
    assert table.header == [
        "run", "name", "model.guide.name", "data.name", "train.epochs", "train.lr", "evaluation", "val/loss"
    ]  # fmt: skip
    assert table.hidden == ["train.seed"]  # 120 characters wide at most
    assert cells(table)[3] == ["lr=1e-2", "iaf", "", "3", "0.01", "", "93.7500"]


def test_a_bad_filter_is_one_line_with_mlflow_s_reason(lab):
    _, client, _ = lab
    where = "metrics.val/loss <<< 3"
    with pytest.raises(Exception) as mlflow_err:
        client.search_runs(["1"], filter_string=where)
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/loss"], where=[where])
    assert str(err.value) == (
        f"cannot filter runs by ['{where}']: {first_line(mlflow_err.value)}; write key=value for a param, "
        f'or an MLflow filter such as "metrics.`val/loss` < 100"'
    )


# --- metrics that are missing


def test_default_columns_need_one_metric_and_chosen_ones_every_metric(lab):
    _, client, _ = lab
    table = compare_runs(client, ["val/loss", "x/y"], experiment="sweeps", optional=True)
    assert table.metrics == ["val/loss"] and table.header[-1] == "val/loss"
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/loss", "x/y"], experiment="sweeps")  # not optional by default
    assert str(err.value) == "no run has metric 'x/y'; metrics logged: test/loss, val/loss"
    with pytest.raises(UserError) as err:
        compare_runs(client, ["x/a", "x/b"], experiment="sweeps", optional=True)
    assert str(err.value) == "no run has metric 'x/a'; metrics logged: test/loss, val/loss"
    with pytest.raises(UserError) as err:
        compare_runs(client, ["x/a", "x/b"], experiment="sweeps")
    assert str(err.value) == "no run has metric 'x/a'; metrics logged: test/loss, val/loss"


def test_a_trained_run_s_own_nll_is_no_default_column(tmp_path):
    _, client = new_store(tmp_path)
    exp = experiment(client, "own", tmp_path)
    log_run(client, exp, "r", 1, metrics={"val/loss": 5.0, "test/nll_elbo": 4.0})
    assert compare_runs(client, ["val/loss", "test/loss"], optional=True).header == ["run", "name", "val/loss"]


def test_the_missing_metric_error_counts_system_metrics_instead_of_listing_them(tmp_path):
    _, client = new_store(tmp_path)
    exp = experiment(client, "sys", tmp_path)
    log_run(client, exp, "r", 1, metrics={"val/loss": 5.0, "system/cpu": 1.0, "system/memory": 2.0})
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/los"])
    assert str(err.value) == "no run has metric 'val/los'; metrics logged: val/loss (and 2 system/ metrics)"
    log_run(client, experiment(client, "bare", tmp_path), "r", 2)
    with pytest.raises(UserError) as err:
        compare_runs(client, ["val/loss"], experiment="bare")
    assert str(err.value) == "no run has metric 'val/loss'; metrics logged: none"


def test_a_run_without_a_name_shows_an_empty_name(tmp_path):
    """MLflow names every run it creates; a run whose name is missing in the store (its name
    column and ``mlflow.runName`` tag removed, as no writer is bound to set them) reads as no name."""
    uri, client = new_store(tmp_path)
    exp = experiment(client, "nameless", tmp_path)
    run_id = log_run(client, exp, "gone", 1, metrics={"val/loss": 1.0})
    with sqlite3.connect(sqlite_path(uri)) as connection:
        connection.execute("UPDATE runs SET name = NULL WHERE run_uuid = ?", (run_id,))
        connection.execute("DELETE FROM tags WHERE key = 'mlflow.runName' AND run_uuid = ?", (run_id,))
    assert client.get_run(run_id).info.run_name is None
    assert cells(compare_runs(client, ["val/loss"])) == [["", "1.0000"]]


def test_at_most_1000_runs_are_listed_by_default(tmp_path, store):
    """1001 runs: the first logged through MLflow, the others copies of its rows in the store
    (logging a thousand runs one by one takes a minute here)."""
    uri, client = new_store(tmp_path / "many")
    first = log_run(client, experiment(client, "many", tmp_path), "r", 1, metrics={"val/loss": 1.0})
    copies = [(f"{i:032x}", i + 2, first) for i in range(1000)]
    with sqlite3.connect(sqlite_path(uri)) as connection:
        columns = "source_type, source_name, entry_point_name, user_id, status"
        connection.executemany(
            f"INSERT INTO runs SELECT ?, name, {columns}, ?, end_time, source_version, lifecycle_stage, "
            f"artifact_uri, experiment_id, deleted_time FROM runs WHERE run_uuid = ?",
            copies,
        )
        connection.executemany(
            "INSERT INTO latest_metrics SELECT key, value, timestamp, step, is_nan, ? FROM latest_metrics "
            "WHERE run_uuid = ?",
            [(run_id, run) for run_id, _, run in copies],
        )
    assert len(compare(tracking_uri=uri).rows) == 1000
    assert len(compare_runs(client, ["val/loss"]).rows) == 1000
    assert len(compare(max_runs=1001, tracking_uri=uri).rows) == 1001


# --- status, pruning, stale runs


def test_status_and_pruned_columns_appear_only_when_a_run_needs_them(tmp_path):
    _, client = new_store(tmp_path)
    exp = experiment(client, "search", tmp_path)
    log_run(client, exp, "kept", 1, metrics={"val/loss": 2.0})
    log_run(client, exp, "stopped", 2, metrics={"val/loss": 3.0}, tags={"pyrovae.pruned": "epoch 2"}, status="KILLED")
    table = compare_runs(client, ["val/loss"])
    assert table.header == ["run", "name", "status", "pruned", "val/loss"]
    assert cells(table) == [["kept", "FINISHED", "", "2.0000"], ["stopped", "KILLED", "epoch 2", "3.0000"]]


def test_stale_runs_are_ended_killed_and_shown_so_in_each_kind_of_listing(tmp_path):
    """A RUNNING run whose lease ran out elsewhere is ended KILLED, and the table lists the runs again
    with the same filters: the parent and condition, the chosen experiment, or every experiment."""
    _, client = new_store(tmp_path)
    expired = {lease.LEASE_TAG: lease.Holder("elsewhere", 1, 0.0, 1.0).text()}
    first = experiment(client, "first", tmp_path)
    parent = log_run(client, first, "grid", 10, tags={"pyrovae.group": "parent"})
    child = {"mlflow.parentRunId": parent}
    log_run(client, first, "ch1", 11, {"k": "v"}, {"val/loss": 1.0}, {**child, **expired}, status="RUNNING")
    log_run(client, first, "ch2", 12, {"k": "w"}, {"val/loss": 2.0}, child)
    log_run(client, first, "o1", 13, {"k": "v"}, {"val/loss": 3.0})
    log_run(client, first, "o2", 14, {}, {"val/loss": 4.0}, expired, status="RUNNING")
    second = experiment(client, "second", tmp_path)
    log_run(client, second, "n1", 20, {}, {"val/loss": 5.0}, expired, status="RUNNING")
    log_run(client, second, "n2", 21, {}, {"val/loss": 6.0})

    table = compare_runs(client, ["val/loss"], parent=parent, where=["k=v"])
    assert cells(table) == [["ch1", "KILLED", "1.0000"]]
    table = compare_runs(client, ["val/loss"], experiment="first")
    assert [row[1:3] for row in table.rows] == [
        ["ch1", "KILLED"],
        ["ch2", "FINISHED"],
        ["o1", "FINISHED"],
        ["o2", "KILLED"],
    ]
    table = compare_runs(client, ["val/loss"], all_experiments=True)
    assert [row[1:3] for row in table.rows] == [
        ["ch1", "KILLED"], ["ch2", "FINISHED"], ["o1", "FINISHED"], ["o2", "KILLED"],
        ["n1", "KILLED"], ["n2", "FINISHED"],
    ]  # fmt: skip
    assert client.get_run(table.run_ids[4]).data.tags[lease.STALE_TAG].startswith("left RUNNING: its process 1")


# --- fitting the params into the width


@pytest.fixture
def wide(tmp_path):
    """Two runs whose table, with its three differing params, is exactly 121 characters wide."""
    _, client = new_store(tmp_path)
    exp = experiment(client, "wide", tmp_path)
    for i, loss in ((1, 1.0), (2, 2.0)):
        params = {"model.guide.name": f"g{i}", "train.lr": f"{i}" * 40, "train.zzz": f"{i}" * WIDE_Z}
        log_run(client, exp, f"r{i}", i, params, {"val/loss": loss})
    return client


WIDE_Z = 35


def test_the_last_differing_params_give_way_to_fit_the_width(wide):
    full = compare_runs(wide, ["val/loss"], width=1000)
    assert full.header == ["run", "name", "model.guide.name", "train.lr", "train.zzz", "val/loss"]
    assert full.width() == 121 and full.hidden == []
    assert compare_runs(wide, ["val/loss"], width=121).hidden == []  # fits exactly
    fitted = compare_runs(wide, ["val/loss"])  # 120 by default
    assert fitted.header == ["run", "name", "model.guide.name", "train.lr", "val/loss"]
    assert fitted.hidden == ["train.zzz"] and fitted.width() == 121 - 2 - WIDE_Z
    assert compare_runs(wide, ["val/loss"], width=60).hidden == ["train.lr", "train.zzz"]
    narrow = compare_runs(wide, ["val/loss"], width=5)  # no param left to drop: the rest stays
    assert narrow.header == ["run", "name", "val/loss"]
    assert narrow.hidden == ["model.guide.name", "train.lr", "train.zzz"]
    assert cells(narrow) == [["r1", "1.0000"], ["r2", "2.0000"]]


def test_params_chosen_by_name_are_all_shown_in_their_order_however_wide(wide):
    table = compare_runs(wide, ["val/loss"], params=["train.zzz", "model.guide.name"], width=5)
    assert table.header == ["run", "name", "train.zzz", "model.guide.name", "val/loss"] and table.hidden == []
    assert cells(table) == [["r1", "1" * WIDE_Z, "g1", "1.0000"], ["r2", "2" * WIDE_Z, "g2", "2.0000"]]
