"""The package's settings: spec.lock.yaml beside this file, read once for every module."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # torch does not depend on it
    sys.exit("error: train.py reads spec.lock.yaml with PyYAML (missing); `pip install pyyaml`")

HERE = Path(__file__).resolve().parent
"""The package folder; its name names the package (`--out` defaults to runs/<name>)."""
TEXT = (HERE / "spec.lock.yaml").read_text()
LOCK = yaml.safe_load(TEXT)
TRAINING, PACKAGE = LOCK["training"], LOCK["package"]
"""The lock's `training` and `package` sections: the flags' defaults, the model's builder,
classes, fingerprint and block FLOPs. Every module shares these very dicts."""


class ConfigError(ValueError):
    """A setting this run cannot honour; the message names it and the fix."""


class FlagError(ConfigError):
    """A flag's value refused before anything is built: exit status 2, argparse's own."""
