"""Check a config value against a type annotation, returning a readable problem or None.

One checker serves both the fixed config sections (dataclass fields) and component
constructors (their annotations), so ``train.epochs = "ten"`` and
``[model.guide] hidden = "big"`` get the same kind of one-line message.
"""

from __future__ import annotations

import types
import typing
from typing import Any


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_value(value: Any, annotation: Any) -> str | None:
    """Return ``None`` if ``value`` fits ``annotation``, else e.g. "must be int, got 'ten'"."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is typing.Any:
        return None
    if origin in (typing.Union, types.UnionType):
        if any(check_value(value, arg) is None for arg in args):
            return None
        return f"must be {' or '.join(_describe(a) for a in args)}, got {value!r}"
    if origin is typing.Literal:
        return None if value in args else f"must be one of {', '.join(map(repr, args))}, got {value!r}"
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {value!r}"
        item_type = args[0] if args else Any
        for item in value:
            problem = check_value(item, item_type)
            if problem:
                return f"items {problem}"
        return None
    if annotation is type(None):
        return None if value is None else f"must be empty, got {value!r}"
    if annotation is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"must be an integer, got {value!r}"
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {value!r}"
    if annotation is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    return None  # an annotation we do not interpret (a tensor, a module): the class checks it
