"""Typed settings with one-line errors: the base of every config section and keyword API.

Each layer owns the settings it reads (:class:`pyrovae.data.DataSettings`,
:class:`pyrovae.infer.TrainSettings`, ...); :mod:`pyrovae.run.config` puts them together as the
TOML sections. Values are checked by pydantic in strict mode (``"3"`` is not an int, ``true``
is not a number; an int is accepted for a float), and the first problem becomes one
:class:`~pyrovae.errors.UserError` line that names the key and, for a typo, the closest
key or choice.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from pyrovae.errors import UserError

_MESSAGES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be greater than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "literal_error": "must be one of {expected}",
}


def suggest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def problem(error: dict, key_depth: int = 1) -> str:
    """One pydantic error as "must be an integer, got 'ten'" (``key_depth``: how many leading
    entries of the error's location name the key itself; more mean an item inside it)."""
    ctx = error.get("ctx") or {}
    text = _MESSAGES.get(error["type"], error["msg"].lower()).format(**ctx)
    if error["type"] == "literal_error":
        text = text.replace("'", "").replace(" or ", ", ") + suggest(error["input"], _choices(ctx))
    items = "items " if len(error["loc"]) > key_depth else ""
    return f"{items}{text}, got {error['input']!r}"


def _choices(ctx: dict) -> list[str]:
    return [c.strip(" '") for c in ctx.get("expected", "").replace(" or ", ",").split(",")]


class Settings(BaseModel):
    """A config section: keyword arguments with defaults, checked on construction.

    ``Settings(**values)`` raises :class:`UserError` with one line such as
    ``config key 'train.epochs' must be an integer, got 'two'``.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    section: ClassVar[str] = ""

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise UserError(self.describe(err.errors()[0], values)) from None

    @classmethod
    def describe(cls, error: dict, values: Mapping[str, Any]) -> str:
        key = str(error["loc"][0]) if error["loc"] else ""
        name = f"{cls.section}.{key}" if cls.section else key
        if error["type"] == "extra_forbidden":
            return f"unknown config key '{name}'{suggest(key, cls.model_fields)}"
        return f"config key '{name}' {problem(error)}"

    @classmethod
    def parse(cls, values: Settings | Mapping[str, Any] | None) -> Settings:
        """``values`` as this class: an instance as it is, a mapping (or None: defaults) validated."""
        return values if isinstance(values, cls) else cls(**dict(values or {}))

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


def check_annotation(value: Any, annotation: Any) -> str | None:
    """``None`` if ``value`` fits ``annotation`` (strictly), else e.g. "must be an integer, got 'x'".

    Tuples count as lists (TOML has only lists). An annotation pydantic cannot check (a
    tensor, a module) is left to the class itself.
    """
    try:
        adapter = TypeAdapter(annotation)
    except Exception:
        return None
    try:
        adapter.validate_python(list(value) if isinstance(value, tuple) else value, strict=True)
    except ValidationError as err:
        return problem(err.errors()[0], key_depth=0)
    except Exception:  # an annotation pydantic could build but not resolve (a forward reference)
        return None
    return None


def renamed_keyword(old: str, old_value: Any, new: str, new_value: Any) -> Any:
    """The value given for keyword ``new``, or for ``old``, its name in pyrovae 0.2, with a
    deprecation warning (so scripts written for 0.2 still run); both given: one line."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise UserError(f"give {new}= only: {old}= is its old name")
    warnings.warn(f"{old}= is now called {new}=; the old name will go", DeprecationWarning, stacklevel=3)
    return old_value
