"""Checkpoints by value (pyrovae/run/checkpoint.py): the format-2 state, the format 1 -> 2 upgrade
of the run pyrovae 0.1 logged (``tests/fixtures/legacy_run_format1``), the atomic write and the
one-line errors of a damaged file, the two slots and which one :func:`newest` reads, and what the
:class:`Checkpointer` writes at each hook.

Fast on purpose (mutmut reruns it per mutant): a tiny CVAE on 120 synthetic images, hooks called
directly, and one sqlite MLflow store for the module."""

from __future__ import annotations

import copy
import io
import logging
import tempfile
from pathlib import Path

import mlflow.pytorch
import pyro
import pytest
import torch

from pyrovae import UserError, load_data
from pyrovae.infer.trainer import Trainer
from pyrovae.model.models import build_model
from pyrovae.model.vae import VAE
from pyrovae.run import checkpoint
from pyrovae.run.tracking import MlflowRun
from tests.conftest import tracking_store

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run_format1"
# a model that needs the data's num_classes to be built again (the best_model's rebuild must get it)
CVAE = {"name": "cvae", "latent_dim": 2, "guide": {"name": "diagonal_normal", "hidden": [8]},
        "likelihood": {"name": "bernoulli", "hidden": [8]}}  # fmt: skip
WHOLE = ("epoch", "step", "best_val_loss", "best_epoch", "bad_epochs", "stopped_early", "history", "module", "rng")


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", subset=120)


@pytest.fixture(scope="module")
def fresh_trainer(data):
    pyro.set_rng_seed(0)
    vae = build_model(CVAE, data.data_shape, data.num_classes)
    # eager: each test deep-copies the trainer, and a traced graph (train.jit) cannot be copied
    return Trainer(vae, data, callbacks=[], progress=False, epochs=4, batch_size=40, optimizer="torch.optim.SGD",
                   lr=0.002, seed=7, checkpoint_every=2, jit=False)  # fmt: skip


@pytest.fixture
def trainer(fresh_trainer):
    """A trainer of its own per test (its counters and weights are set by hand)."""
    return copy.deepcopy(fresh_trainer)


