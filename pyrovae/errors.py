"""The one exception type that reaches a user as a single line.

Everything a user can get wrong (a config key, a file, a run id) raises :class:`UserError`
with a message that says what is wrong and what to do. The CLI prints that message alone
(no traceback unless ``--debug``) and exits with status 2.
"""


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message."""

    exit_code = 2


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit``."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
