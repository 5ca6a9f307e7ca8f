"""Faults across processes and disks, with real processes: a torchrun worker SIGKILLed (each rank in
turn), a global batch smaller than the processes, a store's disk filling up during checkpoint
writing. Each ends in one line, a non-zero exit and a run that is not RUNNING, and resume continues."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyrovae.run import checkpoint
from pyrovae.run.tracking import MlflowRun
from tests.processes import Store, overrides, torchrun, wait_for, workers

pytestmark = pytest.mark.slow  # real processes


def pyrovae(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyrovae", *args]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pyrovae: error:")]


LONG = ("data.subset=2000", "train.epochs=300")  # trains until killed


def logged(store: Store, epochs: int):
    """The run once it logged ``epochs`` epochs (so the checkpoint of the one before is written)."""
    run = store.first_run()
    return run if run and len(store.history(run.info.run_id, "val/loss")) >= epochs else None


def resume_one_more_epoch(store: Store, run_id: str) -> None:
    """``pyrovae resume`` (one process) continues the run to one epoch past its last checkpoint."""
    last = checkpoint.download(MlflowRun(run_id, store.uri), "last")["epoch"]
    done = store.run(pyrovae("resume", run_id, "--no-progress", "--set", f"train.epochs={last + 1}"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert store.client.get_run(run_id).info.status == "FINISHED"
    assert [step for step, _ in store.history(run_id, "val/loss")][-1] == last + 1


def test_a_single_process_killed_with_sigkill_is_ended_killed_by_resume_which_continues(tmp_path):
    store = Store(tmp_path)
    trainer = subprocess.Popen(pyrovae("train", "--no-progress", *overrides(*LONG)), cwd=tmp_path, env=store.env)
    run_id = wait_for(lambda: logged(store, 2)).info.run_id
    trainer.kill()  # SIGKILL: nothing of ours runs, the run stays RUNNING
    trainer.wait(timeout=30)
    assert store.client.get_run(run_id).info.status == "RUNNING"

    last = checkpoint.download(MlflowRun(run_id, store.uri), "last")["epoch"]
    done = store.run(pyrovae("resume", run_id, "--no-progress", "--set", f"train.epochs={last + 1}"))
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if "was left RUNNING" in line]  # one line, not two
    assert f"run '{run_id}' was left RUNNING: its process {trainer.pid}" in line and "continuing from" in line
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED" and f"its process {trainer.pid}" in run.data.tags["pyrovae.stale"]
    assert [step for step, _ in store.history(run_id, "val/loss")][-1] == last + 1


@pytest.mark.parametrize("victim", [0, 1])
def test_a_worker_killed_with_sigkill_ends_the_run_and_resume_continues(tmp_path, victim):
    store = Store(tmp_path)
    launcher = subprocess.Popen(
        torchrun("-m", "pyrovae", "train", "--no-progress", *overrides(*LONG)),
        cwd=tmp_path,
        env=store.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = wait_for(lambda: logged(store, 2)).info.run_id
    workers(launcher)[victim].kill()
    _, stderr = launcher.communicate(timeout=120)

    assert launcher.returncode != 0
    survivor = 1 - victim
    (line,) = errors(stderr)  # the survivor's one line, no traceback of ours
    assert line.startswith(f"pyrovae: error: rank {survivor} of 2 lost contact with rank {victim}")
    assert f"pyrovae resume {run_id}" in line
    assert "[rank0]: Traceback" not in stderr and "[rank1]: Traceback" not in stderr
    run = store.client.get_run(run_id)
    if victim == 0:  # rank 0 logged the run and is gone: rank 1 ended it
        assert run.info.status == "KILLED"
        assert "rank 1 of 2 lost contact with rank 0" in run.data.tags["pyrovae.stale"]
        assert "rank 0, which logs this run, was lost" in run.data.tags["pyrovae.stale"]
    else:  # rank 0 saw rank 1 go
        assert run.info.status == "FAILED"
        assert "rank 0 of 2 lost contact with rank 1" in run.data.tags["pyrovae.error"]
    resume_one_more_epoch(store, run_id)


def test_a_global_batch_smaller_than_the_processes_is_one_line_on_every_rank_and_no_run(tmp_path):
    store = Store(tmp_path)
    done = store.run(torchrun("-m", "pyrovae", "train", "--no-progress", *overrides("train.batch_size=1")))
    assert done.returncode != 0
    lines = errors(done.stderr)
    assert len(lines) == 2 and lines[0] == lines[1]  # every rank, the same line
    assert "train.batch_size = 1 cannot give each of the 2 processes" in lines[0]
    assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr
    assert store.client.get_experiment_by_name("ddp") is None  # refused before any run was created


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs where the store keeps its artifacts (the database stays on the big disk)."""
    artifacts = tmp_path / "mlruns" / "artifacts"
    artifacts.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(artifacts)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    try:
        yield artifacts
    finally:
        subprocess.run(["umount", "-l", str(artifacts)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Write a file in ``folder`` until about ``leave`` bytes of its file system are free."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    try:
        with open(filler, "wb") as f:
            f.write(b"\0" * max(free - leave, 0))
    except OSError:  # the training's own write took the last bytes first: full all the same
        pass
    return filler


def test_a_full_disk_during_checkpoint_writing_is_one_line_and_resume_continues(small_disk):
    store = Store(small_disk.parent.parent)
    train = pyrovae("train", "--no-progress", *overrides(*LONG, "mlflow.images_every=0", "model.guide.hidden=[64]"))
    process = subprocess.Popen(train, cwd=store.folder, env=store.env, stderr=subprocess.PIPE, text=True)
    run = wait_for(lambda: logged(store, 2))
    checkpoints = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints"
    size = (checkpoints / "last.pt").stat().st_size
    filler = fill(small_disk, leave=size // 2)  # room for half a checkpoint: the next one is cut short
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 1
    (line,) = errors(stderr)
    run_id = run.info.run_id
    assert line.startswith("pyrovae: error: cannot write to the MLflow store (")
    assert "No space left on device" in line and str(small_disk) in line
    assert f"'pyrovae resume {run_id}' continues" in line and "last checkpoint (epoch" in line
    assert "Traceback" not in stderr
    assert store.client.get_run(run_id).info.status == "FAILED"
    whole = []
    for slot in checkpoint.slots("last"):
        try:
            whole.append(checkpoint.load(checkpoints / f"{slot}.pt")["epoch"])
        except Exception:
            pass
    kept = int(line.split("last checkpoint (epoch ")[1].split(")")[0])
    assert max(whole) == kept  # the line names the newest whole checkpoint

    filler.unlink()  # free space, then continue
    resume_one_more_epoch(store, run_id)


STUCK = """
import signal, sys, time
from mlflow.tracking import MlflowClient
from pyrovae.infer.distributed import World
from pyrovae.run import ranks
uri, rank, run_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ranks.STOP_GRACE_S = 1.0
watchdog = ranks.Watchdog(World(rank, 2, "gloo"), uri, run_id)
watchdog.arm(signal.SIGTERM)
time.sleep(60)  # a collective that never returns
"""


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_cannot_stop_in_time_ends_its_run_and_exits(tmp_path, rank):
    store = Store(tmp_path)
    experiment = store.client.create_experiment("stuck")
    run_id = store.client.create_run(experiment).info.run_id
    started = time.monotonic()
    done = store.run([sys.executable, "-c", STUCK, store.uri, str(rank), run_id], timeout=60)
    assert done.returncode == 128 + 15 and time.monotonic() - started < 30
    assert done.stderr.strip().splitlines()[-1].startswith(f"pyrovae: rank {rank} of 2 was asked to stop")
    run = store.client.get_run(run_id)
    assert run.info.status == "KILLED"
    tag = run.data.tags["pyrovae.stopped" if rank == 0 else "pyrovae.stale"]
    assert f"rank {rank} of 2 was asked to stop (signal 15) and could not within 1 s" in tag
