"""Sphinx configuration of the ekn documentation (Markdown pages via myst-parser)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ekn_core import __version__  # noqa: E402

project = "ekn"
author = "the ekn developers"
copyright = "2026, the ekn developers (GPLv3)"
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
html_theme = "alabaster"
suppress_warnings = ["myst.xref_missing"]
