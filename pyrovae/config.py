"""Configuration: defaults, TOML files, ``--set section.key=value`` overrides, validation.

A config is a nested dict with the sections below. Every fixed key has a type and, where it
matters, a range or a list of choices; ``[model.prior]``, ``[model.guide]`` and
``[model.likelihood]`` hold a ``name`` plus that class's constructor arguments, checked
against its signature (see :mod:`pyrovae.registry`). :func:`resolve` returns the config with
every default filled in, which is what a run logs, so a run is reproducible from its
``config.toml`` artifact alone.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from pyrovae.errors import UserError
from pyrovae.typecheck import check_value


def _opt(default, *, min=None, above=None, max=None, choices=None, help=""):
    return field(default=default, metadata=dict(min=min, above=above, max=max, choices=choices, help=help))


@dataclass
class Data:
    name: str = _opt("mnist", choices=("mnist", "synthetic", "ppca", "arrays"),
                     help="data set: MNIST, a synthetic image set, linear-Gaussian (exact log p(x)), or your arrays")
    root: str = _opt("", help="MNIST folder holding MNIST/raw; '' = $PYROVAE_DATA_DIR, else ~/.cache/pyrovae")
    binarize: bool = _opt(True, help="binary pixels: dynamic for training, fixed-seed for val/test")
    seed: int = _opt(0, min=0, help="seed of the fixed val/test binarization, the split and synthetic data")
    subset: int = _opt(0, min=0, help="keep at most this many examples per split (0 = all)")
    train: str = _opt("", help="arrays: training file (.npy or .pt)")
    val: str = _opt("", help="arrays: validation file")
    test: str = _opt("", help="arrays: test file")
    file: str = _opt("", help="arrays: one file to split by val_fraction/test_fraction")
    val_fraction: float = _opt(0.1, min=0.0, max=0.9)
    test_fraction: float = _opt(0.1, min=0.0, max=0.9)


@dataclass
class Model:
    latent_dim: int = _opt(50, min=1)
    prior: dict = field(default_factory=lambda: {"name": "standard_normal"})
    guide: dict = field(default_factory=lambda: {"name": "diagonal_normal", "hidden": [400]})
    likelihood: dict = field(default_factory=lambda: {"name": "bernoulli", "hidden": [400]})


@dataclass
class Train:
    epochs: int = _opt(10, min=1)
    batch_size: int = _opt(128, min=1)
    lr: float = _opt(1e-3, above=0.0)
    seed: int = _opt(0, min=0)
    device: str = _opt("auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    elbo: str = _opt("trace", choices=("trace", "meanfield"),
                     help="Trace_ELBO (Monte Carlo KL) or TraceMeanField_ELBO (closed-form KL where it exists)")
    num_particles: int = _opt(1, min=1)
    beta_start: float = _opt(1.0, above=0.0, max=1.0, help="KL weight at the first step (> 0)")
    warmup_epochs: float = _opt(0.0, min=0.0, help="epochs to raise beta linearly to 1 (0 = no warm-up)")
    checkpoint_every: int = _opt(1, min=1, help="write checkpoints/last.pt every N epochs (and at the end)")
    patience: int = _opt(0, min=0, help="stop when val/loss has not improved for N epochs (0 = never)")
    adam: str = _opt("auto", choices=("auto", "fused", "foreach", "pyro"),
                     help="one torch Adam for all parameters (fused kernel where torch has it, or foreach), "
                          "or 'pyro': pyro.optim.Adam, one optimizer per parameter tensor")
    jit: bool = _opt(False, help="JitTrace_ELBO / JitTraceMeanField_ELBO (torch.jit.trace of the loss)")


@dataclass
class Eval:
    batch_size: int = _opt(1000, min=1)
    seed: int = _opt(0, min=0, help="seed of the evaluation samples, fixed so runs compare")
    iwae_every: int = _opt(0, min=0, help="log val/nll_iwae every N epochs (0 = never; it costs K decoder passes)")
    iwae_k: int = _opt(100, min=1, help="importance samples K of the per-epoch val/nll_iwae")


@dataclass
class Mlflow:
    tracking_uri: str = _opt("", help="'' = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db")
    experiment: str = _opt("pyrovae")
    run_name: str = _opt("")


SECTIONS = {"data": Data, "model": Model, "train": Train, "eval": Eval, "mlflow": Mlflow}
COMPONENTS = ("prior", "guide", "likelihood")


def defaults() -> dict[str, dict[str, Any]]:
    out = {}
    for name, cls in SECTIONS.items():
        out[name] = {f.name: (f.default_factory() if f.default is MISSING else f.default) for f in fields(cls)}
    return out


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
    config = defaults()
    _apply(config, user, [])
    return resolve(config)


def over_defaults(user: dict[str, Any]) -> dict[str, Any]:
    """``user`` (e.g. a run's logged ``config.toml``) laid over today's defaults, then resolved.

    Keys added to pyrovae after that run was trained take their defaults, so older runs
    still load.
    """
    config = defaults()
    _apply(config, user, [])
    return resolve(config)


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
        if not where and key not in SECTIONS:
            raise UserError(f"unknown config section [{key}]{_suggest(key, SECTIONS)}; "
                            f"sections are {', '.join(SECTIONS)}")
        if len(where) == 1 and key not in base:
            raise UserError(f"unknown config key '{'.'.join(here)}'{_suggest(key, base)}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if where == ["model"] and value.get("name", base[key].get("name")) != base[key].get("name"):
                base[key] = {}  # another class: the default class's arguments do not apply
            _apply(base[key], value, here)
        elif len(here) <= 2 and isinstance(base.get(key), dict):
            raise UserError(f"'{'.'.join(here)}' is a section, not a value: set its keys, "
                            f"e.g. {'.'.join(here)}.name=...")
        else:
            base[key] = value


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Check every value and fill in component defaults; raise :class:`UserError` on the first problem."""
    from pyrovae.guides import GUIDES
    from pyrovae.likelihoods import LIKELIHOODS
    from pyrovae.priors import PRIORS
    from pyrovae.registry import check_arguments

    config = copy.deepcopy(config)
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name in COMPONENTS:
                continue
            value, key = config[section][f.name], f"{section}.{f.name}"
            problem = check_value(value, hints[f.name])
            meta = f.metadata
            if problem is None and meta.get("choices") and value not in meta["choices"]:
                problem = f"must be one of {', '.join(meta['choices'])}{_suggest(str(value), meta['choices'])}, got {value!r}"
            if problem is None and meta.get("min") is not None and value < meta["min"]:
                problem = f"must be at least {meta['min']}, got {value!r}"
            if problem is None and meta.get("above") is not None and value <= meta["above"]:
                problem = f"must be greater than {meta['above']}, got {value!r}"
            if problem is None and meta.get("max") is not None and value > meta["max"]:
                problem = f"must be at most {meta['max']}, got {value!r}"
            if problem:
                raise UserError(f"config key '{key}' {problem}")
            if hints[f.name] is float:
                config[section][f.name] = float(value)
    tables = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS}
    context = {"prior": ("latent_dim", "data_shape", "guide"),
               "guide": ("latent_dim", "data_shape"), "likelihood": ("latent_dim", "data_shape")}
    for kind in COMPONENTS:
        spec = config["model"][kind]
        if "name" not in spec:
            raise UserError(f"[model.{kind}] needs a name")
        _, kwargs = check_arguments(kind, spec, tables[kind], dict.fromkeys(context[kind]))
        config["model"][kind] = {"name": spec["name"], **kwargs}
    return config


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
