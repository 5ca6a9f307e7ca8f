"""A run's lease (:mod:`pyrovae.run.lease`): renewed while a process holds the run; a RUNNING run whose
process is gone (on this host: at once; elsewhere: when the lease runs out) is ended KILLED by the
next command that touches it, and ``pyrovae resume`` refuses a run a live process holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from pyrovae.cli import main
from pyrovae.infer.callbacks import Callback
from pyrovae.run import lease
from pyrovae.run.config import load
from pyrovae.run.pipeline import train_config
from tests.conftest import TINY


def dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited (and been reaped)."""
    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, started


def holder(host: str, pid: int, started: float, until: float) -> str:
    return json.dumps({"host": host, "pid": pid, "started": started, "until": until})


class ReadLease(Callback):
    def __init__(self, client):
        self.client, self.seen = client, []

    def on_epoch_end(self, trainer, epoch, metrics):
        run = self.client.search_runs([self.client.get_experiment_by_name("lease").experiment_id])[0]
        self.seen.append(lease.Holder.parse(run.data.tags[lease.LEASE_TAG]))


def test_a_training_run_holds_a_lease_of_its_process_that_renews(store):
    reader = ReadLease(MlflowClient(store))
    train_config(load(None, [*TINY, "train.epochs=2", "mlflow.experiment=lease"]), progress=False, callbacks=[reader])
    now = time.time()
    for seen in reader.seen:
        assert (seen.host, seen.pid) == (socket.gethostname(), os.getpid())
        assert now - 60 < seen.until - lease.LEASE_S <= now  # taken or renewed during this training
    client = MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("lease").experiment_id])[0]
    assert run.info.status == "FINISHED" and lease.stale_reason(run) == ""  # ended: never stale

    renewed = []
    with lease.Lease(client, run.info.run_id, every=0.05):
        for _ in range(2):
            time.sleep(0.3)
            renewed.append(lease.Holder.parse(client.get_run(run.info.run_id).data.tags[lease.LEASE_TAG]).until)
    assert renewed[1] > renewed[0]


def test_compare_ends_the_runs_whose_process_is_gone_and_leaves_the_others(store, capsys):
    client = MlflowClient(store)
    experiment = client.create_experiment("stale")
    now, (pid, started) = time.time(), dead_pid()
    me = lease.Holder.this_process()
    leases = {
        "expired-elsewhere": holder("elsewhere", 4242, now - 500, now - 30),
        "live-elsewhere": holder("elsewhere", 4242, now - 500, now + 300),
        "dead-here": holder(socket.gethostname(), pid, started, now + 300),
        "live-here": holder(me.host, me.pid, me.started, now + 300),
        "no-lease": None,
    }
    ids = {}
    for name, text in leases.items():
        run = client.create_run(experiment, run_name=name, tags={lease.LEASE_TAG: text} if text else {})
        client.log_metric(run.info.run_id, "val/loss", 1.0, step=1)
        ids[name] = run.info.run_id

    assert main(["compare", "--experiment", "stale", "--metric", "val/loss"]) == 0
    out, err = capsys.readouterr()
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "expired-elsewhere": "KILLED",
        "live-elsewhere": "RUNNING",
        "dead-here": "KILLED",
        "live-here": "RUNNING",
        "no-lease": "RUNNING",  # nothing says whether it is alive
    }
    stale = client.get_run(ids["expired-elsewhere"]).data.tags[lease.STALE_TAG]
    assert "process 4242 on elsewhere stopped renewing its lease" in stale
    assert (
        f"its process {pid} on {socket.gethostname()} is gone"
        in client.get_run(ids["dead-here"]).data.tags[lease.STALE_TAG]
    )
    assert err.count("was left RUNNING") == 2 and f"pyrovae resume {ids['dead-here']}" in err
    table = out.splitlines()
    assert [line.split()[2] for line in table[2:] if line.split()[1] == "dead-here"] == ["KILLED"]  # the new status


def test_resume_refuses_a_run_a_live_process_holds_and_takes_over_a_dead_ones(store, capsys):
    result = train_config(load(None, [*TINY, "train.epochs=1", "mlflow.experiment=lease"]), progress=False)
    client, run_id = MlflowClient(store), result.run_id
    client.update_run(run_id, "RUNNING")  # as a process still training it would leave it
    client.set_tag(run_id, lease.LEASE_TAG, lease.Holder.this_process().text())
    assert main(["resume", run_id, "--no-progress", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"pyrovae: error: run '{run_id}' is being trained by process {os.getpid()}" in err
    assert client.get_run(run_id).info.status == "RUNNING" and len(client.get_metric_history(run_id, "val/loss")) == 1

    pid, started = dead_pid()
    client.set_tag(run_id, lease.LEASE_TAG, holder(socket.gethostname(), pid, started, time.time() + 300))
    assert main(["resume", run_id, "--no-progress", "--set", "train.epochs=2"]) == 0
    assert f"was left RUNNING: its process {pid}" in capsys.readouterr().err
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and f"its process {pid}" in run.data.tags[lease.STALE_TAG]
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]

    client.update_run(run_id, "RUNNING")  # killed again, then evaluated: evaluate ends it first
    pid, started = dead_pid()
    client.set_tag(run_id, lease.LEASE_TAG, holder(socket.gethostname(), pid, started, time.time() + 300))
    assert main(["evaluate", run_id, "--iwae-k", "2", "--subset", "10", "--no-progress"]) == 0
    assert f"run '{run_id}' was left RUNNING (its process {pid}" in capsys.readouterr().err
    assert client.get_run(run_id).info.status == "KILLED"


@pytest.mark.parametrize("text", ["", "not json", '{"host": "h"}'])
def test_a_missing_or_unreadable_lease_is_no_lease(text):
    assert lease.Holder.parse(text) is None
