"""``pyrovae sweep`` trains a grid as children of one parent; ``pyrovae compare`` tabulates runs best first."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re

import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.cli.sweep import split_values, variants
from pyrovae.errors import UserError
from pyrovae.run import config as config_mod
from pyrovae.run.tracking import unseeded_run_name
from tests.conftest import TINY, tracking_store

# two runs; the second axis is one list value whose comma must not split it
GRID = ["--grid", "train.lr=1e-4,1e-2", "--grid", "model.guide.hidden=[16,8]"]
BASE = [item for item in TINY if not item.startswith("model.guide.hidden")]


def test_grid_values_split_outside_brackets_and_quotes():
    assert split_values("1e-3,3e-3") == ["1e-3", "3e-3"]
    assert split_values("[256,256],[512]") == ["[256,256]", "[512]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values("[[1,2],[3]],4") == ["[[1,2],[3]]", "4"]
    grid = variants(["train.lr=1,2", "model.latent_dim=3,4,5"])
    assert len(grid) == 6 and grid["train.lr=2 model.latent_dim=5"] == ["train.lr=2", "model.latent_dim=5"]
    with pytest.raises(UserError, match="lists a value twice"):
        variants(["train.lr=1,1"])
    with pytest.raises(UserError, match="names a key twice"):
        variants(["train.lr=1", "train.lr=2"])
    with pytest.raises(UserError, match="needs section.key=v1,v2"):
        variants(["train.lr"])


def test_run_names_differ_although_training_seeds_python_random():
    random.seed(0)
    names = {unseeded_run_name() for _ in range(5)}
    after_names = random.random()
    random.seed(0)
    assert len(names) > 1 and random.random() == after_names  # the seeded stream is untouched


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-run sweep in a fresh store: (store uri, what the sweep printed)."""
    args = ["sweep", "--no-progress", "--name", "lr-sweep", *GRID]
    for item in BASE:
        args += ["--set", item]
    with tracking_store(tmp_path_factory.mktemp("sweep")) as uri:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(args) == 0
        yield uri, printed.getvalue()


def runs_of(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("pyrovae").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("pyrovae.group") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_sweep_trains_every_combination_as_children_with_the_full_param_set(sweep):
    uri, _ = sweep
    parent, children = runs_of(uri)
    assert parent.info.run_name == "lr-sweep" and parent.info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.info.run_name for c in children} == {
        "train.lr=1e-4 model.guide.hidden=[16,8]",
        "train.lr=1e-2 model.guide.hidden=[16,8]",
    }
    full = set(config_mod.flatten(config_mod.load(None, [*BASE, "model.guide.hidden=[16,8]"])))
    assert all(set(c.data.params) == full for c in children)
    assert {(c.data.params["train.lr"], c.data.params["model.guide.hidden"]) for c in children} == {
        ("0.0001", "[16, 8]"),
        ("0.01", "[16, 8]"),
    }


def table_of(text: str) -> tuple[str, list[str], list[list[str]]]:
    """``compare``'s output -> (title line, header cells, rows of cells)."""
    lines = text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if "best first by" in line)
    title, header, _rule, *rows = [line for line in lines[start:] if not line.startswith(("store: ", "pyrovae"))]
    return title, header.split(), [row.split() for row in rows if "more params differ" not in row]


def test_sweep_prints_its_children_best_first(sweep):
    uri, printed = sweep
    parent, children = runs_of(uri)
    assert printed.startswith("sweep: 2 runs: ") and f"parent run {parent.info.run_id}" in printed
    title, header, rows = table_of(printed)
    assert title == "2 runs in experiment 'pyrovae', best first by val/loss (lower is better)"
    assert f"store: {uri}" in printed
    # only the param that differs gets a column; the run name holds spaces, so read from the right
    assert header == ["run", "name", "train.lr", "val/loss", "test/loss"]
    best, worst = sorted(children, key=lambda c: c.data.metrics["val/loss"])
    assert [row[0] for row in rows] == [best.info.run_id[:8], worst.info.run_id[:8]]
    assert [float(row[-2]) for row in rows] == pytest.approx(
        [best.data.metrics["val/loss"], worst.data.metrics["val/loss"]], abs=1e-4
    )
    assert [float(row[-1]) for row in rows] == pytest.approx(
        [best.data.metrics["test/loss"], worst.data.metrics["test/loss"]], abs=1e-4
    )
    assert rows[0][-3] == best.data.params["train.lr"]


def test_compare_sorts_by_the_first_chosen_metric(sweep, capsys):
    uri, _ = sweep
    _, children = runs_of(uri)
    assert main(["compare", "--experiment", "pyrovae", "--metric", "val/kl", "--metric", "val/loss"]) == 0
    title, header, rows = table_of(capsys.readouterr().out)
    assert title.startswith("2 runs in ") and "best first by val/kl" in title  # the parent is left out
    assert header[-2:] == ["val/kl", "val/loss"]
    kls = [float(row[-2]) for row in rows]
    assert kls == sorted(kls) == pytest.approx(sorted(c.data.metrics["val/kl"] for c in children), abs=1e-4)