@pytest.fixture(scope="module")
def legacy_trainer(data):
    """A trainer of the legacy run's model (the fixture's config.toml) and optimizer (Adam, lr 1e-3)."""
    vae = VAE(latent_dim=3, guide={"name": "diagonal_normal", "hidden": [16]},
              likelihood={"name": "bernoulli", "hidden": [16]}, data_shape=data.data_shape)  # fmt: skip
    return Trainer(vae, data, callbacks=[], progress=False, epochs=3, batch_size=50, lr=0.001, seed=0, jit=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with tracking_store(tmp_path_factory.mktemp("checkpoints")) as uri:
        yield uri


@pytest.fixture
def run(store):
    return MlflowRun.create(store, "checkpoints", run_name="checkpoint-test")


def state(step: int, finished: bool = False, epoch: int | None = None) -> dict:
    """A small format-2 state: what newest() and the slots look at, and a tensor."""
    return {"format": 2, "finished": finished, "epoch": step // 3 if epoch is None else epoch, "step": step,
            "module": {"w": torch.full((2,), float(step))}}  # fmt: skip


def artifacts(run) -> list[str]:
    return sorted(f.path for f in run.client.list_artifacts(run.run_id, "checkpoints"))


def logged(run, slot: str) -> dict:
    return checkpoint.load(run.download(f"checkpoints/{slot}.pt"))


def same(a, b) -> bool:
    """Equal plain data, tensors compared exactly."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def damage(run, slot: str) -> None:
    """An empty checkpoints/<slot>.pt, as a write cut short by a full disk leaves it."""
    with tempfile.TemporaryDirectory() as folder:
        empty = Path(folder) / f"{slot}.pt"
        empty.write_bytes(b"")
        run.log_artifact(empty, "checkpoints")


# -- the state and the upgrade ---------------------------------------------------------------------


def test_capture_is_format_2_unfinished_unless_told_with_the_trainers_whole_state(trainer):
    trainer.epoch, trainer.step = 3, 9
    captured = checkpoint.capture(trainer)
    assert list(captured)[:2] == ["format", "finished"]
    assert captured["format"] == 2 and captured["finished"] is False
    assert same({k: v for k, v in captured.items() if k not in ("format", "finished")}, trainer.state_dict())
    assert (captured["epoch"], captured["step"]) == (3, 9)
    assert checkpoint.capture(trainer, finished=True)["finished"] is True


def test_upgrade_returns_a_format_2_state_itself(trainer):
    captured = checkpoint.capture(trainer)
    assert checkpoint.upgrade(captured, trainer) is captured


def test_the_legacy_format_1_checkpoint_upgrades_to_the_state_the_trainer_continues_from(legacy_trainer):
    raw = checkpoint.load(LEGACY / "checkpoints" / "last.pt")
    pyro_state = raw["optimizer"]
    names = [name for name, _ in legacy_trainer.vae.named_parameters()]
    assert raw["format"] == 1 and raw["partial"] is None and (raw["epoch"], raw["step"]) == (2, 8)
    assert sorted(pyro_state) == sorted(f"vae$$${name}" for name in names)

    upgraded = checkpoint.upgrade(raw, legacy_trainer)
    assert sorted(upgraded) == sorted([*WHOLE, "format", "finished", "optimizer", "scheduler", "mid_epoch"])
    assert upgraded["format"] == 2 and upgraded["mid_epoch"] is None and upgraded["finished"] is True
    for key in WHOLE:
        assert upgraded[key] is raw[key], key
    optimizer = upgraded["optimizer"]
    assert optimizer["param_groups"] == legacy_trainer.optimizer.state_dict()["param_groups"]
    assert sorted(optimizer["state"]) == list(range(len(names)))  # each parameter by its index
    for i, name in enumerate(names):
        assert same(optimizer["state"][i], pyro_state[f"vae$$${name}"]["state"][0]), name
    assert optimizer["state"][0]["step"].item() == 8.0  # Adam's own count of the run's 8 steps
    assert upgraded["scheduler"] == {**legacy_trainer.scheduler.state_dict(), "last_epoch": 8, "_step_count": 9}
    # the state read from the file is left as it was
    assert raw["format"] == 1 and raw["optimizer"] is pyro_state and "partial" in raw and "scheduler" not in raw

    resumed = copy.deepcopy(legacy_trainer)
    resumed.load_state_dict(upgraded)
    assert (resumed.epoch, resumed.step, resumed.best.best_epoch, resumed.scheduler.last_epoch) == (2, 8, 2, 8)
    first = resumed.optimizer.state[next(resumed.vae.parameters())]
    assert torch.equal(first["exp_avg"], pyro_state[f"vae$$${names[0]}"]["state"][0]["exp_avg"])


def test_upgrade_keeps_the_mid_epoch_position_and_leaves_out_parameters_format_1_never_stepped(legacy_trainer):
    raw = checkpoint.load(LEGACY / "checkpoints" / "last.pt")
    names = [name for name, _ in legacy_trainer.vae.named_parameters()]
    per_param = dict(raw["optimizer"])
    del per_param[f"vae$$${names[1]}"]  # no entry at all
    per_param[f"vae$$${names[2]}"] = {**per_param[f"vae$$${names[2]}"], "state": {}}  # an entry never stepped
    position = {"batch": 2, "loss_sum": 201.5, "n": 100}
    upgraded = checkpoint.upgrade({**raw, "optimizer": per_param, "partial": position, "step": 5}, legacy_trainer)
    assert upgraded["mid_epoch"] == position and "partial" not in upgraded
    assert sorted(upgraded["optimizer"]["state"]) == [0, *range(3, len(names))]
    assert (upgraded["scheduler"]["last_epoch"], upgraded["scheduler"]["_step_count"]) == (5, 6)

    without = {k: v for k, v in raw.items() if k != "partial"}  # a state older than the key
    assert checkpoint.upgrade(without, legacy_trainer)["mid_epoch"] is None


# -- the file --------------------------------------------------------------------------------------


def test_save_writes_into_new_folders_returns_the_path_and_replaces_an_older_file(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    written = checkpoint.save(state(3), str(path))
    assert written == path and isinstance(written, Path)
    assert same(torch.load(path, weights_only=True), state(3))
    assert checkpoint.save(state(6), path) == path  # the folder exists now
    assert same(torch.load(path, weights_only=True), state(6))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # the temporary file became it


def test_a_save_that_fails_leaves_the_older_file_whole_and_its_temporary_file_beside_it(tmp_path):
    path = checkpoint.save(state(3), tmp_path / "last.pt")
    with pytest.raises(Exception, match="pickle"):
        checkpoint.save({**state(6), "callback": lambda: None}, path)  # cannot be pickled
    assert same(checkpoint.load(path), state(3))
    (left,) = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert left.endswith(".tmp")


def test_load_reads_formats_1_and_2_into_the_saved_dict(tmp_path):
    for fmt in (1, 2):
        saved = {**state(4), "format": fmt}
        assert same(checkpoint.load(checkpoint.save(saved, tmp_path / f"f{fmt}.pt")), saved)


def test_an_empty_file_is_one_line_naming_what_was_read(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "empty.pt")
    assert str(err.value) == (
        "checkpoint is corrupt or truncated (EOFError); resume from another checkpoint or train again"
    )
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "empty.pt", "checkpoints/best.pt of run 'abc'")
    assert str(err.value).startswith("checkpoints/best.pt of run 'abc' is corrupt or truncated (EOFError); ")


def torch_error(path) -> str:
    """The first line of torch's own error reading ``path`` with ``weights_only=True``."""
    with pytest.raises(Exception) as raw:
        torch.load(path, weights_only=True)
    return str(raw.value).strip().splitlines()[0]


def test_random_bytes_are_one_line_with_the_first_200_characters_of_torchs_error(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(b"not a checkpoint at all")
    reason = torch_error(path)
    assert len(reason) > 200
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == (
        f"checkpoint is corrupt or truncated ({reason[:200]}); resume from another checkpoint or train again"
    )


class Code:
    """An object whose unpickling would import and run code."""


def test_a_file_that_would_run_code_is_refused_unread(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({**state(3), "hook": Code()}, path)
    reason = torch_error(path)
    assert reason.startswith("Weights only load failed.") and len(reason) <= 200
    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    assert str(err.value) == (
        f"checkpoint is corrupt or truncated ({reason}); resume from another checkpoint or train again"
    )


def test_a_file_that_would_run_code_is_refused_even_where_torch_is_told_to_unpickle_anything(tmp_path, monkeypatch):
    """The variable lets torch run pickled code where a caller leaves ``weights_only`` unset; the
    checkpoint promise (no code from the file ever runs) holds all the same."""
    path = tmp_path / "code.pt"
    torch.save({**state(3), "hook": Code()}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert isinstance(torch.load(path)["hook"], Code)  # what an unset weights_only does now
    with pytest.raises(UserError, match=r"^checkpoint is corrupt or truncated \(Weights only load failed\. "):
        checkpoint.load(path)


def test_a_checkpoint_whose_tensors_were_saved_on_a_gpu_loads_onto_the_cpu(tmp_path):
    """A file whose tensor storage is tagged ``cuda:0`` (torch's legacy format, the tag rewritten
    by hand: the same bytes a GPU machine writes) loads here, on the CPU, whatever devices exist."""
    buffer = io.BytesIO()
    torch.save({**state(3), "w": torch.arange(3.0)}, buffer, _use_new_zipfile_serialization=False)
    on_cpu = buffer.getvalue()
    assert on_cpu.count(b"X\x03\x00\x00\x00cpu") == 1  # the storage's location, a pickled string
    path = tmp_path / "gpu.pt"
    path.write_bytes(on_cpu.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))
    loaded = checkpoint.load(path)
    assert loaded["w"].device == torch.device("cpu") and loaded["w"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "content, found", [({**state(3), "format": 3}, "3"), ({"step": 3}, "None"), ([state(3)], "None"), (None, "None")]
)
def test_a_file_of_another_format_is_one_line_saying_which_formats_are_read(tmp_path, content, found):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(UserError) as err:
        checkpoint.load(path, "checkpoints/last.pt")
    assert str(err.value) == (
        f"checkpoints/last.pt is not a pyrovae checkpoint this version reads (format {found}; reads 1, 2); "
        f"train again, or use the pyrovae that wrote it"
    )


# -- the slots of a run ----------------------------------------------------------------------------


def test_slots_are_name_and_name_b():
    assert checkpoint.slots("last") == ("last", "last-b")
    assert checkpoint.slots("best") == ("best", "best-b")


def test_log_puts_the_state_at_checkpoints_slot_pt_of_the_run(run):
    checkpoint.log(run, state(6), "best-b")
    assert artifacts(run) == ["checkpoints/best-b.pt"]
    assert same(logged(run, "best-b"), state(6))
    checkpoint.log(run, state(9), "best-b")  # replaces it
    assert artifacts(run) == ["checkpoints/best-b.pt"]
    assert same(logged(run, "best-b"), state(9))


def test_newest_is_the_slot_with_most_steps_then_the_finished_one(run, caplog):
    caplog.set_level(logging.WARNING)
    checkpoint.log(run, state(3), "last")
    checkpoint.log(run, state(6), "last-b")
    found, slot = checkpoint.newest(run)
    assert slot == "last-b" and same(found, state(6))
    checkpoint.log(run, state(9), "last")
    assert checkpoint.newest(run, "last")[1] == "last"
    assert same(checkpoint.download(run), state(9))

    checkpoint.log(run, state(9, finished=True), "last-b")  # a tie: the finished one
    assert checkpoint.newest(run, "last")[1] == "last-b"
    checkpoint.log(run, state(9, finished=True), "last")
    checkpoint.log(run, state(9), "last-b")
    assert checkpoint.newest(run, "last")[1] == "last"
    checkpoint.log(run, state(12), "last-b")  # more steps than the finished one: an extended run
    assert checkpoint.newest(run, "last")[1] == "last-b"
    assert caplog.records == []


def test_newest_reads_a_second_slot_alone_and_best_separately(run):
    checkpoint.log(run, state(6), "last-b")
    found, slot = checkpoint.newest(run, "last")
    assert slot == "last-b" and same(found, state(6))
    with pytest.raises(UserError) as err:
        checkpoint.newest(run, "best")
    assert str(err.value) == (
        f"run '{run.run_id}' has no checkpoints/best.pt; it was trained before checkpoints existed or never "
        f"finished an epoch"
    )
    checkpoint.log(run, state(3), "best")
    assert same(checkpoint.download(run, "best"), state(3))


def test_a_run_without_checkpoints_says_so_for_last_by_default(run):
    with pytest.raises(UserError) as err:
        checkpoint.download(run)
    assert str(err.value) == (
        f"run '{run.run_id}' has no checkpoints/last.pt; it was trained before checkpoints existed or never "
        f"finished an epoch"
    )


@pytest.mark.parametrize("damaged, whole", [("last", "last-b"), ("last-b", "last")])
def test_a_damaged_slot_is_passed_over_with_one_warning(run, caplog, damaged, whole):
    caplog.set_level(logging.WARNING)
    checkpoint.log(run, state(6, epoch=2), whole)
    damage(run, damaged)
    found, slot = checkpoint.newest(run, "last")
    assert slot == whole and same(found, state(6, epoch=2))
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "pyrovae",
            logging.WARNING,
            f"checkpoints/{damaged}.pt is damaged (a write cut short?); using checkpoints/{whole}.pt (epoch 2) instead",
        )
    ]


def test_two_damaged_slots_are_the_first_ones_error_line(run):
    damage(run, "best")
    damage(run, "best-b")
    with pytest.raises(UserError) as err:
        checkpoint.newest(run, "best")
    assert str(err.value) == (
        f"checkpoints/best.pt of run '{run.run_id}' is corrupt or truncated (EOFError); "
        f"resume from another checkpoint or train again"
    )


# -- the Checkpointer ------------------------------------------------------------------------------


def test_a_new_checkpointer_writes_last_pt_first_then_the_other_slot_in_turn(run):
    writer = checkpoint.Checkpointer(run, CVAE)
    assert (writer.model_config, writer.best_module, writer.last_epoch) == (CVAE, None, 0)
    assert writer.written == {"last": "last-b", "best": "best-b"}
    for step, slot in [(3, "last"), (6, "last-b"), (9, "last")]:
        writer.log(state(step), "last")
        assert writer.written == {"last": slot, "best": "best-b"}
        assert logged(run, slot)["step"] == step
    writer.log(state(9), "best")
    assert writer.written == {"last": "last", "best": "best"}
    assert artifacts(run) == ["checkpoints/best.pt", "checkpoints/last-b.pt", "checkpoints/last.pt"]


def test_a_resumed_checkpointer_goes_on_in_the_slot_not_holding_the_newest(run):
    best = {"w": torch.ones(2)}
    writer = checkpoint.Checkpointer(run, CVAE, best_module=best, last_epoch=4, written={"last": "last"})
    assert (writer.best_module, writer.last_epoch) == (best, 4)
    assert writer.written == {"last": "last", "best": "best-b"}
    writer.log(state(15), "last")
    writer.log(state(12), "best")
    assert artifacts(run) == ["checkpoints/best.pt", "checkpoints/last-b.pt"]


def test_a_write_that_fails_is_retried_in_the_same_slot(run):
    writer = checkpoint.Checkpointer(run, CVAE)
    with pytest.raises(Exception, match="pickle"):
        writer.log({**state(3), "callback": lambda: None}, "last")
    assert writer.written["last"] == "last-b" and artifacts(run) == []
    writer.log(state(3), "last")
    assert artifacts(run) == ["checkpoints/last.pt"]


def end_epoch(writer, trainer, epoch: int, val_loss: float) -> None:
    """Epoch ``epoch`` ends with ``val_loss`` (the weights moved by one), as the trainer calls the hook."""
    with torch.no_grad():
        next(trainer.vae.parameters()).add_(1.0)
    trainer.epoch, trainer.step = epoch, 3 * epoch
    trainer.best.update(epoch, val_loss)
    writer.on_epoch_end(trainer, epoch, {"val/loss": val_loss})


def test_epoch_ends_write_best_at_each_improvement_and_last_every_checkpoint_every_epochs(run, trainer):
    writer = checkpoint.Checkpointer(run, CVAE)
    assert trainer.settings.checkpoint_every == 2

    end_epoch(writer, trainer, 1, 5.0)  # improved; not a checkpoint epoch
    assert artifacts(run) == ["checkpoints/best.pt"] and writer.last_epoch == 0
    best = logged(run, "best")
    assert (best["epoch"], best["step"], best["finished"]) == (1, 3, False)
    assert same(writer.best_module, trainer.vae.state_dict()) and same(best["module"], writer.best_module)

    end_epoch(writer, trainer, 2, 6.0)  # worse; a checkpoint epoch
    assert artifacts(run) == ["checkpoints/best.pt", "checkpoints/last.pt"] and writer.last_epoch == 2
    last = logged(run, "last")
    assert (last["epoch"], last["step"], last["finished"], last["best_epoch"]) == (2, 6, False, 1)
    assert same(writer.best_module, best["module"])  # the best stays epoch 1's
    assert not same(last["module"], best["module"])

    end_epoch(writer, trainer, 3, 5.5)  # neither
    assert artifacts(run) == ["checkpoints/best.pt", "checkpoints/last.pt"] and writer.last_epoch == 2
    assert logged(run, "last")["epoch"] == 2 and logged(run, "best")["epoch"] == 1

    end_epoch(writer, trainer, 4, 4.0)  # both: the same state in the other slot of each
    assert artifacts(run) == [f"checkpoints/{s}.pt" for s in ("best-b", "best", "last-b", "last")]
    assert writer.last_epoch == 4 and writer.written == {"last": "last-b", "best": "best-b"}
    new_best, new_last = logged(run, "best-b"), logged(run, "last-b")
    assert (new_best["epoch"], new_best["best_epoch"]) == (4, 4) and same(new_last, new_best)
    assert same(writer.best_module, trainer.vae.state_dict()) and same(new_best["module"], writer.best_module)


def test_an_interrupt_writes_exactly_that_point_to_last(run, trainer):
    writer = checkpoint.Checkpointer(run, CVAE, last_epoch=2, written={"last": "last"})
    trainer.epoch, trainer.step, trainer.mid_epoch = 2, 8, {"batch": 2, "loss_sum": 190.0, "n": 80}
    writer.on_interrupt(trainer)
    assert artifacts(run) == ["checkpoints/last-b.pt"] and writer.last_epoch == 2
    kept = logged(run, "last-b")
    assert (kept["epoch"], kept["step"], kept["finished"], kept["mid_epoch"]) == (2, 8, False, trainer.mid_epoch)


def test_the_end_writes_a_finished_last_and_the_best_epochs_weights_as_best_model(run, trainer, data):
    writer = checkpoint.Checkpointer(run, CVAE)
    end_epoch(writer, trainer, 1, 5.0)
    best_weights = copy.deepcopy(writer.best_module)
    end_epoch(writer, trainer, 2, 6.0)
    with run.lifecycle(system_metrics=False):
        writer.on_train_end(trainer, {})
    assert artifacts(run) == ["checkpoints/best.pt", "checkpoints/last-b.pt", "checkpoints/last.pt"]
    end = logged(run, "last-b")
    assert (end["epoch"], end["step"], end["finished"]) == (2, 6, True)

    (output,) = run.client.get_run(run.run_id).outputs.model_outputs
    assert output.step == 1  # the best epoch, not the last
    model = run.client.get_logged_model(output.model_id)
    assert (model.name, model.source_run_id) == ("best_model", run.run_id)
    loaded = mlflow.pytorch.load_model(model.artifact_location)  # our own pickle: safe to load
    assert type(loaded).__name__ == "ConditionalVAE" and loaded.num_classes == data.num_classes == 4
    assert same(loaded.state_dict(), best_weights) and not same(loaded.state_dict(), trainer.vae.state_dict())


def test_the_end_without_a_best_epoch_logs_no_model(run, trainer):
    writer = checkpoint.Checkpointer(run, CVAE)
    trainer.epoch, trainer.step = 1, 3
    with run.lifecycle(system_metrics=False):
        writer.on_train_end(trainer, {})
    assert artifacts(run) == ["checkpoints/last.pt"] and logged(run, "last")["finished"] is True
    assert run.client.get_run(run.run_id).outputs.model_outputs == []
