"""Model references (`model.py[:NAME]`, `torchvision:NAME`, `timm:NAME`) and their inputs."""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from splitter.errors import ModelLoadError, UsageError
from splitter.frontend.inputs import InputOption, InputSpec, example_inputs_of, resolve_inputs

if TYPE_CHECKING:
    from schemas import SplitSpec

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
DEFAULT_BATCH_SIZE = 32
DEFAULT_IMAGE_SHAPE = (3, 224, 224)


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The model options every command that takes MODEL shares (DESIGN 1.1)."""

    model_args: Mapping[str, object] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    more_inputs: tuple[InputOption, ...] = ()
    """The second and later inputs' (shape, dtype), either None where not given."""
    batch_size: int | None = None
    precision: Precision | None = None
    leaves: tuple[str, ...] = ()


@dataclass
class LoadedModel:
    """A built model, its input, and the notes made while resolving them."""

    ref: str
    name: str
    module: nn.Module
    inputs: tuple[InputSpec, ...]
    """The forward's tensor inputs, in order; the first is the one blocks carry."""
    batch_size: int
    precision: Precision
    warnings: list[str] = field(default_factory=list)

    @property
    def input(self) -> InputSpec:
        return self.inputs[0]


# ---------------------------------------------------------------- command-line value parsing


def parse_model_args(pairs: list[str]) -> dict[str, object]:
    """`k=v` pairs; values are Python literals, anything else is taken as a string."""
    args: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(
                f"--model-arg `{pair}` is not `name=value`; write e.g. `--model-arg depth=32`"
            )
        try:
            args[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            args[key.strip()] = raw
    return args


def check_precision(name: str) -> Precision:
    """`fp32`, `bf16` or `fp16`."""
    for p in PRECISIONS:
        if name == p:
            return p
    raise UsageError(f"--precision `{name}` is unknown; use one of {', '.join(PRECISIONS)}")


# ---------------------------------------------------------------- model references


def load_model(ref: str, options: ModelOptions | None = None) -> LoadedModel:
    """Resolve MODEL, build it in train mode, and resolve its input (DESIGN 1.1)."""
    options = options or ModelOptions()
    notes: list[str] = []
    if ref.startswith("torchvision:"):
        name = ref.split(":", 1)[1]
        module, default = _build_torchvision(name, options.model_args), DEFAULT_IMAGE_SHAPE
        example: tuple[torch.Tensor, ...] | None = None
    elif ref.startswith("timm:"):
        name = ref.split(":", 1)[1]
        module = _build_timm(name, options.model_args)
        cfg: dict[str, Any] = getattr(module, "pretrained_cfg", {})
        default, example = tuple(cfg.get("input_size", DEFAULT_IMAGE_SHAPE)), None
    else:
        name, module, example = _build_from_file(ref, options.model_args)
        default = None
    given = [(options.input_shape, options.input_dtype), *options.more_inputs]
    return LoadedModel(
        ref=ref,
        name=name,
        module=module.train(),
        inputs=resolve_inputs(ref, given, example or (), default, notes),
        batch_size=options.batch_size or DEFAULT_BATCH_SIZE,
        precision=options.precision or "fp32",
        warnings=notes,
    )


def _build_torchvision(name: str, kwargs: Mapping[str, object]) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise _not_a_model("torchvision", name, known)
    builder = torchvision.models.get_model_builder(name)
    defaults = torchvision_defaults(name)
    return _call_builder(f"torchvision:{name}", builder, {**defaults, **kwargs})


def _not_a_model(library: str, name: str, known: list[str]) -> ModelLoadError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(f'`{library}:{c}`' for c in close)}? " if close else ""
    lister = f"{library}{'.models' * (library == 'torchvision')}.list_models()"
    return ModelLoadError(
        f"`{library}:{name}` is not a {library} model; {hint}"
        f"`python -c 'import {library}; print({lister})'` lists them"
    )


