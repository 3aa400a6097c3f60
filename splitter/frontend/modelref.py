"""Model references (`model.py[:NAME]`, `torchvision:NAME`, `timm:NAME`) and their inputs."""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from splitter.errors import ModelLoadError, UsageError

if TYPE_CHECKING:
    from schemas import SplitSpec

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
DEFAULT_BATCH_SIZE = 32
DEFAULT_IMAGE_SHAPE = (3, 224, 224)
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool")
}


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The model options every command that takes MODEL shares (DESIGN 1.1)."""

    model_args: Mapping[str, object] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    batch_size: int | None = None
    precision: Precision | None = None
    leaves: tuple[str, ...] = ()


@dataclass(frozen=True)
class InputSpec:
    """One model input: per-sample shape, dtype, and example values when the model file has them."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    example: torch.Tensor | None = None

    def batch(self, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A real batch: the example repeated, else random floats or integer zeros."""
        if self.example is not None:
            reps = math.ceil(size / self.example.shape[0])
            return self.example.repeat(reps, *([1] * len(self.shape)))[:size].clone()
        if self.dtype.is_floating_point:
            return torch.randn((size, *self.shape), generator=generator).to(self.dtype)
        return torch.zeros((size, *self.shape), dtype=self.dtype)


@dataclass
class LoadedModel:
    """A built model, its input, and the notes made while resolving them."""

    ref: str
    name: str
    module: nn.Module
    input: InputSpec
    batch_size: int
    precision: Precision
    warnings: list[str] = field(default_factory=list)


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


def parse_input_shape(text: str) -> tuple[int, ...]:
    """`3,224,224` or `128` (per sample, any rank) to a tuple of positive ints."""
    parts = [p.strip() for p in re.split(r"[,x]", text)]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(
            f"--input-shape `{text}` is not a comma-separated list of positive integers; "
            "give the shape of one sample without the batch, e.g. `--input-shape 3,224,224` "
            "or `--input-shape 128`"
        )
    return tuple(int(p) for p in parts)


def parse_dtype(name: str) -> torch.dtype:
    """A dtype name such as `float32` or `int64`."""
    if name not in DTYPES:
        raise UsageError(f"--input-dtype `{name}` is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


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
        example = None
    elif ref.startswith("timm:"):
        name = ref.split(":", 1)[1]
        module = _build_timm(name, options.model_args)
        cfg: dict[str, Any] = getattr(module, "pretrained_cfg", {})
        default, example = tuple(cfg.get("input_size", DEFAULT_IMAGE_SHAPE)), None
    else:
        name, module, example = _build_from_file(ref, options.model_args)
        default = None
    spec = _resolve_input(ref, options, example, default, notes)
    return LoadedModel(
        ref=ref,
        name=name,
        module=module.train(),
        input=spec,
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
) -> tuple[str, nn.Module, torch.Tensor | None]:
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
    return path.stem if attr == "build_model" else attr, module, _example_from(user_module, path)


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


def _example_from(user_module: ModuleType, path: Path) -> torch.Tensor | None:
    make = getattr(user_module, "example_inputs", None)
    if make is None:
        return None
    value = make()
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        raise ModelLoadError(
            f"`{path}`: example_inputs() returned {type(value).__name__}; "
            "return a batched tensor (or a tuple whose first element is one)"
        )
    return value.detach()


# ---------------------------------------------------------------- inputs


def _resolve_input(
    ref: str,
    options: ModelOptions,
    example: torch.Tensor | None,
    default: tuple[int, ...] | None,
    notes: list[str],
) -> InputSpec:
    """Command line, else example_inputs(), else the model kind's default (DESIGN 1.1)."""
    example_shape = tuple(example.shape[1:]) if example is not None else None
    shape = options.input_shape or example_shape or default
    if shape is None:
        raise UsageError(
            f"`{ref}` defines no example_inputs(), so splitter cannot tell its input shape; "
            "pass --input-shape (per sample, e.g. `3,32,32`) or add `def example_inputs()` "
            "returning a batch to the model file"
        )
    dtype = parse_dtype(options.input_dtype) if options.input_dtype else None
    _warn_disagreement(options, example, notes)
    if example is not None and shape == example_shape:
        if dtype is not None and dtype != example.dtype:
            example = example.to(dtype)
        return InputSpec(shape, example.dtype, example)
    return InputSpec(shape, dtype or torch.float32, None)


def _warn_disagreement(
    options: ModelOptions, example: torch.Tensor | None, notes: list[str]
) -> None:
    if example is None:
        return
    example_shape = tuple(example.shape[1:])
    if options.input_shape and options.input_shape != example_shape:
        notes.append(
            f"--input-shape {','.join(map(str, options.input_shape))} overrides the shape "
            f"{','.join(map(str, example_shape))} of example_inputs()"
        )
    if options.input_dtype and DTYPES[options.input_dtype] != example.dtype:
        notes.append(
            f"--input-dtype {options.input_dtype} overrides the dtype "
            f"{str(example.dtype).removeprefix('torch.')} of example_inputs()"
        )


def merge_options(cli: ModelOptions, spec: SplitSpec) -> tuple[ModelOptions, list[str]]:
    """Each model setting from the command line, else the spec (DESIGN 1.1)."""
    section, notes = spec.model, []
    shape = tuple(section.input_shape) if section.input_shape else None
    if cli.input_shape and shape and cli.input_shape != shape:
        notes.append(f"--input-shape overrides the spec's model.input_shape {list(shape)}")
    if cli.input_dtype and section.input_dtype and cli.input_dtype != section.input_dtype:
        notes.append(f"--input-dtype overrides the spec's model.input_dtype {section.input_dtype}")
    explicit = spec.training.model_fields_set
    batch = spec.training.batch_size if "batch_size" in explicit else None
    precision = spec.training.precision if "precision" in explicit else None
    merged = replace(
        cli,
        model_args={**section.kwargs, **cli.model_args},
        input_shape=cli.input_shape or shape,
        input_dtype=cli.input_dtype or section.input_dtype,
        batch_size=cli.batch_size or batch,
        precision=cli.precision or precision,
        leaves=(*spec.trace.leaf_modules, *cli.leaves),
    )
    return merged, notes
