"""Faults during training: signals stop after a step with a resumable checkpoint, NaN ends the run
FAILED keeping the last good checkpoint, a killed process is resumed from its last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.infer.callbacks import Callback
from pyrovae.infer.faults import Interrupted, StopOnSignals
from pyrovae.infer.trainer import Trainer
from pyrovae.run import checkpoint, config
from pyrovae.run.pipeline import prepare
from pyrovae.run.tracking import MlflowRun
from tests.processes import wait_for

SMALL = [
    "data.name=synthetic",
    "data.subset=300",
    "train.batch_size=20",
    "model.latent_dim=3",
    "model.guide.hidden=[16]",
    "model.likelihood.hidden=[16]",
    "validation.batch_size=300",
    "train.beta_start=0.3",
    "train.warmup_epochs=1.5",
]


class KeepInterruptState(Callback):
    def __init__(self):
        self.state = None

    def on_interrupt(self, trainer):
        self.state = checkpoint.capture(trainer)


def trainer_for(cfg, callbacks=()):
    vae, splits = prepare(cfg)
    return Trainer(
        vae, splits, settings=cfg["train"], validation=cfg["validation"], callbacks=callbacks, progress=False
    )


def without_timings(history):
    return [{k: v for k, v in m.items() if not k.endswith("seconds")} for m in history]


def test_sigint_mid_epoch_then_resume_equals_an_uninterrupted_run():
    cfg = config.load(None, [*SMALL, "train.epochs=3"])
    reference = trainer_for(cfg)
    reference_test = reference.fit()

    keeper = KeepInterruptState()
    stopped = trainer_for(cfg, [keeper])
    step, calls = stopped._step, {"n": 0}

    def step_then_signal(*args, **kwargs):  # a real SIGINT, delivered during step 22 (epoch 2)
        calls["n"] += 1
        if calls["n"] == 22:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    stopped._step = step_then_signal
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under `nohup cmd &`
    with pytest.raises(Interrupted) as err, StopOnSignals(stopped.request_stop):  # as pyrovae.train does
        stopped.fit()
    assert (err.value.epoch, err.value.batch, err.value.exit_code) == (2, 7, 130)
    state = keeper.state
    assert state["epoch"] == 1 and state["step"] == 22 and state["mid_epoch"]["batch"] == 7
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored

    resumed = trainer_for(cfg)
    resumed.load_state_dict(state)
    resumed_test = resumed.fit()
    assert without_timings(resumed.history) == without_timings(reference.history)
    assert resumed_test == reference_test
    for a, b in zip(resumed.vae.parameters(), reference.vae.parameters()):
        assert torch.equal(a, b)


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(store, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))  # tests/faulty.py
    faulty = ['model.likelihood={name="faulty:NaNAfterSteps", hidden=[16], nan_at_step=20}']  # batch 6 of epoch 2
    args = ["train", "--no-progress"]
    for item in [*SMALL, "train.epochs=3", *faulty]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "pyrovae: error: the loss became nan at epoch 2, batch 6; training stopped and the last "
        "good checkpoint (epoch 1) is kept; try a lower train.lr or a longer KL warm-up"
    )
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("pyrovae").experiment_id])
    assert run.info.status == "FAILED" and "epoch 2, batch 6" in run.data.tags["pyrovae.error"]
    state = checkpoint.download(MlflowRun(run.info.run_id), "last")
    assert state["epoch"] == 1 and state["mid_epoch"] is None
    assert all(torch.isfinite(v).all() for v in state["module"].values())


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_a_real_process(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    base = [sys.executable, "-m", "pyrovae"]
    train = [*base, "train", "--no-progress"]
    for item in [*SMALL, "train.epochs=200", "data.subset=1000"]:
        train += ["--set", item]
    client = MlflowClient(uri)

    def epochs_logged(run_id):
        return [m.step for m in client.get_metric_history(run_id, "val/loss")]

    def the_run():
        if not (tmp_path / "mlruns" / "mlflow.db").exists():
            return None
        exp = client.get_experiment_by_name("pyrovae")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        return runs[0].info.run_id if runs and epochs_logged(runs[0].info.run_id) else None

    proc = subprocess.Popen(train, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    run_id = wait_for(the_run)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err
    assert client.get_run(run_id).info.status == "KILLED"
    state = checkpoint.download(MlflowRun(run_id), "last")
    stopped_at = state["epoch"]
    assert stopped_at >= 1 and epochs_logged(run_id) == list(range(1, stopped_at + 1))

    resume = subprocess.Popen(
        [*base, "resume", run_id, "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    wait_for(lambda: len(epochs_logged(run_id)) >= stopped_at + 2)
    resume.kill()  # SIGKILL: nothing gets to end the run
    out, _ = resume.communicate(timeout=60)
    assert "resuming KILLED run" in out
    assert client.get_run(run_id).info.status == "RUNNING"

    killed_at = checkpoint.download(MlflowRun(run_id), "last")["epoch"]
    assert killed_at >= stopped_at + 1
    capsys.readouterr()
    assert main(["compare"]) == 0  # the next command that reads the run ends it: its process is gone
    assert f"run '{run_id}' was left RUNNING (its process {resume.pid} " in capsys.readouterr().err
    assert client.get_run(run_id).info.status == "KILLED"
    assert main(["resume", run_id, "--no-progress", "--set", f"train.epochs={killed_at + 1}"]) == 0
    mlflow.set_tracking_uri(None)
    assert f"resuming KILLED run '{run_id}'" in capsys.readouterr().out
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = epochs_logged(run_id)
    # every epoch once; only an epoch whose metrics were logged just before the kill, and
    # before its checkpoint, can appear twice (it is redone from the checkpoint)
    assert sorted(set(steps)) == list(range(1, killed_at + 2)) and len(steps) - len(set(steps)) <= 1
