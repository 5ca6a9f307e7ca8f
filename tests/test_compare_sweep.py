"""``pyrovae sweep`` trains a grid as children of one parent; ``pyrovae compare`` tabulates runs best first."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.commands.sweep import split_values, variants


def test_grid_values_split_outside_brackets_and_quotes():
    assert split_values("1e-3,3e-3") == ["1e-3", "3e-3"]
    assert split_values("[256,256],[512]") == ["[256,256]", "[512]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    grid = variants(["train.lr=1,2", "model.latent_dim=3,4,5"])
    assert len(grid) == 6 and grid["train.lr=2 model.latent_dim=5"] == ["train.lr=2", "model.latent_dim=5"]


def test_sweep_children_under_one_parent_then_compare(store, tiny_overrides, capsys):
    args = ["sweep", "--no-progress", "--name", "lr-sweep",
            "--grid", "train.lr=1e-4,1e-2", "--grid", "model.guide.hidden=[8],[16,8]"]
    for item in tiny_overrides:
        if not item.startswith("model.guide.hidden"):
            args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("pyrovae").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("pyrovae.group") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert parent.info.run_name == "lr-sweep" and parent.info.status == "FINISHED"
    param_sets = [set(c.data.params) for c in children]
    assert all(p == param_sets[0] for p in param_sets) and "train.batch_size" in param_sets[0]
    assert {(c.data.params["train.lr"], c.data.params["model.guide.hidden"]) for c in children} == {
        ("0.0001", "[8]"), ("0.0001", "[16, 8]"), ("0.01", "[8]"), ("0.01", "[16, 8]")}

    # the sweep printed its children best first; compare prints the same order on demand
    assert main(["compare", "--parent", parent.info.run_id, "--metric", "val/loss", "--metric", "val/kl"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("4 runs in") and "lower is better" in table[0]
    header = table[1].split()
    assert header[:2] == ["run", "name"] and header[-2:] == ["val/loss", "val/kl"]
    assert "model.guide.hidden" in header and "train.lr" in header and "train.epochs" not in header
    losses = [float(line.split()[-2]) for line in table[3:]]
    assert losses == sorted(losses) and len(losses) == 4
    best = min(children, key=lambda c: c.data.metrics["val/loss"])
    assert table[3].startswith(best.info.run_id[:8])
    assert losses[0] == pytest.approx(best.data.metrics["val/loss"], abs=1e-4)
    assert f"parent run {parent.info.run_id}" in out and out.startswith("sweep: 4 runs: ")


def test_compare_unknown_metric_and_experiment_one_line(store, tiny_overrides, capsys):
    args = ["train", "--no-progress"]
    for item in tiny_overrides:
        args += ["--set", item]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["compare", "--metric", "val/los"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error: no run has metric 'val/los'; metrics logged:") and "val/loss" in err
    assert main(["compare", "--experiment", "nope"]) == 2
    assert "no experiment named 'nope' in this store; experiments: " in capsys.readouterr().err
