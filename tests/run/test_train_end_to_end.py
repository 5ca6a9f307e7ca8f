"""``pyrovae train`` end to end on synthetic data into a temporary MLflow store, read back."""

from __future__ import annotations

import tomllib
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main


def test_train_logs_params_metrics_images_config_and_weights(store, tiny_overrides, capsys):
    args = ["train", "--no-progress"]
    for item in [
        *tiny_overrides,
        "train.epochs=2",
        "train.beta_start=0.2",
        "train.warmup_epochs=1",
        "mlflow.experiment=e2e",
    ]:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.run_id in out and "test/loss" in out and "mlflow ui" in out
    assert run.info.status == "FINISHED"

    params = run.data.params  # every config value, defaults included, flattened
    assert params["train.epochs"] == "2" and params["model.latent_dim"] == "3"
    assert params["model.guide.name"] == "diagonal_normal" and params["model.guide.activation"] == "relu"
    assert params["train.lr"] == "0.001" and params["validation.seed"] == "0"

    history = {
        k: [m.value for m in client.get_metric_history(run.info.run_id, k)]
        for k in ("train/loss", "train/beta", "val/loss", "val/recon", "val/kl", "val/mse")
    }
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert steps == [1, 2]
    for loss, recon, kl in zip(history["val/loss"], history["val/recon"], history["val/kl"]):
        assert loss == pytest.approx(recon + kl, rel=1e-6)
    # warm-up: beta rises from 0.2 during epoch 1 and is 1 in epoch 2
    assert 0.2 < history["train/beta"][0] < 1.0 and history["train/beta"][1] == pytest.approx(1.0)
    for key in ("test/loss", "test/recon", "test/kl", "test/mse"):
        assert key in run.data.metrics
    assert run.data.metrics["test/loss"] == pytest.approx(
        run.data.metrics["test/recon"] + run.data.metrics["test/kl"], rel=1e-6
    )

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "images", "weights"} <= artifacts
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    for key in ("reconstructions", "prior_samples"):
        assert sum(p.startswith(f"images/{key}+step+") and p.endswith(".png") for p in images) == 2
    config_text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.toml")
    assert tomllib.loads(config_text)["train"]["warmup_epochs"] == 1.0


def test_images_every_n_epochs(store, tiny_overrides):
    args = ["train", "--no-progress"]
    for item in [*tiny_overrides, "train.epochs=3", "mlflow.images_every=2", "mlflow.experiment=images"]:
        args += ["--set", item]
    assert main(args) == 0
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("images").experiment_id])
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    for key in ("reconstructions", "prior_samples"):
        assert [p.split("+")[2] for p in images if p.startswith(f"images/{key}+step+") and p.endswith(".png")] == ["2"]


def test_bad_config_value_is_one_line_and_starts_no_run(unopened_store, tiny_overrides, capsys):
    args = ["train"]
    for item in [*tiny_overrides, "train.batch_size=0"]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pyrovae: error: config key 'train.batch_size' must be at least 1, got 0"
    assert not Path("mlruns/mlflow.db").exists()  # checked before the store is even opened
