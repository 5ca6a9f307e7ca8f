"""Sphinx configuration of pyrovae's documentation: ``sphinx-build -W -b html docs docs/_build/html``."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
# the tutorials' kernels import the example model of experiments/, as a user's PYTHONPATH would
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(HERE.parent / "experiments"), os.environ.get("PYTHONPATH")])
)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

project = "pyrovae"
author = "the pyrovae developers"
copyright = "2026, the pyrovae developers"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "reference_pages",
]
html_theme = "furo"
html_title = "pyrovae"
source_suffix = {".md": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # every tutorial runs at every build: a broken example fails the build
nb_execution_timeout = 600
nb_execution_raise_on_error = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
suppress_warnings = ["myst.header"]
