"""The package's settings: spec.lock.yaml beside this file, read once for every module."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import yaml
except ImportError:  # torch does not depend on it
    sys.exit("train.py reads spec.lock.yaml with PyYAML: `pip install pyyaml`")

HERE = Path(__file__).resolve().parent
LOCK = yaml.safe_load((HERE / "spec.lock.yaml").read_text())
TRAINING, PACKAGE = LOCK["training"], LOCK["package"]
"""The lock's `training` and `package` sections: the flags' defaults, the model's builder,
classes, fingerprint and block FLOPs. Every module shares these very dicts."""


class ConfigError(ValueError):
    """A setting this run cannot honour; the message names it and the fix."""
