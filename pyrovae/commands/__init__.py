"""One module per ``pyrovae`` subcommand.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
``COMMANDS`` below is the whole list, in the order ``pyrovae --help`` shows them.
"""

from pyrovae.commands import evaluate, resume, sample, train

COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "resume": resume,
    "sample": sample,
}
