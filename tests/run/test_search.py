"""``pyrovae search``: a bad space is one line and starts nothing; trials are counted once across worker
processes, each with one child run whose params are the trial's; a pruned trial stops after an epoch that
is logged; an interrupted search ends its trial FAILED and its run KILLED, and continues; workers share a
study on a real PostgreSQL server."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import TINY

EPOCHS = 3
BASE = [*(o for o in TINY if not o.startswith("train.epochs")), f"train.epochs={EPOCHS}", "mlflow.images_every=0"]
SPACE = {"train.lr": {"float": [1e-6, 1e-1], "log": True}, "model.latent_dim": {"int": [2, 4]}}
SPACE_TOML = "train.lr = {float = [1e-6, 1e-1], log = true}\nmodel.latent_dim = {int = [2, 4]}\n"


def study_trials(storage, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def journal(store: str):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    folder = Path(store[len("sqlite:///") :]).parent  # the default: the journal beside the MLflow store
    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / "optuna-journal.log")))


def children(store: str, parent: str) -> list:
    from mlflow.tracking import MlflowClient

    store_client = MlflowClient(store)
    experiments = [e.experiment_id for e in store_client.search_experiments()]
    return store_client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{parent}'")


def check_accounting(store: str, trials: list, parent: str, total: int) -> dict:
    """Every trial number once; ``total`` COMPLETE + PRUNED; each of those one child run with its params."""
    from optuna.trial import TrialState

    assert sorted(t.number for t in trials) == list(range(len(trials)))
    done = {t.number: t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert len(done) == total
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = {}
    for run in children(store, parent):
        number = int(run.data.tags["pyrovae.trial"])
        assert number not in runs, f"trial {number} has two runs"
        runs[number] = run
    for number, trial in done.items():
        run = runs[number]
        assert run.info.run_name == f"trial {number}" and run.info.status == "FINISHED"
        assert {k: float(run.data.params[k]) for k in trial.params} == pytest.approx(trial.params, rel=1e-12)
    return runs


# -- a bad space: one line, no run -------------------------------------------------------------
@pytest.mark.parametrize(
    "entry, says",
    [
        ("train.lrr = {float = [1e-4, 1e-2]}", "unknown config key 'train.lrr'"),
        ("train.lr = {float = [1e-2, 1e-4]}", "is empty"),
        ("train.lr = {float = [0.0, 1e-2], log = true}", "log scale needs low > 0"),
        ("model.latent_dim = {int = [2, 8], scale = 2}", "unknown option scale"),
        ("model.guide.name = {choice = []}", "choice needs a list"),
        ("model.guide.name = {choice = ['diagonal_normal', 'no_such_guide']}", "no_such_guide"),
        ("mlflow.experiment = {choice = ['a', 'b']}", "[mlflow] section"),
        ("train.lr = 0.001", "needs exactly one of"),
    ],
)
def test_a_bad_space_entry_is_one_line_and_starts_no_run(unopened_store, tmp_path, capsys, entry, says):
    from pyrovae.cli.main import main

    (tmp_path / "space.toml").write_text(entry + "\n")
    assert main(["search", "--space", "space.toml", *sum((["--set", o] for o in BASE), [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae: error: ") and "\n" not in err and says in err, err
    assert not (tmp_path / "mlruns").exists()  # no store, no study, no run


# -- two workers on one study --------------------------------------------------------------------
@pytest.mark.slow
def test_two_workers_count_each_trial_once_and_pruned_trials_log_their_last_epoch(store):
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    import pyrovae

    good, bad = {"train.lr": 1e-2, "model.latent_dim": 3}, {"train.lr": 1e-6, "model.latent_dim": 3}
    planned = optuna.create_study(study_name="two", storage=journal(store))  # the same values, whoever runs them
    for params in (good, good, bad, bad):
        planned.enqueue_trial(params)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1)  # from the first complete trial on
    result = pyrovae.search(overrides=BASE, space=SPACE, trials=4, workers=2, study="two", pruner=pruner)

    trials = study_trials(journal(store), "two")
    runs = check_accounting(store, trials, result.parent_run_id, total=4)
    assert (result.complete, result.pruned, result.failed) == (2, 2, 0)
    history = MlflowClient(store).get_metric_history
    for trial in trials:
        steps = [m.step for m in history(runs[trial.number].info.run_id, "val/loss")]
        if trial.params["train.lr"] == bad["train.lr"]:  # trails the complete trials at epoch 1
            assert trial.state == TrialState.PRUNED
            assert runs[trial.number].data.tags["pyrovae.pruned"] == "epoch 1"
            assert steps == [1] == sorted(trial.intermediate_values)  # stopped there, and that epoch is logged
        else:
            assert trial.state == TrialState.COMPLETE and steps == list(range(1, EPOCHS + 1))
            values = [m.value for m in history(runs[trial.number].info.run_id, "val/loss")]
            assert trial.value == pytest.approx(min(values), rel=1e-9)  # the best epoch's val/loss

    table = pyrovae.compare(parent=result.parent_run_id, tracking_uri=store)
    pruned = {row[1]: row[table.header.index("pruned")] for row in table.rows}  # compare says which were pruned
    assert pruned == {f"trial {t.number}": "epoch 1" if t.state == TrialState.PRUNED else "" for t in trials}

    parent = MlflowClient(store).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pyrovae.study"] == "two"
    assert parent.data.tags["pyrovae.best_trial"] == str(result.best_trial)
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert result.best_trial == best.number and result.best_value == best.value
    folder = Path(MlflowClient(store).download_artifacts(result.parent_run_id, "", tempfile.mkdtemp()))
    assert json.loads((folder / "best_trial.json").read_text())["best_trial"] == best.number
    assert {p.name for p in (folder / "figures").iterdir()} == {"optimization_history.png", "param_importances.png"}


# -- an interrupted search continues --------------------------------------------------------------
def search_command(tmp_path: Path, trials: int) -> list[str]:
    (tmp_path / "space.toml").write_text(SPACE_TOML)
    sets = sum((["--set", o] for o in [*BASE, "train.epochs=6"]), [])
    command = [sys.executable, "-m", "pyrovae", "search", "--space", "space.toml", "--no-progress", *sets]
    return [*command, "--trials", str(trials)]


@pytest.mark.slow
def test_an_interrupted_search_fails_its_trial_kills_its_run_and_continues(store, tmp_path):
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from pyrovae.run.search_trials import RETRY_ATTR, RUN_ATTR

    stopped = subprocess.Popen(search_command(tmp_path, 1), cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and stopped.poll() is None:  # until trial 0 trains
        if (tmp_path / "mlruns" / "optuna-journal.log").exists():
            running = [t for t in study_trials(journal(store), "space") if RUN_ATTR in t.user_attrs]
            if running:
                break
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM)
    out = stopped.communicate(timeout=120)[0]
    assert stopped.returncode == 143, out
    (first,) = study_trials(journal(store), "space")[:1]
    assert first.state == TrialState.FAIL
    assert MlflowClient(store).get_run(first.user_attrs[RUN_ATTR]).info.status == "KILLED"

    again = subprocess.run(search_command(tmp_path, 2), cwd=tmp_path, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = study_trials(journal(store), "space")
    retry = trials[1]
    assert retry.user_attrs[RETRY_ATTR] == 0 and retry.params == first.params  # the stopped trial, again
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    experiment = MlflowClient(store).get_experiment_by_name("pyrovae").experiment_id
    parents = MlflowClient(store).search_runs([experiment], filter_string="tags.`pyrovae.group` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = check_accounting(store, trials, parents[0].info.run_id, total=2)
    assert runs[0].info.status == "KILLED"
    assert "2 complete, 0 pruned, 1 failed" in again.stdout


@pytest.mark.slow  # a process of its own, killed
def test_a_trial_whose_process_was_killed_is_failed_its_run_killed_and_its_values_queued_again(store):
    import optuna
    import psutil
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from pyrovae.run import lease
    from pyrovae.run.search_trials import HOLDER_ATTR, RETRY_ATTR, RUN_ATTR, fail_stale
    from pyrovae.run.tracking import experiment_id

    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = lease.Holder(socket.gethostname(), worker.pid, psutil.Process(worker.pid).create_time(), time.time() + 600)
    worker.send_signal(signal.SIGKILL)  # as the OOM killer would: nothing of it runs any more
    worker.wait()
    store_client = MlflowClient(store)
    run = store_client.create_run(experiment_id(store, "pyrovae"), tags={lease.LEASE_TAG: holder.text()})
    study = optuna.create_study(study_name="killed", storage=journal(store))
    trial = study.ask()
    lr = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    trial.set_user_attr(HOLDER_ATTR, holder.text())
    trial.set_user_attr(RUN_ATTR, run.info.run_id)
    alive = study.ask()  # this process's own: left alone
    alive.set_user_attr(HOLDER_ATTR, lease.Holder.this_process().text())

    fail_stale(study, store)
    states = {t.number: t for t in study_trials(journal(store), "killed")}
    assert states[trial.number].state == TrialState.FAIL and states[alive.number].state == TrialState.RUNNING
    (queued,) = [t for t in states.values() if t.state == TrialState.WAITING]
    assert queued.user_attrs[RETRY_ATTR] == trial.number
    assert study.ask().suggest_float("train.lr", 1e-4, 1e-2, log=True) == lr  # the next trial retries its values
    killed = store_client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and "is gone" in killed.data.tags[lease.STALE_TAG]


# -- PostgreSQL: workers of several machines share one study -------------------------------------
def _unavailable(why: str):
    if os.environ.get("PYROVAE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PYROVAE_REQUIRE_POSTGRES=1 but {why}")
    pytest.skip(why)


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own (as user 'nobody' when we are root: initdb refuses root) with an empty
    database; its URL. Stopped and removed at the end."""
    initdb = shutil.which("initdb") or max(glob.glob("/usr/lib/postgresql/*/bin/initdb"), default=None)
    if initdb is None:
        _unavailable("no PostgreSQL: initdb is neither on PATH nor in /usr/lib/postgresql/*/bin")
    try:
        import psycopg2
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install psycopg2-binary)")
    bindir = Path(initdb).resolve().parent
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user and shutil.which("runuser") is None:
        _unavailable("running as root without runuser, so initdb cannot run as another user")
    folder = Path(tempfile.mkdtemp(prefix="pyrovae-pg-"))
    if as_user:
        os.chown(folder, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    started = subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "pyrovae", "--auth=trust", "-N"],
        capture_output=True, text=True)  # fmt: skip
    if started.returncode == 0:
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"  # a throwaway server
        started = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"),
                                  "-w", "-o", options, "start"], capture_output=True, text=True)  # fmt: skip
    try:
        if started.returncode:
            _unavailable(f"PostgreSQL did not start: {(started.stderr or started.stdout).strip()[-300:]}")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="pyrovae", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE optuna")
        connection.close()
        yield f"postgresql://pyrovae@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(store, postgres):
    from optuna.trial import TrialState

    import pyrovae

    overrides = [*BASE, "train.epochs=2"]
    result = pyrovae.search(overrides=overrides, space=SPACE, trials=4, workers=2, storage=postgres, study="pg")
    trials = study_trials(postgres.replace("postgresql://", "postgresql+psycopg2://"), "pg")
    check_accounting(store, trials, result.parent_run_id, total=4)
    assert result.complete + result.pruned == 4 and result.failed == 0
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
