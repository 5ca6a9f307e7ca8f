"""``python -m pyrovae ...`` is the ``pyrovae`` command (for environments without the console script)."""

from pyrovae.cli import main

raise SystemExit(main())