def torchvision_defaults(name: str) -> dict[str, object]:
    """Keyword arguments that build torchvision's `name` randomly initialised (no download)."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    defaults: dict[str, object] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        defaults["weights_backbone"] = None
    return defaults


def _build_timm(name: str, kwargs: Mapping[str, object]) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ModelLoadError(
            f"`timm:{name}` needs timm, which is not installed; run `pip install 'splitter[timm]'`"
        ) from e
    if not timm.is_model(name):
        raise _not_a_model("timm", name, timm.list_models())
    return _call_builder(f"timm:{name}", timm.create_model, {"pretrained": False, **kwargs}, name)


def _build_from_file(
    ref: str, kwargs: Mapping[str, object]
) -> tuple[str, nn.Module, tuple[torch.Tensor, ...] | None]:
    path_text, attr = split_file_ref(ref)
    path = Path(path_text)
    user_module = import_model_file(path)
    builder = getattr(user_module, attr, None)
    if not callable(builder):
        found = [n for n, v in vars(user_module).items() if _is_model_factory(v)]
        hint = f"it defines {', '.join(f'`{n}`' for n in found)}; " if found else ""
        raise ModelLoadError(
            f"`{path}` has no callable `{attr}`; {hint}define `def {attr}(**kwargs) -> nn.Module`"
            f" in it, or name another callable or class with `{path}:NAME`"
        )
    module = _call_builder(ref, builder, kwargs)
    example = example_inputs_of(user_module, path, module)
    return path.stem if attr == "build_model" else attr, module, example


def split_file_ref(ref: str) -> tuple[str, str]:
    """`path.py:NAME` to (`path.py`, `NAME`); a plain path calls `build_model`."""
    head, sep, tail = ref.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return head, tail
    return ref, "build_model"


def _is_model_factory(value: object) -> bool:
    if isinstance(value, type):
        return issubclass(value, nn.Module) and value.__module__ not in ("torch.nn",)
    return inspect.isfunction(value) and not value.__name__.startswith("_")


def import_model_file(path: Path) -> ModuleType:
    """Import a user's model file (this runs their code) with its folder importable."""
    if not path.is_file():
        close = nearest_file(path)
        hint = f"did you mean `{close}`? " if close else ""
        there = "is a folder" if path.is_dir() else "does not exist"
        raise ModelLoadError(
            f"model file `{path}` {there}; {hint}pass a Python file that defines "
            "`build_model(**kwargs)`, `torchvision:NAME` or `timm:NAME`"
        )
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"_splitter_user_{resolved.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"`{path}` cannot be imported as Python; pass a `.py` file")
    module = importlib.util.module_from_spec(spec)
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[module_name]
        raise ModelLoadError(
            f"`{path}`, line {e.lineno}: syntax error: {e.msg}; fix the model file and run again"
        ) from None
    except Exception as e:
        del sys.modules[module_name]
        raise ModelLoadError(
            f"importing `{path}` raised {type(e).__name__}: {e} ({_user_frame(e)}); "
            "fix the model file and run again"
        ) from None
    return module


def nearest_file(path: Path) -> Path | None:
    """The Python file a mistyped `path` most likely means, each missing part replaced by the
    closest name in its folder (`exmaples/` by `examples/`, `model.pyy` by `model.py`); for a
    folder, its Python file closest to `model.py`. None when nothing is close."""
    current = Path(path.anchor)
    parts = [*path.parts[1 if path.anchor else 0 :], *([""] if path.is_dir() else [])]
    for k, part in enumerate(parts):
        if part and (current / part).exists():
            current = current / part
            continue
        try:
            last = k == len(parts) - 1
            names = [p.name for p in current.iterdir() if p.suffix == ".py" or not last]
        except OSError:
            return None
        close = difflib.get_close_matches(part or "model.py", names, 1, 0.6 if part else 0)
        if not close:
            return None
        current = current / close[0]
    return current if current.is_file() and current != path else None


def _call_builder(
    ref: str, builder: Callable[..., object], kwargs: Mapping[str, object], *args: object
) -> nn.Module:
    try:
        built = builder(*args, **kwargs)
    except Exception as e:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ModelLoadError(
            f"building `{ref}` with {given} raised {type(e).__name__}: {e} ({_user_frame(e)}); "
            "check the --model-arg values"
        ) from None
    if not isinstance(built, nn.Module):
        raise ModelLoadError(
            f"`{ref}` returned {type(built).__name__}, not an nn.Module; return the model itself"
        )
    return built


def _user_frame(error: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "no traceback"


def merge_options(cli: ModelOptions, spec: SplitSpec) -> tuple[ModelOptions, list[str]]:
    """Each model setting from the command line, else the spec (DESIGN 1.1)."""
    section, notes = spec.model, []
    listed = [(i.shape, i.dtype) for i in section.inputs or []]
    first_shape, first_dtype = (
        listed.pop(0) if listed else (section.input_shape, section.input_dtype)
    )
    shape = tuple(first_shape) if first_shape else None
    if cli.input_shape and shape and cli.input_shape != shape:
        notes.append(f"--input-shape overrides the spec's model.input_shape {list(shape)}")
    if cli.input_dtype and first_dtype and cli.input_dtype != first_dtype:
        notes.append(f"--input-dtype overrides the spec's model.input_dtype {first_dtype}")
    count = max(len(listed), len(cli.more_inputs))
    unset: list[tuple[Any, Any]] = [(None, None)] * count
    from_cli, from_spec = [*cli.more_inputs, *unset][:count], [*listed, *unset][:count]
    more = tuple(
        (cli_shape or (tuple(spec_shape) if spec_shape else None), cli_dtype or spec_dtype)
        for (cli_shape, cli_dtype), (spec_shape, spec_dtype) in zip(
            from_cli, from_spec, strict=True
        )
    )
    explicit = spec.training.model_fields_set
    batch = spec.training.batch_size if "batch_size" in explicit else None
    precision = spec.training.precision if "precision" in explicit else None
    merged = replace(
        cli,
        model_args={**section.kwargs, **cli.model_args},
        input_shape=cli.input_shape or shape,
        input_dtype=cli.input_dtype or first_dtype,
        more_inputs=more,
        batch_size=cli.batch_size or batch,
        precision=cli.precision or precision,
        leaves=(*spec.trace.leaf_modules, *cli.leaves),
    )
    return merged, notes
