"""The ``pyrovae`` command line.

Every command prints a problem the user can fix as one line, ``pyrovae: error: ...``, and
exits with status 2 (no traceback unless ``--debug``). Every command stops on SIGTERM as on
Ctrl-C (:mod:`pyrovae.cli.signals`): the MLflow runs and servers it holds end, none stays RUNNING.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback

from pyrovae.cli.commands import COMMANDS
from pyrovae.cli.signals import sigterm_as_interrupt, stopped
from pyrovae.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae", description="Variational autoencoders with Pyro, tracked in MLflow."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        description = re.sub(r":\w+:`~?([^`]+)`", r"\1", module.__doc__).replace("``", "")  # no RST in --help
        command = sub.add_parser(
            name, help=module.HELP, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        module.add_arguments(command)
        command.set_defaults(func=module.run)
    return parser


def say_on_stdout() -> None:
    """What pyrovae's library code logs (``logging.getLogger("pyrovae")``) printed as ``pyrovae: ...``
    lines: INFO on the command's standard output, warnings on standard error (so that ``compare
    --format json`` stays JSON)."""
    logger = logging.getLogger("pyrovae")
    for handler in [h for h in logger.handlers if getattr(h, "pyrovae_cli", False)]:
        logger.removeHandler(handler)
    infos = logging.StreamHandler(sys.stdout)
    infos.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    for handler in (infos, warnings):
        handler.setFormatter(logging.Formatter("pyrovae: %(message)s"))
        handler.pyrovae_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say_on_stdout()
    if args.debug:  # MLflow's INFO lines (schema creation, system metrics), quiet by default
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO")
    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except UserError as err:
        if args.debug:
            traceback.print_exc()
        # one write of the whole line: print() writes text and newline apart, and the ranks of a
        # torchrun job, refusing at once, interleaved them into one line on the shared stderr
        sys.stderr.write(f"pyrovae: error: {err}\n")
        sys.stderr.flush()
        return err.exit_code
    except KeyboardInterrupt as err:
        return stopped(err, "pyrovae")


if __name__ == "__main__":
    sys.exit(main())
