"""Runtime sources copied verbatim into every emitted training package.

Inside a package each file is a top-level module (`import pipeline`), so a runtime module imports
only torch, the standard library, PyYAML and its siblings, never `splitter`. The package's file
list is this folder's: add a module here and every package carries it.
"""

from pathlib import Path

FOLDER = Path(__file__).parent
FILES = tuple(sorted(p.name for p in FOLDER.glob("*.py") if p.name != "__init__.py"))
"""The runtime files every package carries."""
MODULES = tuple(name.removesuffix(".py") for name in FILES)
"""Their module names inside a package."""
