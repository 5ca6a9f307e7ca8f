"""Configuration: defaults, TOML files, ``--set section.key=value`` overrides, validation.

A config is a nested dict with the sections below. Every fixed key has a type and, where it
matters, a range or a list of choices. ``[model]`` holds a ``name`` (default ``"vae"``) plus that
model class's constructor arguments, checked against its signature; the VAE's ``[model.prior]``,
``[model.guide]`` and ``[model.likelihood]`` hold a ``name`` plus that component's arguments, checked
the same way (see :mod:`pyrovae.model.models` and :mod:`pyrovae.model.components`). :func:`resolve`
returns the config with
every default filled in, which is what a run logs, so a run is reproducible from its
``config.toml`` artifact alone.
"""

from __future__ import annotations

import copy
import logging
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import Field

from pyrovae.data import DataSettings
from pyrovae.errors import UserError
from pyrovae.infer.settings import TrainSettings, ValidationSettings
from pyrovae.model.models import resolve_model
from pyrovae.settings import Settings, suggest

log = logging.getLogger(__name__)

#: the default ``[model]``: the MNIST baseline (784-400-50 MLPs, Kingma & Welling 2014)
DEFAULT_MODEL = {
    "name": "vae",
    "latent_dim": 50,
    "prior": {"name": "standard_normal"},
    "guide": {"name": "diagonal_normal", "hidden": [400]},
    "likelihood": {"name": "bernoulli", "hidden": [400]},
}


class MlflowSettings(Settings):
    """Where runs are tracked and how much they log."""

    section = "mlflow"

    tracking_uri: str = Field("", description="'' = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db")
    experiment: str = Field("pyrovae", description="the MLflow experiment the run goes to")
    run_name: str = Field("", description="the run's name (empty: one MLflow picks)")
    images_every: int = Field(
        1,
        ge=0,
        description="log the reconstruction and sample grids every N epochs (0 = never): fewer artifacts in long runs",
    )


#: the sections with fixed keys; ``[model]`` is checked against the model class it names
SECTIONS: dict[str, type[Settings]] = {
    "data": DataSettings,
    "train": TrainSettings,
    "validation": ValidationSettings,
    "mlflow": MlflowSettings,
}
ORDER = ("data", "model", "train", "validation", "mlflow")
#: sections renamed since pyrovae 0.2, old name -> new: still read (a logged run's config.toml silently)
RENAMED_SECTIONS = {"eval": "validation"}
#: values of keys that older pyrovae versions logged and this one reads differently
LEGACY_VALUES = {("train", "adam", "pyro"): "foreach"}  # pyro.optim.Adam: the same update, per tensor


def defaults() -> dict[str, dict[str, Any]]:
    return {name: copy.deepcopy(DEFAULT_MODEL) if name == "model" else SECTIONS[name]().as_dict() for name in ORDER}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value); the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set needs section.key=value, got '{text}'")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load(path: str | Path | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults, then the TOML file (if any), then each override, then :func:`resolve`.

    The user's layers (file, then overrides) are merged first and then laid over the
    defaults, so naming another class in ``[model.prior]`` (say) drops the *default* class's
    arguments but keeps every argument the user wrote.
    """
    user: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file '{path}' does not exist")
        try:
            _merge(user, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"config file '{path}' is not valid TOML: {err}") from err
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(user, nested)
    _rename_sections(user, note=True)
    config = defaults()
    _apply(config, user, [])
    return resolve(config)


def over_defaults(user: dict[str, Any]) -> dict[str, Any]:
    """``user`` (e.g. a run's logged ``config.toml``) laid over today's defaults, then resolved.

    Keys added to pyrovae after that run was trained take their defaults, and values this
    version reads differently are translated (:data:`LEGACY_VALUES`), so older runs still load.
    """
    user = copy.deepcopy(user)
    for (section, key, old), new in LEGACY_VALUES.items():
        if user.get(section, {}).get(key) == old:
            user[section][key] = new
    _rename_sections(user, note=False)
    config = defaults()
    _apply(config, user, [])
    return resolve(config)


def _rename_sections(user: dict, note: bool) -> None:
    """Move each renamed section's keys to its new name (:data:`RENAMED_SECTIONS`); where both
    are given, the new name's keys win. ``note``: say so in one line (a user's file or ``--set``)."""
    for old, new in RENAMED_SECTIONS.items():
        if isinstance(user.get(old), dict):
            if note:
                log.warning(f"config: [{old}] is now [{new}] (--set {old}.KEY is {new}.KEY); the old name will go")
            section = user.pop(old)
            _merge(section, user.get(new, {}))
            user[new] = section


def _merge(base: dict, new: dict) -> None:
    """Deep-merge ``new`` into ``base`` (later layers win)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _apply(base: dict, new: dict, where: list[str]) -> None:
    """Lay the user's values over the defaults, rejecting unknown sections and keys."""
    for key, value in new.items():
        here = [*where, key]
        if not where and key not in ORDER:
            raise UserError(f"unknown config section [{key}]{suggest(key, ORDER)}; sections are {', '.join(ORDER)}")
        if len(where) == 1 and key not in base and where != ["model"]:  # the model's class checks its keys
            raise UserError(f"unknown config key '{'.'.join(here)}'{suggest(key, base)}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            names_a_class = where == ["model"] or (not where and key == "model")  # the model or a component
            if names_a_class and value.get("name", base[key].get("name")) != base[key].get("name"):
                base[key] = {}  # another class: the default class's arguments do not apply
            _apply(base[key], value, here)
        elif len(here) <= 2 and isinstance(base.get(key), dict):
            raise UserError(
                f"'{'.'.join(here)}' is a section, not a value: set its keys, e.g. {'.'.join(here)}.name=..."
            )
        else:
            base[key] = value


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Check every value and fill in model and component defaults; raise :class:`UserError` on the
    first problem."""
    return {
        section: resolve_model(config[section])
        if section == "model"
        else SECTIONS[section](**config[section]).as_dict()
        for section in ORDER
    }


def to_toml(config: dict[str, Any]) -> str:
    return tomli_w.dumps(config)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": 0.001}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
