"""Checkpoints and ``pyrovae resume``: an interrupted or extended run logs exactly what an
uninterrupted one does, in the same MLflow run; early stopping; damaged checkpoints."""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.infer.trainer import Callback
from pyrovae.run import checkpoint
from pyrovae.run import config as config_mod
from pyrovae.run.pipeline import train_config
from pyrovae.run.tracking import MlflowRun
from tests.conftest import TINY, tracking_store

pytestmark = pytest.mark.slow  # starts servers / trains several runs

# beta warms up over 2 epochs, so the resumed schedule position matters too
SETTINGS = [*TINY, "train.beta_start=0.2", "train.warmup_epochs=2", "mlflow.experiment=resume"]


class InterruptAfter(Callback):
    """Ctrl-C right after epoch ``epoch`` ended (its metrics logged, its checkpoint written), as
    the next one begins: a user's callbacks run before pyrovae's logger, so not in ``on_epoch_end``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_begin(self, trainer):
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its schema takes seconds)."""
    with tracking_store(tmp_path_factory.mktemp("resume")) as uri:
        yield uri


def run_config(*overrides):
    return config_mod.load(None, [*SETTINGS, *overrides])


def histories(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (step, value) history, except timings and system metrics."""
    client = MlflowClient(uri)
    keys = [k for k in client.get_run(run_id).data.metrics if not k.endswith("seconds") and not k.startswith("system/")]
    return {
        k: [
            (m.step, m.value) for m in sorted(client.get_metric_history(run_id, k), key=lambda m: (m.step, m.timestamp))
        ]
        for k in keys
    }


def error_line(capsys) -> str:
    """The CLI's error line (MLflow's own INFO logging may precede it on stderr)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pyrovae: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def resume(run_id: str, *overrides: str) -> int:
    args = ["resume", run_id, "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    return main(args)


@pytest.fixture(scope="module")
def uninterrupted_run(store):
    """A 3-epoch run that nobody stopped: its id and its metric histories."""
    run_id = train_config(run_config("train.epochs=3"), progress=False).run_id
    return run_id, histories(store, run_id)


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return uninterrupted_run[1]


def test_resume_after_an_interrupt_equals_the_uninterrupted_run(store, uninterrupted):
    with pytest.raises(KeyboardInterrupt):
        train_config(run_config("train.epochs=3"), progress=False, callbacks=(InterruptAfter(1),))
    client = MlflowClient(store)
    (killed,) = client.search_runs(
        [client.get_experiment_by_name("resume").experiment_id], "attributes.status = 'KILLED'"
    )
    run_id = killed.info.run_id
    assert [s for s, _ in histories(store, run_id)["val/loss"]] == [1]

    assert resume(run_id) == 0
    assert client.get_run(run_id).info.status == "FINISHED"
    resumed = histories(store, run_id)
    assert set(resumed) == set(uninterrupted) and "test/loss" in resumed
    for key, history in uninterrupted.items():
        assert resumed[key] == history, key  # same steps, none twice, same values (CPU: exact)
    assert [s for s, _ in resumed["train/beta"]] == [1, 2, 3]


def test_extending_a_finished_run_continues_it_and_a_finished_run_says_so(store, uninterrupted, capsys):
    run_id = train_config(run_config("train.epochs=2"), progress=False).run_id
    assert resume(run_id) == 2
    assert error_line(capsys) == (
        f"pyrovae: error: run '{run_id}' already finished its 2 epochs; to train longer: "
        f"pyrovae resume {run_id} --set train.epochs=N (N > 2)"
    )

    assert resume(run_id, "train.epochs=3") == 0
    extended = histories(store, run_id)
    for key, history in uninterrupted.items():
        if key.startswith(("train/", "val/")):
            assert extended[key] == history, key
    # test/ metrics were logged when the run first finished (step 2) and again at its new end
    assert [s for s, _ in extended["test/loss"]] == [2, 3]
    assert extended["test/loss"][-1] == uninterrupted["test/loss"][-1]
    mlflow.set_tracking_uri(store)
    config_text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.toml")
    assert tomllib.loads(config_text)["train"]["epochs"] == 3


def test_early_stopping_stops_when_val_loss_stops_improving(store, capsys):
    # lr = 1e-30 moves no float32 weight, so val/loss (fixed evaluation seed) never improves again
    run_id = train_config(run_config("train.epochs=5", "train.lr=1e-30", "train.patience=1"), progress=False).run_id
    history = histories(store, run_id)
    assert [s for s, _ in history["val/loss"]] == [1, 2]
    assert history["val/loss"][0][1] == history["val/loss"][1][1]
    assert [s for s, _ in history["test/loss"]] == [2]  # the run still finishes: test metrics, model
    assert resume(run_id) == 2
    assert "stopped early at epoch 2" in error_line(capsys)


def test_a_damaged_checkpoint_falls_back_to_the_other_slot_and_two_are_one_line(
    store, uninterrupted_run, capsys, caplog
):
    run_id = uninterrupted_run[0]
    artifacts = Path(urlparse(MlflowClient(store).get_run(run_id).info.artifact_uri).path)
    run = MlflowRun(run_id, store)
    states = {slot: checkpoint.load(artifacts / "checkpoints" / f"{slot}.pt") for slot in checkpoint.slots("last")}
    newest, other = sorted(states, key=lambda slot: (states[slot]["step"], states[slot]["finished"]), reverse=True)
    assert states[newest]["finished"] and not states[other]["finished"]  # the end, and the epoch before it
    assert checkpoint.newest(run, "last")[1] == newest

    def truncate(slot):  # as by a full disk or a killed copy
        path = artifacts / "checkpoints" / f"{slot}.pt"
        path.write_bytes(path.read_bytes()[:1000])

    truncate(newest)
    state, slot = checkpoint.newest(run, "last")
    assert slot == other and state["step"] == states[other]["step"]
    assert f"checkpoints/{newest}.pt is damaged" in caplog.text and f"using checkpoints/{other}.pt" in caplog.text

    truncate(other)
    assert resume(run_id, "train.epochs=4") == 2
    line = error_line(capsys)
    assert line.startswith("pyrovae: error: checkpoints/last") and "is corrupt or truncated" in line
    assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"  # untouched

    assert resume(run_id, "model.latent_dim=5") == 2
    assert "resume cannot change 'model.latent_dim'" in error_line(capsys)
