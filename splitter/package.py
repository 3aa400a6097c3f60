"""An emitted package loaded in-process: its `train.py` is the one implementation of training."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from splitter.errors import SplitterError


@contextmanager
def load_package(folder: str | Path) -> Iterator[ModuleType]:
    """Import the package's `train` module (with its `blocks`, `auxiliary`, `data` and `model`)
    from `folder`; on exit, the interpreter's modules are as they were."""
    root = Path(folder).resolve()
    if not (root / "train.py").is_file() or not (root / "spec.lock.yaml").is_file():
        raise SplitterError(
            f"`{folder}` is not a splitter package (no train.py and spec.lock.yaml)"
        )
    names = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if p.is_dir()}
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    bytecode = sys.dont_write_bytecode
    sys.path.insert(0, str(root))
    sys.dont_write_bytecode = True  # leave no __pycache__ in the package
    try:
        yield importlib.import_module("train")
    finally:
        sys.path.remove(str(root))
        sys.dont_write_bytecode = bytecode
        for name in [m for m in sys.modules if m.split(".")[0] in names]:
            del sys.modules[name]
        sys.modules.update(saved)
