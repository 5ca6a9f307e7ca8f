"""One module per ``pyrovae`` subcommand.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
``COMMANDS`` below is the whole list, in the order ``pyrovae --help`` shows them.
"""

from pyrovae.cli import compare, evaluate, resume, sample, search, sweep, train, ui

COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "resume": resume,
    "sample": sample,
    "sweep": sweep,
    "search": search,
    "compare": compare,
    "ui": ui,
}
