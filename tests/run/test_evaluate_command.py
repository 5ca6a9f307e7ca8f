"""``pyrovae evaluate`` on a tiny trained PPCA run in a tmp MLflow store: every evaluation is a
record of its own (a child run with its settings), AIS that has not converged is flagged, run ids
may be prefixes, and bad ids get one line."""

from __future__ import annotations

import math
import os
import signal

import mlflow
import pytest
import torch

from pyrovae.cli import main
from pyrovae.run import config
from pyrovae.run.pipeline import train_config

PPCA_RUN = [
    "data.name=ppca",
    "data.binarize=false",
    "data.subset=100",
    "train.epochs=2",
    "train.batch_size=50",
    "model.latent_dim=2",
    "model.guide.hidden=[]",
    "model.likelihood.name=gaussian",
    "model.likelihood.hidden=[]",
    "validation.iwae_every=1",
    "eval.iwae_k=10",
]


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


def evaluations_of(run_id: str):
    client = mlflow.MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", order_by=["attributes.start_time ASC"]
    )


def test_evaluate_keeps_iwae_ais_and_bdmc_in_an_evaluation_run_of_its_own(trained_run, capsys):
    run_id = trained_run.run_id
    before = mlflow.get_run(run_id)
    code = main(
        [
            "evaluate",
            run_id[:10],
            "--iwae-k",
            "50",
            "--subset",
            "40",
            "--batch-size",
            "20",
            "--ais",
            "--ais-start",
            "posterior",
            "--ais-steps",
            "20",
            "--ais-chains",
            "4",
            "--ais-leapfrog",
            "3",
            "--ais-subset",
            "20",
            "--bdmc",
            "--no-progress",
        ]
    )  # a prefix of the id
    assert code == 0
    (evaluation,) = [r for r in evaluations_of(run_id) if r.data.params["eval.n"] == "40"]
    metrics, params = evaluation.data.metrics, evaluation.data.params
    assert evaluation.info.status == "FINISHED" and evaluation.data.tags["pyrovae.kind"] == "evaluation"
    for key in (
        "test/nll_iwae",
        "test/nll_iwae_se",
        "test/nll_ais",
        "test/ais_subset/nll_elbo",
        "test/ais_subset/nll_iwae",
        "test/ais_subset/ais_minus_iwae_se",
        "bdmc/gap",
        "bdmc/log_px_lower",
        "bdmc/log_px_upper",
    ):
        assert math.isfinite(metrics[key]), key
    # same 20 points: the IWAE bound is above the ELBO (K = 50 on a 2-d latent: by several se)
    assert metrics["test/ais_subset/nll_iwae"] < metrics["test/ais_subset/nll_elbo"]
    # on all 40 points too, and each estimator's cost is beside its number
    assert metrics["test/nll_iwae"] < metrics["test/nll_elbo"] and metrics["test/kl"] > 0
    assert metrics["test/active_units"] in (1, 2)  # a trained 2-d PPCA latent is used
    for estimator, n in (("elbo", 40), ("iwae", 40), ("ais", 20)):
        seconds = metrics[f"test/{estimator}_seconds"]
        assert seconds > 0 and metrics[f"test/{estimator}_seconds_per_point"] == pytest.approx(seconds / n)
        assert math.isfinite(metrics[f"test/{estimator}_peak_mib"])
    assert params["eval.of"] == run_id and params["eval.iwae_k"] == "50" and params["eval.weights"] == "final"
    assert params["ais.steps"] == "20" and params["ais.chains"] == "4" and params["ais.start"] == "posterior"
    history = mlflow.MlflowClient().get_metric_history(evaluation.info.run_id, "test/nll_iwae")
    assert [m.step for m in history] == [2] == [int(params["eval.weights_epoch"])]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(evaluation.info.run_id, "evaluation")}
    assert {"evaluation/loglik_hist_test.png", "evaluation/loglik_test_iwae.npy"} <= artifacts
    assert f"kept as evaluation run {evaluation.info.run_id}" in capsys.readouterr().out
    after = mlflow.get_run(run_id)  # the trained run itself is untouched
    assert after.info.status == before.info.status and after.data.metrics == before.data.metrics


