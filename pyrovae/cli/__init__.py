"""The ``pyrovae`` command line: thin commands over :mod:`pyrovae.run` (one module per command)."""

from pyrovae.cli.main import main

__all__ = ["main"]
