"""``pyrovae evaluate`` on a tiny trained PPCA run in a tmp MLflow store: metrics, tags and
artifacts land in the same run, whose status is kept; bad run ids get one line."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from pyrovae.run import config
from pyrovae.cli import main
from pyrovae.run.evaluation import reopened
from pyrovae.run.tracking import MlflowRun
from pyrovae.run.pipeline import train_config

PPCA_RUN = ["data.name=ppca", "data.binarize=false", "data.subset=100", "train.epochs=2",
            "train.batch_size=50", "model.latent_dim=2", "model.guide.hidden=[]",
            "model.likelihood.name=gaussian", "model.likelihood.hidden=[]", "eval.iwae_every=1",
            "eval.iwae_k=10"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny run in a tmp sqlite store, shared by this module's tests (training is the slow part)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlruns/mlflow.db")
        torch.set_num_threads(1)  # tiny tensors: a second thread only waits on a busy machine
        try:
            yield train_config(config.load(None, PPCA_RUN), progress=False)
        finally:
            torch.set_num_threads(threads)


def test_training_logs_val_nll_iwae_every_epoch(trained_run):
    history = mlflow.MlflowClient().get_metric_history(trained_run.run_id, "val/nll_iwae")
    assert [m.step for m in history] == [1, 2]
    val = mlflow.get_run(trained_run.run_id).data.metrics
    assert val["val/nll_iwae"] < val["val/loss"] + 0.5  # IWAE_10 >= ELBO, up to MC noise


def test_evaluate_logs_iwae_ais_and_bdmc_into_the_same_run(trained_run, capsys):
    run_id = trained_run.run_id
    code = main(["evaluate", run_id, "--iwae-k", "50", "--subset", "40", "--batch-size", "20",
                 "--ais", "--ais-start", "posterior", "--ais-steps", "20", "--ais-chains", "4",
                 "--ais-leapfrog", "3", "--ais-subset", "20", "--bdmc", "--no-progress"])
    assert code == 0
    run = mlflow.get_run(run_id)
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    for key in ("test/nll_iwae", "test/nll_ais", "test/ais_subset/nll_elbo", "test/ais_subset/nll_iwae",
                "bdmc/gap", "bdmc/log_px_lower", "bdmc/log_px_upper"):
        assert math.isfinite(metrics[key]), key
    # same 20 points: the IWAE bound is above the ELBO (K = 50 on a 2-d latent: by several se)
    assert metrics["test/ais_subset/nll_iwae"] < metrics["test/ais_subset/nll_elbo"]
    assert tags["eval.iwae_k"] == "50" and tags["eval.iwae_n"] == "40"
    assert tags["ais.steps"] == "20" and tags["ais.chains"] == "4" and tags["ais.start"] == "posterior"
    assert tags["ais.schedule"] == "sigmoid"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert "evaluation/loglik_hist_test.png" in artifacts
    assert "evaluation/loglik_test_iwae.npy" in artifacts
    assert "test/nll_iwae" in capsys.readouterr().out


def test_unknown_run_id_is_one_line(store, capsys):
    assert main(["evaluate", "0123456789abcdef"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # MLflow may log INFO lines before it
    assert last.startswith("pyrovae: error: no run '0123456789abcdef'") and "MLFLOW_TRACKING_URI" in last


def test_a_failure_during_evaluation_leaves_the_run_finished_with_the_error_tagged(trained_run):
    with pytest.raises(RuntimeError):
        with reopened(MlflowRun(trained_run.run_id)):
            raise RuntimeError("out of memory")
    run = mlflow.get_run(trained_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pyrovae.evaluate.error"] == "RuntimeError: out of memory"