def test_compare_parent_takes_a_run_id_prefix(sweep, capsys):
    uri, _ = sweep
    parent, children = runs_of(uri)
    assert main(["compare", "--parent", parent.info.run_id[:8]]) == 0
    _, _, rows = table_of(capsys.readouterr().out)
    assert sorted(row[0] for row in rows) == sorted(c.info.run_id[:8] for c in children)


def test_compare_unknown_metric_experiment_or_store_is_one_line(sweep, capsys, tmp_path, monkeypatch):
    assert main(["compare", "--metric", "val/los"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error: no run has metric 'val/los'; metrics logged:") and "val/loss" in err
    assert "\n" not in err
    assert main(["compare", "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no experiment named 'nope' in this store; experiments: Default, " in err and "pyrovae" in err
    assert main(["compare", "--max-runs", "0"]) == 2
    assert "--max-runs must be at least 1" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a folder nothing was trained in: no store is created there
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["compare"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "mlruns").exists()


def test_compare_shows_status_when_a_run_did_not_finish_and_puts_runs_without_the_metric_last(sweep, capsys):
    client = MlflowClient(sweep[0])
    experiment = client.create_experiment("manual")
    for start, (name, status, loss, width) in enumerate(
        [("cut-short", "KILLED", None, "8"), ("done", "FINISHED", 90.5, "16")]
    ):
        run = client.create_run(experiment, run_name=name, start_time=1000 * (start + 1))
        client.log_param(run.info.run_id, "model.guide.hidden", width)
        client.log_param(run.info.run_id, "train.epochs", "3")
        if loss is not None:
            client.log_metric(run.info.run_id, "val/loss", loss, step=3)
        client.set_terminated(run.info.run_id, status)
    client.create_run(experiment, run_name="group", start_time=5000, tags={"pyrovae.group": "parent"})  # newest
    assert main(["compare", "--experiment", "manual"]) == 0  # test/loss: no run has it, so no column
    _, header, rows = table_of(capsys.readouterr().out)
    assert header == ["run", "name", "status", "model.guide.hidden", "val/loss"]
    assert [row[1:] for row in rows] == [["done", "FINISHED", "16", "90.5000"], ["cut-short", "KILLED", "8"]]
    assert main(["compare", "--experiment", "manual", "--max-runs", "1"]) == 0  # N runs besides parents
    title, _, rows = table_of(capsys.readouterr().out)
    assert title.startswith("1 run in ") and [row[1] for row in rows] == ["done"]
    assert main(["compare", "--experiment", "manual", "--metric", "val/los"]) == 2
    assert capsys.readouterr().err.strip().endswith("no run has metric 'val/los'; metrics logged: val/loss")


def test_compare_defaults_to_the_newest_experiment_fits_120_columns_and_filters_and_exports(sweep, capsys):
    client = MlflowClient(sweep[0])
    other = client.create_experiment("wide")
    for i in range(2):  # newer than the sweep, with many long params that differ
        run = client.create_run(other, run_name=f"wide-{i}")
        for k in range(12):
            client.log_param(run.info.run_id, f"model.likelihood.a_rather_long_argument_name_{k}", str(i * 1000 + k))
        client.log_param(run.info.run_id, "data.name", ["mnist", "synthetic"][i])
        client.log_metric(run.info.run_id, "val/loss", 100.0 + i, step=1)
        client.set_terminated(run.info.run_id, "FINISHED")
    assert main(["compare"]) == 0
    out = capsys.readouterr().out
    title, _, rows = table_of(re.split(r"\n\d+ more params", out)[0])
    assert title.startswith("2 runs in experiment 'wide'") and {row[1] for row in rows} == {"wide-0", "wide-1"}
    assert max(len(line) for line in out.splitlines() if not line.startswith("store: ")) <= 120
    assert "more params differ (first: model.likelihood.a_rather_long_argument_name_" in out and "--param KEY" in out

    assert main(["compare", "--experiment", "wide", "--param", "data.name", "--where", "data.name=synthetic"]) == 0
    _, header, rows = table_of(capsys.readouterr().out)
    assert header == ["run", "name", "data.name", "val/loss"] and [row[1:] for row in rows] == [
        ["wide-1", "synthetic", "101.0000"]
    ]
    assert main(["compare", "--all-experiments", "--where", "metrics.`val/loss` < 100.5"]) == 0
    names = [row[1] for row in table_of(capsys.readouterr().out)[2]]
    assert "wide-0" in names and "wide-1" not in names and len(names) >= 2  # the sweep's runs too

    assert main(["compare", "--experiment", "wide", "--param", "data.name", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "run,name,data.name,val/loss" and len(lines) == 3 and len(lines[1].split(",")[0]) == 32
    assert main(["compare", "--experiment", "wide", "--param", "data.name", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == ["wide-0", "wide-1"] and records[0]["val/loss"] == "100.0000"
    assert main(["compare", "--where", "metrics.val/loss <<< 3"]) == 2
    assert "cannot filter runs by" in capsys.readouterr().err
