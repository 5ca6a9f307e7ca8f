"""``evaluate_run`` (what ``pyrovae evaluate`` does) by value, for mutation testing.

One tiny conditional VAE (labels in its interface, so every estimator gets them) is trained once
for this module in a tmp sqlite store; each evaluation here uses a few datapoints, K = 4 and three
AIS steps, and its logged numbers are compared with the same estimators (``datapoint_terms``,
``iwae``, ``ais``, ``bdmc``) run in the test on the same rows, labels and seed. The evaluation
run's params, tags, name, metric names, steps and artifacts are compared exactly, and so are the
one-line refusals of bad arguments.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import socket
import time
import types
import warnings

import matplotlib.colors
import mlflow
import numpy as np
import pytest
import torch

import pyrovae.run.evaluation as evaluation_module
import pyrovae.run.figures
from pyrovae.data import load_data
from pyrovae.devices import select_device
from pyrovae.errors import UserError
from pyrovae.infer.elbo import validation_elbo
from pyrovae.infer.estimators.ais import AISSettings, ais, bdmc
from pyrovae.infer.estimators.diagnostics import active_units_per_site
from pyrovae.infer.estimators.iwae import iwae
from pyrovae.infer.terms import datapoint_terms
from pyrovae.model.models import build_model
from pyrovae.run import budget, checkpoint, config, lease
from pyrovae.run.costs import Cost
from pyrovae.run.evaluation import (
    _bar,
    ais_check,
    cost_metrics,
    evaluate_run,
    histogram_png,
    mean_and_se,
    weights_epoch,
)
from pyrovae.run.pipeline import train_config
from pyrovae.run.restore import rebuild, run_config
from pyrovae.run.tracking import MlflowRun
from tests.conftest import TINY, tracking_store

SETTINGS = AISSettings(steps=3, chains=2, leapfrog_steps=2)
AIS_PARAMS = {
    "ais.steps": "3",
    "ais.chains": "2",
    "ais.leapfrog_steps": "2",
    "ais.step_size": "0.05",
    "ais.target_accept": "0.65",
    "ais.adapt_rate": "0.02",
    "ais.adapt_over": "datapoint",
    "ais.schedule": "sigmoid",
    "ais.start": "prior",
}
COST = ("seconds", "seconds_per_point", "peak_mib")
UNKNOWN = "0123456789abcdef"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(store URI, run id) of one tiny conditional VAE, shared by the module's tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits on a busy machine
    try:
        with tracking_store(tmp_path_factory.mktemp("evaluation")) as uri:
            run = train_config(config.load(None, [*TINY, "model.name=cvae", "mlflow.images_every=0"]), progress=False)
            yield uri, run.run_id
    finally:
        torch.set_num_threads(threads)


def reference(uri: str, run_id: str, split: str, subset: int, weights: str = "final"):
    """The run's model, the first ``subset`` rows of ``split`` with their labels, and its ELBO."""
    run = MlflowRun(run_id, uri)
    cfg = run_config(run)
    device = select_device("auto")
    data = load_data(cfg["data"], device)
    x, y = data.evaluation_data(split)[:subset], data.labels(split)[:subset]
    elbo = validation_elbo(cfg["train"]["elbo"], cfg["train"]["num_particles"])
    return rebuild(run, cfg, weights, device), x, y, elbo


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (unbiased std / sqrt n), computed apart from the module under test."""
    v = np.asarray(torch.as_tensor(values).double().cpu().numpy())
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def logged(uri: str, run_id: str):
    """The evaluation run, its metric steps and its artifacts (name -> local path)."""
    client = mlflow.MlflowClient(uri)
    record = client.get_run(run_id)
    steps = {key: [m.step for m in client.get_metric_history(run_id, key)] for key in record.data.metrics}
    folder = client.download_artifacts(run_id, "evaluation")
    files = {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))}
    return record, steps, files


def final_bar(err: str, desc: str) -> str:
    """The last state tqdm drew for the bar ``desc`` (``done/total``)."""
    states = [s for s in re.split(r"[\r\n]", err) if s.startswith(f"{desc}: ")]
    return re.search(r"\| (\d+/\d+) \[", states[-1]).group(1)


def test_evaluation_logs_elbo_iwae_ais_and_bdmc_numbers_of_the_same_rows_and_seed(
    trained, tmp_path, capsys, caplog, monkeypatch
):
    uri, run_id = trained
    monkeypatch.setattr(budget, "TELL_ABOVE_S", -1.0)  # every pass says its expected duration,
    # as timed by a clock that ticks 1 s per reading: 1 s for the first batch or annealing step
    # (from now on, so that the time limit of an hour, read on the real clock, is still far ahead)
    ticks = itertools.count(time.monotonic() + 1.0)
    monkeypatch.setattr(budget, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    # MLflow's system metrics, were they on, would be sampled and logged every 10 ms here
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.01")
    caplog.set_level(logging.INFO, logger="pyrovae")
    evaluation = evaluate_run(
        run_id[:10],
        iwae_k=4,
        subset=12,
        batch_size=5,
        ais_run=True,
        ais_settings=SETTINGS,
        ais_subset=6,
        bdmc_run=True,
        seed=3,
        time_limit=3600.0,
        tracking_uri=uri,
    )
    vae, x, y, elbo = reference(uri, run_id, "test", 12)
    terms = datapoint_terms(vae, elbo, x, 5, seed=3, y=y)
    log_px = iwae(vae, x, 4, 5, seed=3, y=y)
    log_px_ais = ais(vae, x[:6], SETTINGS, 5, 3, None, y[:6])
    sandwich = bdmc(vae, x[:6], SETTINGS, 5, seed=3, y=y[:6])
    units = active_units_per_site(vae, x, y=y)
    assert list(units) == ["z"]
    m = evaluation.metrics
    expected = {
        "test/nll_elbo": mean_se(terms["loss"])[0],
        "test/nll_elbo_se": mean_se(terms["loss"])[1],
        "test/kl": float(terms["kl"].double().mean()),
        "test/kl/z": float(terms["kl/z"].double().mean()),
        "test/active_units": units["z"],
        "test/nll_iwae": mean_se(-log_px)[0],
        "test/nll_iwae_se": mean_se(-log_px)[1],
        "test/nll_ais": mean_se(-log_px_ais)[0],
        "test/nll_ais_se": mean_se(-log_px_ais)[1],
        "test/ais_subset/nll_elbo": mean_se(terms["loss"][:6])[0],
        "test/ais_subset/nll_elbo_se": mean_se(terms["loss"][:6])[1],
        "test/ais_subset/nll_iwae": mean_se(-log_px[:6])[0],
        "test/ais_subset/nll_iwae_se": mean_se(-log_px[:6])[1],
        "test/ais_subset/ais_minus_iwae": mean_se(log_px[:6] - log_px_ais)[0],
        "test/ais_subset/ais_minus_iwae_se": mean_se(log_px[:6] - log_px_ais)[1],
        "bdmc/gap": sandwich.gap,
        "bdmc/log_px_lower": float(sandwich.lower.mean()),
        "bdmc/log_px_upper": float(sandwich.upper.mean()),
    }
    costs = {f"test/{e}_{c}" for e in ("elbo", "iwae", "ais") for c in COST} | {"bdmc/seconds"}
    assert set(m) == set(expected) | costs
    assert {k: m[k] for k in expected} == pytest.approx(expected, rel=1e-12, abs=1e-12)
    for estimator, n in (("elbo", 12), ("iwae", 12), ("ais", 6)):
        seconds = m[f"test/{estimator}_seconds"]
        assert 0 < seconds < 60 and m[f"test/{estimator}_seconds_per_point"] == seconds / n
        assert m[f"test/{estimator}_peak_mib"] >= 0
    assert 0 < m["bdmc/seconds"] < 60
    assert (evaluation.of, evaluation.n) == (run_id, 12)
    gap, se = expected["test/ais_subset/ais_minus_iwae"], expected["test/ais_subset/ais_minus_iwae_se"]
    assert gap <= 2 * se and evaluation.warnings == []  # these tiny settings do not trip the check

    record, steps, files = logged(uri, evaluation.run_id)
    assert record.data.metrics == pytest.approx(m, rel=1e-15)  # and no system/* metrics
    assert all(s == [1] for s in steps.values())  # the final weights' epoch
    assert record.data.params == {
        "eval.of": run_id,
        "eval.split": "test",
        "eval.n": "12",
        "eval.seed": "3",
        "eval.weights": "final",
        "eval.weights_epoch": "1",
        "eval.iwae_k": "4",
        **AIS_PARAMS,
        "ais.subset": "6",
        "bdmc.n": "6",
    }
    tags = {k: v for k, v in record.data.tags.items() if k.startswith("pyrovae.") and k != lease.LEASE_TAG}
    assert tags == {"pyrovae.kind": "evaluation"}
    assert record.data.tags["mlflow.parentRunId"] == run_id and record.info.status == "FINISHED"
    assert record.info.run_name == "evaluation test n=12 K=4 seed=3 final AIS T=3 n=6"
    assert list(files) == [
        "loglik_hist_test.png",
        "loglik_test_ais.npy",
        "loglik_test_elbo.npy",
        "loglik_test_iwae.npy",
    ]
    estimates = {"ELBO": -terms["loss"], "IWAE K=4": log_px, "AIS (6 points)": log_px_ais}
    for label, name in (("ELBO", "elbo"), ("IWAE K=4", "iwae"), ("AIS (6 points)", "ais")):
        assert np.array_equal(np.load(files[f"loglik_test_{name}.npy"]), estimates[label].cpu().numpy())
    title = f"run {run_id[:8]}, test split, final weights, per-datapoint log p(x)"
    histogram_png(estimates, tmp_path / "same.png", title)
    assert (tmp_path / "same.png").read_bytes() == open(files["loglik_hist_test.png"], "rb").read()

    err = capsys.readouterr().err
    assert (final_bar(err, "IWAE K=4"), final_bar(err, "AIS"), final_bar(err, "BDMC")) == ("12/12", "6/6", "12/12")
    said = [r.getMessage() for r in caplog.records if " datapoints: about " in r.getMessage()]
    # 1 s for 5 of 12 datapoints; 1 s for 1 of 2 batches x 3 annealing steps
    assert said == ["IWAE K=4 on 12 datapoints: about 2 s", "AIS T=3 on 6 datapoints: about 6 s"]


def test_a_time_limit_keeps_the_estimates_of_the_batches_done_and_says_so(trained):
    """A limit already passed stops IWAE and AIS after their first batch (5 of 12 and 5 of 8 points).
    One AIS step with one chain from q is one importance sample of q: it loses to IWAE with K = 4
    (here by 3 se), and the warning says so."""
    uri, run_id = trained
    one_step = AISSettings(steps=1, chains=1, leapfrog_steps=1, start="posterior")
    evaluation = evaluate_run(
        run_id,
        iwae_k=4,
        subset=12,
        batch_size=5,
        ais_run=True,
        ais_settings=one_step,
        ais_subset=8,
        seed=3,
        progress=False,
        time_limit=1e-9,
        tracking_uri=uri,
    )
    vae, x, y, elbo = reference(uri, run_id, "test", 12)
    terms = datapoint_terms(vae, elbo, x, 5, seed=3, y=y)
    log_px = iwae(vae, x, 4, 5, seed=3, y=y)[:5]
    log_px_ais = ais(vae, x[:8], one_step, 5, 3, None, y[:8])[:5]
    m = evaluation.metrics
    expected = {
        "test/nll_elbo": mean_se(terms["loss"])[0],
        "test/nll_iwae": mean_se(-log_px)[0],
        "test/nll_iwae_se": mean_se(-log_px)[1],
        "test/nll_ais": mean_se(-log_px_ais)[0],
        "test/ais_subset/nll_elbo": mean_se(terms["loss"][:5])[0],
        "test/ais_subset/nll_iwae": mean_se(-log_px)[0],
        "test/ais_subset/ais_minus_iwae": mean_se(log_px - log_px_ais)[0],
        "test/ais_subset/ais_minus_iwae_se": mean_se(log_px - log_px_ais)[1],
    }
    assert {k: m[k] for k in expected} == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert m["test/iwae_seconds_per_point"] == m["test/iwae_seconds"] / 12
    assert m["test/ais_seconds_per_point"] == m["test/ais_seconds"] / 5
    gap, se = expected["test/ais_subset/ais_minus_iwae"], expected["test/ais_subset/ais_minus_iwae_se"]
    assert gap > 2 * se
    lost = (
        f"AIS's NLL is {gap:.3f} +- {se:.3f} nats above IWAE's on the same points: AIS has not converged; "
        "raise --ais-steps (now 1) or --ais-chains (now 1), or start from the posterior (--ais-start posterior)"
    )
    stopped = "IWAE on 5 of 12 datapoints and AIS on 5 of 8 datapoints"
    assert evaluation.warnings == [lost, f"the time limit (1e-09 s) stopped {stopped}"]
    record, _, files = logged(uri, evaluation.run_id)
    params = record.data.params
    assert (params["eval.n"], params["eval.iwae_n"], params["ais.subset"]) == ("12", "5", "5")
    tags = {k: v for k, v in record.data.tags.items() if k.startswith("pyrovae.") and k != lease.LEASE_TAG}
    assert tags == {
        "pyrovae.kind": "evaluation",
        "pyrovae.evaluate.warning": lost,
        "pyrovae.evaluate.truncated": "time limit 1e-09 s: IWAE on 5 of 12 datapoints, AIS on 5 of 8 datapoints",
    }
    assert record.info.run_name == "evaluation test n=12 K=4 seed=3 final AIS T=1 n=8"  # named before it ran
    assert np.array_equal(np.load(files["loglik_test_iwae.npy"]), log_px.cpu().numpy())
    assert np.array_equal(np.load(files["loglik_test_ais.npy"]), log_px_ais.cpu().numpy())


def test_without_iwae_and_ais_bdmc_runs_on_100_simulated_points_of_the_best_weights(trained, capsys):
    """``iwae_k = 0``: no IWAE; BDMC alone with ``ais_subset = 0`` takes its 100 points (here the 7
    there are); the ``val`` split and the ``best`` checkpoint's epoch; no progress bars."""
    uri, run_id = trained
    evaluation = evaluate_run(
        run_id,
        split="val",
        iwae_k=0,
        subset=7,
        ais_settings=SETTINGS,
        ais_subset=0,
        bdmc_run=True,
        progress=False,
        weights="best",
        tracking_uri=uri,
    )
    vae, x, y, elbo = reference(uri, run_id, "val", 7, weights="best")
    terms = datapoint_terms(vae, elbo, x, 100, seed=0, y=y)
    sandwich = bdmc(vae, x, SETTINGS, 100, seed=0, y=y)
    m = evaluation.metrics
    expected = {
        "val/nll_elbo": mean_se(terms["loss"])[0],
        "val/nll_elbo_se": mean_se(terms["loss"])[1],
        "val/kl": float(terms["kl"].double().mean()),
        "val/kl/z": float(terms["kl/z"].double().mean()),
        "val/active_units": sum(active_units_per_site(vae, x, y=y).values()),
        "bdmc/gap": sandwich.gap,
        "bdmc/log_px_lower": float(sandwich.lower.mean()),
        "bdmc/log_px_upper": float(sandwich.upper.mean()),
    }
    costs = {f"val/elbo_{c}" for c in COST} | {"bdmc/seconds"}
    assert set(m) == set(expected) | costs
    assert {k: m[k] for k in expected} == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert (evaluation.n, evaluation.warnings) == (7, [])
    record, steps, files = logged(uri, evaluation.run_id)
    assert record.data.params == {
        "eval.of": run_id,
        "eval.split": "val",
        "eval.n": "7",
        "eval.seed": "0",
        "eval.weights": "best",
        "eval.weights_epoch": "1",
        "eval.iwae_k": "0",
        **AIS_PARAMS,
        "bdmc.n": "100",
    }
    assert record.info.run_name == "evaluation val n=7 K=0 seed=0 best"
    assert list(files) == ["loglik_hist_val.png", "loglik_val_elbo.npy"]
    assert np.array_equal(np.load(files["loglik_val_elbo.npy"]), (-terms["loss"]).cpu().numpy())
    assert capsys.readouterr().err == ""


