"""Sphinx configuration of charlm's documentation: Markdown pages (MyST) in the furo theme.

`make docs` builds and serves it; `make test` builds it strictly (`-W`: every warning fails).
docs/_ext/config_keys.py writes configs/keys.md from the config schema at every build.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))  # autodoc reads the checkout's charlm, installed or not

import charlm  # noqa: E402

project = "charlm"
author = "the charlm authors"
copyright = "the charlm authors"
release = version = charlm.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "config_keys"]
source_suffix = {".md": "markdown"}
# comparison.md is scripts/compare_models.py's output, included into models/index.md.
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "comparison.md"]
root_doc = "index"

# No math extension: equations are written in Unicode, as in the code, so pages need no MathJax from a CDN.
myst_enable_extensions = ["deflist"]
myst_heading_anchors = 3  # [text](#a-heading) links work as on GitHub
highlight_language = "text"  # unlabelled blocks are shell sessions and output, not Python

# Docstrings use `single backticks` for code, as Markdown does: render them as code in autodoc too.
default_role = "literal"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}

html_theme = "furo"
html_title = f"charlm {release}"
html_static_path: list[str] = []
