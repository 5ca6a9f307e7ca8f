"""Fixtures shared by the test modules: a tmp MLflow store and small configs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pyro
import pytest

from tests.stores import fresh_store, store_path

# the helper modules beside this file (exact_models, linear_gaussian, faulty) for the tests in every folder
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store and default validation."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@contextmanager
def tracking_store(folder: Path, create: bool = True) -> Iterator[str]:
    """Work in ``folder`` with a fresh sqlite MLflow store there as the default; yields its URI.
    ``create=False``: only the URI, for tests that check that nothing opens (creates) the store."""
    uri = fresh_store(folder) if create else f"sqlite:///{store_path(folder)}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)  # the fluent API caches the last URI a test set
        try:
            yield uri
        finally:
            mlflow.set_tracking_uri(None)


@pytest.fixture
def store(tmp_path):
    """A fresh sqlite MLflow store in tmp_path, used by default; the test runs in tmp_path."""
    with tracking_store(tmp_path) as uri:
        yield uri


@pytest.fixture
def unopened_store(tmp_path):
    """As ``store``, but nothing exists yet at its URI: tests of input refused before any store opens."""
    with tracking_store(tmp_path, create=False) as uri:
        yield uri


TINY = [
    "data.name=synthetic",
    "data.subset=200",
    "train.epochs=1",
    "train.batch_size=50",
    "model.latent_dim=3",
    "model.guide.hidden=[16]",
    "model.likelihood.hidden=[16]",
    "validation.batch_size=100",
]


@pytest.fixture
def tiny_overrides():
    """``--set`` overrides for a seconds-long training on the synthetic data."""
    return list(TINY)