def test_default_settings_are_the_test_split_k_5000_seed_0_final_weights_with_progress(trained, capsys):
    uri, run_id = trained
    evaluation = evaluate_run(run_id, subset=3, tracking_uri=uri)
    vae, x, y, elbo = reference(uri, run_id, "test", 3)
    log_px = iwae(vae, x, 5000, 100, seed=0, y=y)
    assert evaluation.metrics["test/nll_iwae"] == pytest.approx(mean_se(-log_px)[0], rel=1e-12)
    record = mlflow.MlflowClient(uri).get_run(evaluation.run_id)
    assert record.data.params == {
        "eval.of": run_id,
        "eval.split": "test",
        "eval.n": "3",
        "eval.seed": "0",
        "eval.weights": "final",
        "eval.weights_epoch": "1",
        "eval.iwae_k": "5000",
    }
    assert final_bar(capsys.readouterr().err, "IWAE K=5000") == "3/3"


@pytest.mark.parametrize(
    "keys, line",
    [
        ({"iwae_k": -1}, "--iwae-k must be non-negative (batch size positive), got -1"),
        ({"subset": -2}, "--subset must be non-negative (batch size positive), got -2"),
        ({"ais_subset": -1}, "--ais-subset must be non-negative (batch size positive), got -1"),
        ({"batch_size": 0}, "--batch-size must be non-negative (batch size positive), got 0"),
        ({"time_limit": 0}, "--time-limit must be a positive number of seconds, got 0"),
        ({"time_limit": -1.5}, "--time-limit must be a positive number of seconds, got -1.5"),
        ({"time_limit": math.nan}, "--time-limit must be a positive number of seconds, got nan"),
    ],
)
def test_bad_settings_are_refused_in_one_line_before_the_store_is_read(store, keys, line):
    with pytest.raises(UserError) as refused:
        evaluate_run(UNKNOWN, tracking_uri=store, **keys)
    assert str(refused.value) == line


