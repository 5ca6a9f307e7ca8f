"""The code blocks of the documentation, which tests run as users would."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def python_blocks(page: str, heading: str) -> list[str]:
    """The Python code blocks of one section (``heading`` up to the next ``## ``) of a Markdown page."""
    section = ROOT.joinpath(page).read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)
