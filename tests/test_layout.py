"""The architecture, checked: layers import downward only, MLflow lives in run/ alone, and every
name ``pyrovae/__init__.py`` lists is importable from ``pyrovae``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pyrovae

PACKAGE = Path(pyrovae.__file__).parent
#: a layer may import itself and the layers of lower rank; errors/settings/devices are the base
RANK = {"errors": 0, "settings": 0, "devices": 0, "model": 1, "data": 1, "infer": 2, "run": 3, "cli": 4}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pyrovae" and len(parts) > 1 and parts[1] in RANK else None


def test_layers_import_downward_only_and_mlflow_only_in_run():
    upward, mlflow_users = [], []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own not in RANK:
            continue  # __init__.py (lazy exports) and __main__.py sit above every layer
        for module in imports(path):
            target = layer(module)
            if target is not None and RANK[target] > RANK[own] and not (target == own):
                upward.append(f"{relative} imports {module}")
            if module.split(".")[0] == "mlflow" and own != "run":
                mlflow_users.append(str(relative))
    assert not upward, upward
    assert not mlflow_users, mlflow_users
    assert RANK["model"] == RANK["data"]  # the two bottom layers do not know each other:
    for path in (PACKAGE / "model").rglob("*.py"):
        assert not any(layer(m) == "data" for m in imports(path)), path
    for path in (PACKAGE / "data").rglob("*.py"):
        assert not any(layer(m) == "model" for m in imports(path)), path


@pytest.mark.slow  # a fresh interpreter
def test_every_listed_public_name_is_importable_and_import_pyrovae_stays_light():
    import subprocess
    import sys

    for name in pyrovae.__all__:
        assert getattr(pyrovae, name) is not None, name
    light = subprocess.run(
        [sys.executable, "-c", "import sys, pyrovae; print('mlflow' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert light.stdout.strip() == "False"


@pytest.mark.slow  # a fresh interpreter
def test_the_run_modules_that_never_talk_to_mlflow_do_not_import_it():
    import subprocess
    import sys

    light = subprocess.run(
        [sys.executable, "-c", "import sys, pyrovae.run.checkpoint, pyrovae.run.restore, pyrovae.run.config, "
         "pyrovae.run.tracking; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"],
        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert light.stdout.strip() == "[]", light.stderr[-2000:]


def test_only_public_mlflow_apis_are_used():
    private = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = getattr(node, "module", None) or ""
            if module.startswith("mlflow") and (any(n.startswith("_") for n in names) or "._" in module):
                private.append(f"{path.relative_to(PACKAGE)}: from {module} import {', '.join(names)}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_to_mlflow"):
                private.append(f"{path.relative_to(PACKAGE)}: .{node.attr}")
    assert not private, private


def test_reading_a_run_from_a_folder_without_a_store_creates_none(tmp_path, monkeypatch):
    from pyrovae import UserError, load_vae

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        load_vae("0123456789abcdef")
    except UserError as err:
        assert str(err).startswith("no run '0123456789abcdef' in the MLflow store")
    else:
        raise AssertionError("a run that does not exist was found")
    assert not (tmp_path / "mlruns").exists()
