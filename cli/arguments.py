"""The positional arguments and output files of the commands, checked before any work."""

from __future__ import annotations

from pathlib import Path

from splitter.errors import UsageError


def model_and_spec(first: str | None, second: str | None) -> tuple[str | None, str]:
    """`[MODEL] SPEC`: a lone positional ending in .yaml/.yml is the SPEC."""
    if first is None:
        raise UsageError(
            "pass `[MODEL] SPEC`, e.g. `splitter verify model.py spec.yaml`, or SPEC alone when "
            "its `model.ref` names the model"
        )
    if second is not None:
        return first, second
    if first.endswith((".yaml", ".yml")):
        return None, first
    raise UsageError(f"`{first}` is not a spec file; pass `[MODEL] SPEC` with SPEC a .yaml file")


def writable(output: str | None, force: bool) -> Path | None:
    """The `-o` file `partition` writes the spec to: new, or replaced only with --force."""
    if output is None:
        return None
    path = Path(output)
    if path.exists() and not force:
        raise UsageError(
            f"-o `{output}` exists; pass --force to overwrite it, or choose another file"
        )
    if path.is_dir():
        raise UsageError(f"-o `{output}` is a folder; name a .yaml file")
    return path


def compile_args(first: str | None, second: str | None) -> tuple[str | None, str | None]:
    """`[MODEL] [SPEC]`: either may go; a lone .yaml/.yml positional is the SPEC."""
    if first is None:
        raise UsageError("pass MODEL, SPEC or both, e.g. `splitter compile model.py spec.yaml`")
    if second is not None or first.endswith((".yaml", ".yml")):
        return model_and_spec(first, second)
    return first, None
