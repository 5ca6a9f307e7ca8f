"""The architecture, checked: layers import downward only, MLflow lives in run/ alone, and every
name ``pyrovae/__init__.py`` lists is importable from ``pyrovae``."""

from __future__ import annotations

import ast
from pathlib import Path

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
