"""Reference pages written from the code at every build, so they cannot drift from it.

- ``reference/config.md``: every key of the fixed config sections from the settings classes
  (type, default, range, the field's description), and the ``[model]`` keys of every model of
  the table from its constructor's signature;
- ``reference/cli.md``: every command's options from the parser ``pyrovae`` itself builds.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from pathlib import Path

FIELD_LIMITS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _value(value) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return f"`{list(value)}`"
    return f"`{value}`"


def _type(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # bool | Literal["auto"]
        return " or ".join(_type(a) for a in typing.get_args(annotation))
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if choices:
        return "one of " + ", ".join(f"`{c}`" for c in choices)
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def settings_rows(section: str, cls) -> list[str]:
    rows = []
    for name, field in cls.model_fields.items():
        limits = [
            f"{FIELD_LIMITS[type(m).__name__.lower()]} {getattr(m, type(m).__name__.lower())}"
            for m in field.metadata
            if type(m).__name__.lower() in FIELD_LIMITS
        ]
        kind = _type(field.annotation) + (f" ({', '.join(limits)})" if limits else "")
        rows.append(
            f"| `{section}.{name}` | {kind} | {_value(field.get_default(call_default_factory=True))} | "
            f"{field.description or ''} |"
        )
    return rows


def config_page() -> str:
    from pyrovae.model.base import CONTEXT
    from pyrovae.model.components import signature
    from pyrovae.model.models import MODELS
    from pyrovae.run.config import DEFAULT_MODEL, SECTIONS

    out = [
        "# Config keys",
        "",
        "Generated from the settings classes and the model constructors at every build of these pages. "
        "A TOML file (`pyrovae train CONFIG.toml`), `--set section.key=value` and the keyword arguments of "
        "`train(...)`, `Trainer(...)` and `load_data(...)` are checked by the same classes: a value refused in "
        "one is refused in the others, with one line.",
        "",
    ]
    for section, cls in SECTIONS.items():
        out += [
            f"## `[{section}]`",
            "",
            inspect.getdoc(cls).splitlines()[0],
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
            *settings_rows(section, cls),
            "",
        ]
    out += [
        "## `[model]`",
        "",
        f"`name` picks the model class (default `{DEFAULT_MODEL['name']}`): an entry of the table below or "
        '`"package.module:Class"` ([your own model](../models.md)). Its other keys are that constructor\'s '
        "keyword arguments; `data_shape` and `num_classes` come from the data. `prior`, `guide` and "
        "`likelihood` are component tables (`[model.guide]`: `name` plus that component's arguments, "
        "[the model zoo](../zoo.md)). The default `[model]` is the MNIST baseline:",
        "",
        "```toml",
        "[model]",
        *(f"{k} = {_toml(v)}" for k, v in DEFAULT_MODEL.items() if not isinstance(v, dict)),
        *sum(
            (
                [f"[model.{k}]", *(f"{a} = {_toml(b)}" for a, b in v.items())]
                for k, v in DEFAULT_MODEL.items()
                if isinstance(v, dict)
            ),
            [],
        ),
        "```",
        "",
    ]
    for name, cls in MODELS.items():
        params = [(p, param) for p, param in signature(cls).items() if p not in CONTEXT]
        out += [
            f'### `name = "{name}"`: {cls.__name__}',
            "",
            inspect.getdoc(cls).splitlines()[0],
            "",
            "| key | default |",
            "|---|---|",
            *(
                f"| `model.{p}` | {'(required)' if param.default is param.empty else _value(param.default)} |"
                for p, param in params
            ),
            "",
        ]
    return "\n".join(out)


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def cli_page() -> str:
    from pyrovae.cli.main import build_parser

    parser = build_parser()
    out = [
        "# Command line",
        "",
        "Generated from the parser `pyrovae` builds, at every build of these pages. "
        "`pyrovae COMMAND --help` prints the same.",
        "",
        "Every command prints a problem you can fix as one line, `pyrovae: error: ...`, exits with status 2 and "
        "leaves no MLflow run RUNNING; `pyrovae --debug COMMAND ...` shows the traceback.",
        "",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        out += [
            f"## `pyrovae {name}`",
            "",
            "```text",
            command.format_usage().strip(),
            "```",
            "",
            _plain(command.description or ""),
            "",
            "| option | default | meaning |",
            "|---|---|---|",
        ]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = ", ".join(action.option_strings) or action.metavar or action.dest
            default = (
                ""
                if action.default in (None, argparse.SUPPRESS) or action.option_strings == []
                else _value(action.default)
            )
            out.append(f"| `{flag}` | {default} | {(action.help or '').replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


def _plain(text: str) -> str:
    """A command module's docstring as Markdown (its ``literal`` markup kept as code)."""
    return text.replace("``", "`").strip()


def write_pages(app) -> None:
    folder = Path(app.srcdir) / "reference"
    folder.mkdir(exist_ok=True)
    for name, page in (("config.md", config_page()), ("cli.md", cli_page())):
        path = folder / name
        if not path.exists() or path.read_text() != page:  # unchanged pages are not rebuilt
            path.write_text(page)


def setup(app):
    app.connect("builder-inited", write_pages)
    return {"parallel_read_safe": True, "version": "1"}