def no_run_line(uri: str) -> str:
    return (
        f"no run '{UNKNOWN}' in the MLflow store {uri}; "
        "check the id (pyrovae compare, the MLflow UI) and MLFLOW_TRACKING_URI"
    )


def test_the_smallest_allowed_settings_pass_on_to_the_store(store):
    """0 points of IWAE / AIS / subset, batches of 1 and any positive time limit are accepted."""
    with pytest.raises(UserError) as missing, warnings.catch_warnings():
        warnings.simplefilter("error")  # and no deprecation warning without ``uri``
        evaluate_run(UNKNOWN, iwae_k=0, subset=0, ais_subset=0, batch_size=1, time_limit=1e-9, tracking_uri=store)
    assert str(missing.value) == no_run_line(store)


def test_uri_is_the_old_name_of_tracking_uri_and_warns_at_the_callers_line(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///nowhere/mlflow.db")  # the store given wins
    with pytest.warns(DeprecationWarning) as warned, pytest.raises(UserError) as missing:
        evaluate_run(UNKNOWN, uri=store)
    assert str(missing.value) == no_run_line(store)
    (warning,) = warned
    assert str(warning.message) == "evaluate_run(uri=...) is now evaluate_run(tracking_uri=...)"
    # it names the line that called evaluate_run: the frame above its body in the traceback (this
    # test's line; under mutmut, which calls the body through its trampoline, the trampoline's)
    frames = missing.traceback
    body = next(i for i, f in enumerate(frames) if str(f.path) == evaluation_module.__file__)
    assert (warning.filename, warning.lineno) == (str(frames[body - 1].path), frames[body - 1].lineno + 1)
    with pytest.warns(DeprecationWarning), pytest.raises(UserError) as missing:
        evaluate_run(UNKNOWN, uri="sqlite:///elsewhere/mlflow.db", tracking_uri=store)
    assert str(missing.value) == no_run_line(store)  # tracking_uri wins


def test_a_stale_run_is_ended_killed_before_it_is_read(store):
    client = mlflow.MlflowClient(store)
    run_id = client.create_run("0").info.run_id  # RUNNING, made by no pyrovae train
    holder = lease.Holder(socket.gethostname(), os.getpid(), 0.0, 1e12)  # this pid, but not started at 0.0
    client.set_tag(run_id, lease.LEASE_TAG, holder.text())
    with pytest.raises(UserError, match="has no config.toml"):
        evaluate_run(run_id, tracking_uri=store)
    record = client.get_run(run_id)
    assert record.info.status == "KILLED"
    gone = f"its process {os.getpid()} on {socket.gethostname()} is gone"
    assert record.data.tags[lease.STALE_TAG] == f"left RUNNING: {gone}; ended KILLED by pyrovae"


def untrained_run(uri: str, folder, overrides: list[str]) -> str:
    """A finished run with an untrained model, logged as ``pyrovae train`` logs one (its
    ``config.toml`` and ``weights/final.pt``): enough to evaluate, without training."""
    cfg = config.load(None, [*TINY, *overrides])
    client = mlflow.MlflowClient(uri)
    run = MlflowRun(client.create_run("0").info.run_id, uri)
    run.log_config(cfg)
    data = load_data(cfg["data"])
    vae = build_model(cfg["model"], data.data_shape, data.num_classes)
    saved = {"state_dict": vae.state_dict(), "data_shape": list(data.data_shape), "num_classes": data.num_classes}
    torch.save(saved, folder / "final.pt")
    run.log_artifact(folder / "final.pt", "weights")
    client.set_terminated(run.run_id, "FINISHED")
    return run.run_id


def test_a_model_with_two_latent_sites_gets_kl_and_active_units_per_site(store, tmp_path):
    """An untrained two-site model whose config trains (so also validates) with a 2-particle
    ELBO and whose best checkpoint is of epoch 2 of 3, evaluated with the default subset (the whole
    test split) in the default batches of 100, and AIS and BDMC on their default 100 points."""
    run_id = untrained_run(store, tmp_path, ["model.name=hvae", "train.num_particles=2"])
    vae, x, _, elbo = reference(store, run_id, "test", None)
    for step in (1, 2, 3):
        mlflow.MlflowClient(store).log_metric(run_id, "val/loss", 10.0 - step, step=step)
    best = {"format": checkpoint.FORMAT, "finished": True, "step": 7, "epoch": 2, "module": vae.state_dict()}
    checkpoint.log(MlflowRun(run_id, store), best, "best")
    evaluation = evaluate_run(
        run_id,
        iwae_k=0,
        weights="best",
        ais_run=True,
        bdmc_run=True,
        ais_settings=SETTINGS,
        progress=False,
        tracking_uri=store,
    )
    n = x.shape[0]
    assert n > 101 and evaluation.n == n
    terms = datapoint_terms(vae, elbo, x, 100, seed=0)
    sandwich = bdmc(vae, x[:100], SETTINGS, 100, seed=0)
    log_px_ais = ais(vae, x[:100], SETTINGS, 100, 0)
    units = active_units_per_site(vae, x)
    assert sorted(units) == ["z1", "z2"]
    expected = {
        "test/nll_elbo": mean_se(terms["loss"])[0],
        "test/nll_elbo_se": mean_se(terms["loss"])[1],
        "test/kl": float(terms["kl"].double().mean()),
        "test/kl/z1": float(terms["kl/z1"].double().mean()),
        "test/kl/z2": float(terms["kl/z2"].double().mean()),
        "test/active_units": units["z1"] + units["z2"],
        "test/active_units/z1": units["z1"],
        "test/active_units/z2": units["z2"],
        "test/nll_ais": mean_se(-log_px_ais)[0],
        "test/nll_ais_se": mean_se(-log_px_ais)[1],
        "test/ais_subset/nll_elbo": mean_se(terms["loss"][:100])[0],
        "test/ais_subset/nll_elbo_se": mean_se(terms["loss"][:100])[1],
        "bdmc/gap": sandwich.gap,
        "bdmc/log_px_lower": float(sandwich.lower.mean()),
        "bdmc/log_px_upper": float(sandwich.upper.mean()),
    }
    costs = {f"test/{e}_{c}" for e in ("elbo", "ais") for c in COST} | {"bdmc/seconds"}
    assert set(evaluation.metrics) == set(expected) | costs  # no IWAE: nothing compared with it
    assert {k: evaluation.metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12, abs=1e-12)
    record, steps, _ = logged(store, evaluation.run_id)
    params = record.data.params
    assert (params["eval.n"], params["eval.weights_epoch"]) == (str(n), "2")
    assert (params["ais.subset"], params["bdmc.n"]) == ("100", "100")
    assert all(s == [2] for s in steps.values())  # the best checkpoint's epoch, not the last val/loss


@pytest.mark.parametrize("estimator", ["ais_run", "bdmc_run"])
def test_ais_or_bdmc_of_a_model_with_a_discrete_latent_is_refused_before_an_evaluation_run_exists(
    store, tmp_path, estimator
):
    run_id = untrained_run(store, tmp_path, ["model.name=m2", "train.elbo=enum"])
    with pytest.raises(UserError) as refused:
        evaluate_run(run_id, iwae_k=2, subset=4, progress=False, tracking_uri=store, **{estimator: True})
    assert str(refused.value) == (
        "AIS needs continuous latent sites, but site 'y' of SemiSupervisedVAE is discrete (Categorical): "
        "score it by IWAE, which sums it out"
    )
    assert [r.info.run_id for r in mlflow.MlflowClient(store).search_runs(["0"])] == [run_id]


def test_weights_epoch_is_the_last_val_loss_step_or_the_best_checkpoints_epoch(store):
    client = mlflow.MlflowClient(store)
    bare = MlflowRun(client.create_run("0").info.run_id, store)
    assert weights_epoch(bare, "final") == 0  # no val/loss logged yet
    for step in (1, 3, 2):
        client.log_metric(bare.run_id, "val/loss", 10.0 - step, step=step)
    checkpoint.log(bare, {"format": checkpoint.FORMAT, "finished": True, "step": 7, "epoch": 2}, "best")
    assert (weights_epoch(bare, "final"), weights_epoch(bare, "best")) == (3, 2)


def test_mean_and_se_is_the_float64_mean_and_the_unbiased_std_over_sqrt_n():
    mean, se = mean_and_se([0.1, 0.2, 0.7, 1e-8])
    values = np.array([0.1, 0.2, 0.7, 1e-8])
    assert mean == pytest.approx(values.mean(), rel=1e-15)
    assert se == pytest.approx(values.std(ddof=1) / 2, rel=1e-15)
    assert mean_and_se(torch.tensor([1.0, 3.0], dtype=torch.float32)) == (2.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one number: nan, without torch's degrees-of-freedom warning
        one = mean_and_se(torch.tensor([5.0]))
    assert one[0] == 5.0 and math.isnan(one[1])


@pytest.mark.parametrize(
    "differences, warned",
    [([5.0, 1.0, 1.0, 1.0], False), ([5.5, 1.5, 1.5, 1.5], True), ([9.0, 1.0, 1.0, 1.0], False)],
)
def test_ais_check_warns_when_ais_nll_lies_more_than_two_se_above_iwae(differences, warned):
    """The differences have standard error 1, 1 and 2: mean 2 is not above 2 se, 2.5 is, 3 is not above 4."""
    log_px_ais = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64)
    log_px_iwae = log_px_ais + torch.tensor(differences, dtype=torch.float64)
    metrics, said = ais_check(log_px_ais, log_px_iwae, SETTINGS)
    gap, se = sum(differences) / 4, (2.0 if differences[0] == 9.0 else 1.0)
    assert metrics == {"ais_minus_iwae": gap, "ais_minus_iwae_se": se}
    line = (
        f"AIS's NLL is {gap:.3f} +- {se:.3f} nats above IWAE's on the same points: AIS has not converged; "
        "raise --ais-steps (now 3) or --ais-chains (now 2), or start from the posterior (--ais-start posterior)"
    )
    assert said == ([line] if warned else [])


def test_cost_metrics_name_seconds_per_point_and_peak_memory():
    assert cost_metrics("test/iwae", Cost(seconds=3.0, peak_mib=1.5), 4) == {
        "test/iwae_seconds": 3.0,
        "test/iwae_seconds_per_point": 0.75,
        "test/iwae_peak_mib": 1.5,
    }
    assert cost_metrics("a", Cost(2.0, 0.0), 0)["a_seconds_per_point"] == 2.0  # no points: per point is the whole


def test_progress_bar_has_the_total_the_label_and_redraws_at_most_twice_a_second():
    with _bar(7, "IWAE K=4", False) as bar:
        assert (bar.total, bar.desc, bar.disable, bar.mininterval) == (7, "IWAE K=4", False, 0.5)
    with _bar(7, "AIS", True) as quiet:
        assert quiet.disable is True


def test_histogram_png_overlays_one_density_histogram_of_60_bins_per_estimator(tmp_path, monkeypatch):
    made = []
    real = pyrovae.run.figures.figure
    monkeypatch.setattr(pyrovae.run.figures, "figure", lambda *size: made.append(real(*size)) or made[-1])
    estimates = {"ELBO": torch.tensor([-3.0, -1.0, -2.0]), "IWAE K=4": torch.tensor([-1.5, -0.5], dtype=torch.float64)}
    histogram_png(estimates, tmp_path / "h.png", "the title")
    (fig,) = made
    (ax,) = fig.axes
    assert tuple(fig.get_size_inches()) == (6.0, 4.0)
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("log p(x) estimate per datapoint [nats]", "density")
    assert (ax.get_title(), ax.title.get_fontsize()) == ("the title", 9)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ELBO (mean -2.00)", "IWAE K=4 (mean -1.00)"]
    assert legend.get_texts()[0].get_fontsize() == 8
    assert len(ax.containers) == 2
    for bars, values in zip(ax.containers, estimates.values()):
        assert len(bars.patches) == 60 and all(p.get_alpha() == 0.5 for p in bars.patches)
        area = sum(p.get_height() * p.get_width() for p in bars.patches)
        assert area == pytest.approx(1.0)  # a density
        left, right = bars.patches[0].get_x(), bars.patches[-1].get_x() + bars.patches[-1].get_width()
        assert (left, right) == pytest.approx((float(values.min()), float(values.max())))
    assert matplotlib.colors.to_rgba(ax.containers[0].patches[0].get_facecolor())[3] == 0.5
