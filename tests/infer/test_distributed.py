"""Training on several processes: real torchrun launches of ``pyrovae`` with 2 CPU ranks (gloo).

One model on two processes gives one MLflow run like a single-process run; DDP's gradient is the
gradient of the global batch; a SIGTERM to the launcher checkpoints every rank at the same step
and a resume continues bit for bit; a NaN on one rank stops both; a worker that dies is
restarted by ``--max-restarts`` into the same run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.processes import HERE, Store, overrides, torchrun

pytestmark = pytest.mark.slow  # every test launches torchrun


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs of the same settings: on 2 ranks under torchrun, and in one process."""
    s = Store(tmp_path_factory.mktemp("ddp"))
    two = s.run(torchrun("-m", "pyrovae", "train", "--no-progress", *overrides("mlflow.run_name=two-ranks")))
    assert two.returncode == 0, two.stderr[-3000:]
    one = s.run([sys.executable, "-m", "pyrovae", "train", "--no-progress", *overrides("mlflow.run_name=one-process")])
    assert one.returncode == 0, one.stderr[-3000:]
    return s


def test_ddp_gradient_is_the_global_batch_gradient_and_ranks_stay_equal(tmp_path):
    done = subprocess.run(
        torchrun(str(HERE / "ddp_gradient.py"), str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world_size"] == 2 and result["backend"] == "gloo"
        assert result["gradient_relative_difference"] < 1e-6
        assert result["parameters_equal_across_ranks"]


def test_the_trainer_s_own_steps_on_two_ranks_equal_one_process_for_every_objective(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    for command in (
        torchrun(str(HERE / "ddp_trainer.py"), str(tmp_path)),
        [sys.executable, str(HERE / "ddp_trainer.py"), str(tmp_path)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    two, one = (torch.load(tmp_path / f"world-{w}.pt") for w in (2, 1))
    assert "train.free_bits floors the KL's batch mean" in two.pop("free_bits")["refused"]  # one process only
    one.pop("free_bits")
    for objective in one:
        assert two[objective]["losses"] == pytest.approx(one[objective]["losses"], rel=1e-5), objective
        for name, value in one[objective]["params"].items():
            torch.testing.assert_close(two[objective]["params"][name], value, rtol=1e-4, atol=1e-6, msg=objective)
    moved = [(one[o]["params"][n] - one["trace"]["params"][n]).abs().max() for o in one for n in one[o]["params"]]
    assert max(moved) > 1e-4  # the objectives train differently: each comparison means something


def test_two_ranks_make_one_run_like_a_single_process_run(store):
    two, one = store.named("two-ranks"), store.named("one-process")
    assert two.info.status == "FINISHED"
    assert {k: v for k, v in two.data.params.items() if k != "mlflow.run_name"} == {
        k: v for k, v in one.data.params.items() if k != "mlflow.run_name"
    }
    ours = lambda run: {k for k in run.data.metrics if not k.startswith("system/")}  # noqa: E731
    assert ours(two) == ours(one)
    assert [step for step, _ in store.history(two.info.run_id, "val/loss")] == [1, 2, 3]  # rank 0 alone logs
    assert two.data.tags["distributed.world_size"] == "2" and two.data.tags["distributed.backend"] == "gloo"
    assert one.data.tags["distributed.world_size"] == "1"
    artifacts = lambda run: {a.path for a in store.client.list_artifacts(run.info.run_id)}  # noqa: E731
    assert artifacts(two) == artifacts(one)
    # the global mean over both ranks' rows: close to the single process's (other noise, same data)
    for (_, a), (_, b) in zip(
        store.history(two.info.run_id, "train/loss"), store.history(one.info.run_id, "train/loss")
    ):
        assert abs(a - b) < 0.05 * b


def test_sigterm_checkpoints_every_rank_and_a_two_rank_resume_continues_bit_for_bit(store):
    launcher = subprocess.Popen(
        torchrun("-m", "pyrovae", "train", "--no-progress", *overrides("mlflow.run_name=interrupted")),
        cwd=store.folder,
        env=store.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    run_id = None
    while time.monotonic() < deadline and run_id is None:
        time.sleep(0.2)
        try:
            run = store.named("interrupted")
            run_id = run.info.run_id if store.history(run.info.run_id, "val/loss") else None
        except (ValueError, AttributeError, Exception):
            continue
    assert run_id, "the run never finished an epoch"
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert err.count("stopped by SIGTERM") == 2, err[-3000:]  # both ranks, after the same step
    assert store.client.get_run(run_id).info.status == "KILLED"

    resumed = store.run(torchrun("-m", "pyrovae", "resume", run_id, "--no-progress"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = store.named("two-ranks").info.run_id
    for key in ("train/loss", "val/loss", "test/loss"):
        got = dict(store.history(run_id, key))  # an epoch logged twice keeps its last value
        assert got == dict(store.history(reference, key)), key

    # at another world size the run goes on, and says that its random streams start anew
    longer = store.run([sys.executable, "-m", "pyrovae", "resume", run_id, "--no-progress", "--set", "train.epochs=4"])
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "trained on 2 process(es), resumed on 1: random streams reseeded" in longer.stderr
    assert [step for step, _ in store.history(run_id, "val/loss")][-1] == 4


def test_a_nan_on_one_rank_stops_both_at_the_same_step(store):
    faulty = 'model.likelihood={name="faulty:NaNAfterSteps", hidden=[16], nan_at_step=10, only_rank=1}'
    done = store.run(
        torchrun("-m", "pyrovae", "train", "--no-progress", *overrides("mlflow.run_name=nan-on-rank-1", faulty))
    )
    assert done.returncode != 0
    line = "the loss became nan at epoch 2, batch 3"  # step 10, 8 steps an epoch
    assert done.stderr.count(line) == 2, done.stderr[-3000:]  # rank 0 reports it too: the sum is NaN
    run = store.named("nan-on-rank-1")
    assert run.info.status == "FAILED" and "epoch 2, batch 3" in run.data.tags["pyrovae.error"]


def test_a_dead_worker_is_restarted_into_the_same_run(store):
    crash = 'model.likelihood={name="faulty:CrashOnFirstAttempt", hidden=[16], crash_at_step=10}'
    done = store.run(
        torchrun(
            "-m",
            "pyrovae",
            "train",
            "--no-progress",
            *overrides("mlflow.run_name=restarted", "train.epochs=2", crash),
            restarts=2,
        )
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exitcode: 3" in done.stderr  # rank 1 died at step 10 (epoch 2) of the first attempt
    run = store.named("restarted")  # one run, not two
    assert run.info.status == "FINISHED"
    assert sorted({step for step, _ in store.history(run.info.run_id, "val/loss")}) == [1, 2]


def test_early_stopping_is_decided_alike_on_every_rank(store):
    """val/loss is computed identically on both ranks, so both stop after the same epoch (a rank
    that went on alone would wait in its next collective until the job timed out)."""
    done = store.run(
        torchrun(
            "-m",
            "pyrovae",
            "train",
            "--no-progress",
            *overrides("mlflow.run_name=patience", "train.epochs=6", "train.lr=1e-30", "train.patience=1"),
        ),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = store.named("patience")
    assert run.info.status == "FINISHED"
    assert [step for step, _ in store.history(run.info.run_id, "val/loss")] == [1, 2]
