"""A search space: config keys mapped to ranges or choices, checked against the config, drawn by Optuna.

``{float = [low, high], log = true}``, ``{int = [low, high], step = 2}`` or ``{choice = [...]}`` per
config key (flat ``"train.lr"`` keys or nested tables); a choice may hold lists or whole tables
(``model.guide = {choice = [{name = "iaf", steps = 2}, "diagonal_normal"]}``). A trial's values become
``--set`` overrides over the base config, so a trial trains exactly as ``pyrovae train`` would.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pyrovae.errors import UserError, first_line
from pyrovae.run import config as config_mod

KINDS = {"float": {"log", "step"}, "int": {"log", "step"}, "choice": set()}  # an entry's kind and its options


def parse_space(space: dict | str | Path) -> dict[str, dict]:
    """``{key: entry}``, flat or nested, or a TOML file of it -> ``{"train.lr": {"float": [...], "log": ...}}``."""
    if isinstance(space, (str, Path)):
        try:
            space = tomllib.loads(Path(space).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise UserError(f"cannot read the search space {space}: {first_line(err)}") from None
    flat: dict[str, dict] = {}

    def walk(table: dict, prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict) and not set(value) & set(KINDS):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = check_entry(f"{prefix}{key}", value)

    walk(dict(space or {}), "")
    if not flat:
        raise UserError("the search space is empty; give entries such as train.lr = {float = [1e-4, 3e-3], log = true}")
    return flat


def check_entry(key: str, entry: Any) -> dict:
    """One entry, checked and normalized (``log`` always present for numbers)."""
    bad = f"search space entry '{key}'"
    if len(key.split(".")) < 2 or key.split(".")[0] == "mlflow":
        raise UserError(f"{bad}: name a config key such as train.lr (the [mlflow] section is the search's own)")
    kinds = set(entry) & set(KINDS) if isinstance(entry, dict) else set()
    if len(kinds) != 1:
        raise UserError(f"{bad} needs exactly one of float = [low, high], int = [low, high], choice = [...]")
    kind = kinds.pop()
    if set(entry) - KINDS[kind] - {kind}:
        raise UserError(f"{bad}: unknown option {', '.join(sorted(set(entry) - KINDS[kind] - {kind}))} for {kind}")
    values = list(entry[kind]) if isinstance(entry[kind], tuple) else entry[kind]
    if kind == "choice":
        if not isinstance(values, list) or not values or any(values.count(v) > 1 for v in values):
            raise UserError(f"{bad}: choice needs a list of distinct values, got {values!r}")
        return {"choice": values}
    number = int if kind == "int" else (int, float)
    if not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, number) for v in values)):
        raise UserError(f"{bad}: {kind} needs [low, high] of {kind}s, got {values!r}")
    low, high = values
    if not low < high:
        raise UserError(f"{bad}: the range [{low}, {high}] is empty; give low < high")
    if entry.get("log") and low <= 0:
        raise UserError(f"{bad}: a log scale needs low > 0, got {low}")
    if "step" in entry and (entry.get("log") or not isinstance(entry["step"], number) or entry["step"] <= 0):
        raise UserError(f"{bad}: step must be a positive {kind}, and cannot go with log = true")
    return {kind: values, "log": bool(entry.get("log", False)), **({"step": entry["step"]} if "step" in entry else {})}


def toml_text(value: Any) -> str:
    """A value as TOML (what ``--set`` reads): ``[64, 64]``, ``{name = "iaf", hidden = [64]}``, ``"iaf"``."""
    if isinstance(value, dict):
        keys = [k if re.fullmatch(r"[\w-]+", k, re.ASCII) else json.dumps(k) for k in map(str, value)]
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in zip(keys, value.values())) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return json.dumps(value)


def _options(entry: dict) -> list:
    """A choice's values as Optuna keeps them: scalars as they are, lists and tables as their TOML text."""
    return [toml_text(v) if isinstance(v, (list, dict)) else v for v in entry["choice"]]


def suggest(trial, space: dict[str, dict]) -> list[str]:
    """The trial's values of ``space`` as ``--set`` overrides."""
    out = []
    for key, e in space.items():
        if "choice" in e:
            value = trial.suggest_categorical(key, _options(e))
            out.append(f"{key}={toml_text(e['choice'][_options(e).index(value)])}")
        else:
            kind = "float" if "float" in e else "int"
            draw = trial.suggest_float if kind == "float" else trial.suggest_int
            step = {"step": e["step"]} if "step" in e else {}
            out.append(f"{key}={toml_text(draw(key, *e[kind], log=e['log'], **step))}")
    return out


def check_space(config: str | None, overrides: list[str], space: dict[str, dict]) -> dict:
    """Load the base config with every entry at its low/first and high/last value and with each choice,
    so a wrong key or value is one line before anything starts; the base config (resolved)."""
    ends = [{k: (e["choice"] if "choice" in e else e.get("float", e.get("int")))[i] for k, e in space.items()}
            for i in (0, -1)]  # fmt: skip
    cases = ends + [{**ends[0], k: v} for k, e in space.items() for v in e.get("choice", [])]
    base = config_mod.load(config, overrides)
    for case in cases:
        try:
            config_mod.load(config, [*overrides, *(f"{k}={toml_text(v)}" for k, v in case.items())])
        except UserError as err:
            raise UserError(f"the search space does not fit the config: {err}") from None
    return base