def test_three_evaluations_with_other_settings_are_all_kept(trained_run):
    run_id = trained_run.run_id
    for settings in (["--iwae-k", "20"], ["--iwae-k", "5", "--subset", "20"], ["--iwae-k", "5", "--best"]):
        assert main(["evaluate", run_id, "--no-progress", *settings]) == 0
    kept = {
        (r.data.params["eval.iwae_k"], r.data.params["eval.n"], r.data.params["eval.weights"]): r.data.metrics[
            "test/nll_iwae"
        ]
        for r in evaluations_of(run_id)
    }
    assert {("20", "100", "final"), ("5", "20", "final"), ("5", "100", "best")} <= set(kept)
    assert len(set(kept.values())) == len(kept)  # different numbers, none overwritten


@pytest.mark.parametrize("steps, warned", [(1, True), (200, False)])
def test_ais_that_has_not_converged_is_flagged(trained_run, capsys, steps, warned):
    """One AIS step with one chain from the prior is plain importance sampling with one sample:
    it finds less likelihood than IWAE with K = 200 (here 0.6 nats, over 3 se); 200 steps from q find more."""
    start = "prior" if warned else "posterior"
    assert (
        main(
            [
                "evaluate",
                trained_run.run_id,
                "--iwae-k",
                "200",
                "--subset",
                "100",
                "--ais",
                "--ais-subset",
                "100",
                "--ais-steps",
                str(steps),
                "--ais-chains",
                "1" if warned else "8",
                "--ais-start",
                start,
                "--ais-leapfrog",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert ("AIS's NLL is" in err and "raise --ais-steps" in err) == warned


def test_unknown_run_id_or_ambiguous_prefix_is_one_line(store, capsys):
    assert main(["evaluate", "0123456789abcdef"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # MLflow may log INFO lines before it
    assert last.startswith("pyrovae: error: no run '0123456789abcdef'") and "MLFLOW_TRACKING_URI" in last
    assert main(["evaluate", "0123"]) == 2
    assert "too short: give at least 8 characters" in capsys.readouterr().err


def test_a_failure_during_evaluation_fails_the_evaluation_run_only(trained_run, monkeypatch):
    import pyrovae.run.evaluation as evaluation

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(evaluation, "iwae", out_of_memory)
    with pytest.raises(RuntimeError):
        evaluation.evaluate_run(trained_run.run_id, iwae_k=5, progress=False)
    failed = evaluations_of(trained_run.run_id)[-1]
    assert failed.info.status == "FAILED" and failed.data.tags["pyrovae.error"] == "RuntimeError: out of memory"
    assert mlflow.get_run(trained_run.run_id).info.status == "FINISHED"


def test_sigterm_during_an_evaluation_ends_its_run_killed_not_running(trained_run, monkeypatch, capsys):
    import pyrovae.run.evaluation as evaluation

    def terminated_midway(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` or `kill` would
        return torch.zeros(args[1].shape[0])

    monkeypatch.setattr(evaluation, "iwae", terminated_midway)
    # without pyrovae's handler the signal is swallowed here (pytest must survive) and the run finishes
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        code = main(["evaluate", trained_run.run_id, "--iwae-k", "5", "--no-progress"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143 and "pyrovae: stopped by SIGTERM" in capsys.readouterr().err
    stopped = evaluations_of(trained_run.run_id)[-1]
    assert stopped.info.status == "KILLED" and stopped.data.tags["pyrovae.stopped"] == "stopped by SIGTERM"
    assert mlflow.get_run(trained_run.run_id).info.status == "FINISHED"


def test_a_run_not_made_by_pyrovae_is_named_as_such(store, capsys):
    client = mlflow.MlflowClient(store)
    run = client.create_run(client.create_experiment("other-tool"), run_name="not-ours")
    for command in (["evaluate", run.info.run_id, "--no-progress"], ["sample", run.info.run_id]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"run '{run.info.run_id}' has no config.toml" in err and "so it was not made by pyrovae train" in err


def test_a_run_on_a_server_points_at_the_server_not_at_mlflow_ui(capsys):
    from pyrovae.cli.train import print_result
    from pyrovae.run.pipeline import RunResult

    print_result(RunResult("0" * 32, "http://127.0.0.1:5000", {"val/loss": 1.0}))
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:5000 in a browser" in out and "mlflow ui --backend-store-uri" not in out
