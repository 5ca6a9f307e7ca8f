"""Name -> class tables and the one function that builds a component from its spec.

A component (prior, guide or likelihood) is named in a config either by a short name from
its table (``PRIORS``, ``GUIDES``, ``LIKELIHOODS``), by an import path
``"package.module:Class"`` or, from Python, by the class itself. The remaining keys of its config
section are the constructor's
keyword arguments, so a class's signature *is* its config schema: unknown or missing
arguments are reported against that signature, naming the class and the argument.

The builder also supplies *context* arguments that no user sets by hand (``latent_dim``,
``data_shape`` and, for priors that need it, the ``guide`` module): a constructor receives
each one it names.
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from pyrovae.errors import UserError
from pyrovae.settings import check_annotation, suggest


def section(kind: str) -> str:
    """The config table a component (or the model itself) is written in."""
    return "[model]" if kind == "model" else f"[model.{kind}]"


def signature(cls: type) -> Mapping[str, inspect.Parameter]:
    """Constructor parameters, with string annotations evaluated where they can be."""
    try:
        return inspect.signature(cls, eval_str=True).parameters
    except ValueError:  # a class without a signature of its own to read (a builtin base)
        return {}
    except Exception:  # an annotation that names something not importable: check no types
        return inspect.signature(cls).parameters


def resolve_class(kind: str, name: str | type, table: Mapping[str, type]) -> type:
    """Return the class that ``name`` stands for: a table entry, ``"pkg.module:Class"`` or a class."""
    if inspect.isclass(name):
        return name
    if not isinstance(name, str) or not name:
        raise UserError(f"{section(kind)[1:-1]}.name must be a non-empty string, got {name!r}")
    if ":" not in name:
        if name in table:
            return table[name]
        hint = suggest(name, table)
        raise UserError(
            f"unknown {kind} '{name}'{hint}: choose one of {', '.join(sorted(table))}, "
            f"or give an import path 'package.module:Class'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or an error raised by the user's module itself
        raise UserError(
            f"cannot import module '{module_name}' for {kind} '{name}': {err}; "
            f"check the path and that the module is on PYTHONPATH"
        ) from err
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UserError(f"module '{module_name}' has no attribute '{attr}' (for {kind} '{name}')")
    if not inspect.isclass(obj):
        raise UserError(f"{kind} '{name}' is not a class")
    return obj


def constructor_defaults(cls: type, context: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments a user may set, with their defaults (context names excluded)."""
    out = {}
    for pname, param in signature(cls).items():
        if pname in context or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if param.default is not param.empty:
            default = param.default
            out[pname] = list(default) if isinstance(default, tuple) else default
    return out


class Checked(dict):
    """A ``[model]`` or component table as :func:`check_arguments` checked it, every default filled in:
    what the boundary (config loading, keyword arguments) hands down, so that building from it does
    not check it again. A table edited after its check (``table["latent_dim"] = 8``, a nested list
    appended to) no longer equals what was checked (:meth:`still_checked`) and is checked again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._as_checked = copy.deepcopy(dict(self))

    def still_checked(self) -> bool:
        try:
            return bool(dict.__eq__(self, self._as_checked))
        except Exception:  # a value whose == is not a bool (a tensor): check again
            return False

    def __reduce__(self):  # pickle and deepcopy rebuild it from its items
        return (type(self), (dict(self),))


def is_checked(spec) -> bool:
    """Whether ``spec`` is a :class:`Checked` table not edited since its check."""
    return isinstance(spec, Checked) and spec.still_checked()


def check_arguments(
    kind: str, spec: Mapping[str, Any], table: Mapping[str, type], context: Mapping[str, Any]
) -> tuple[type, dict[str, Any]]:
    """Validate a component section against its class's signature; return (class, kwargs).

    The kwargs returned are the user's, with the class's defaults filled in, so the resolved
    config (and the params logged to MLflow) carry every value that was used. A :class:`Checked`
    table is returned as it is.
    """
    name = spec.get("name")
    if is_checked(spec):
        return resolve_class(kind, name, table), {k: v for k, v in spec.items() if k != "name"}
    cls = resolve_class(kind, name, table)
    label = f"{kind} '{name if isinstance(name, str) else cls.__qualname__}' ({cls.__module__}.{cls.__qualname__})"
    params = signature(cls)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    settable = [p for p in params if p not in context]
    user = {k: v for k, v in spec.items() if k != "name"}
    for key, value in user.items():
        if key in context:
            raise UserError(
                f"{label}: '{key}' is set by pyrovae (from [model] or the data), remove it from {section(kind)}"
            )
        if key not in params and not takes_any:
            hint = suggest(key, settable)
            takes = ", ".join(settable) or "no arguments"
            if kind == "model":  # the [model] table's own keys read like every other config key
                raise UserError(f"unknown config key 'model.{key}'{hint}; {label} takes: {takes}")
            raise UserError(f"{label} has no argument '{key}'{hint}; it takes: {takes}")
        if key in params and params[key].annotation is not params[key].empty:
            problem = check_annotation(value, params[key].annotation)
            if problem:
                raise UserError(
                    f"config key 'model.{key}' {problem}" if kind == "model" else f"{label}: argument '{key}' {problem}"
                )
    missing = [
        p
        for p, param in params.items()
        if param.default is param.empty
        and p not in user
        and p not in context
        and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
    ]
    if missing:
        raise UserError(f"{label} needs argument '{missing[0]}': set it in {section(kind)}")
    return cls, {**constructor_defaults(cls, context), **user}


def build(kind: str, spec: Mapping[str, Any], table: Mapping[str, type], **context: Any):
    """Instantiate the component named by ``spec`` with the context arguments it asks for: those its
    constructor names, or (a subclass forwarding ``**kwargs``) that a constructor of a base class names."""
    cls, kwargs = check_arguments(kind, spec, table, context)
    named = {name for c in cls.__mro__ if "__init__" in vars(c) and c is not object for name in signature(c)}
    given = {k: v for k, v in context.items() if k in named}
    try:
        return cls(**given, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{kind} '{cls.__qualname__}' could not be built: {err}") from err


def spec_name(kind: str, cls_or_name: str | type, table: Mapping[str, type]) -> str:
    """The name a config records for a component: its table name, else ``"module:QualName"``.

    A class defined in ``__main__`` (a notebook, a script) or inside a function cannot be
    imported again by ``pyrovae evaluate/resume``: that is one :class:`UserError` line.
    """
    if isinstance(cls_or_name, str):
        return cls_or_name
    for name, cls in table.items():
        if cls is cls_or_name:
            return name
    module, qualname = cls_or_name.__module__, cls_or_name.__qualname__
    if module == "__main__" or "<locals>" in qualname:
        raise UserError(
            f"{kind} class {qualname} is defined in {'__main__' if module == '__main__' else 'a function'}, "
            f"so a logged run could not import it again; move it into a module on PYTHONPATH "
            f"(e.g. my_priors.py) and import it from there"
        )
    return f"{module}:{qualname}"
