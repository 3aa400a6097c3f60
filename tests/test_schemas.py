"""The split spec: its models, the generated JSON Schema, and a loader that places problems."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import LoadedSpec, SplitSpec, json_schema, load_spec, parse_size, parse_spec
from splitter.errors import SpecError, SplitterError

SCHEMA_FILE = Path(__file__).parent.parent / "schemas" / "split-spec.schema.json"

SMALLEST = """\
version: 1
partition:
  cuts: [layer1.2, layer2.1, layer3.0]
aux:
  default: {kind: linear}
"""

PLACE = re.compile(r"^spec\.yaml, line (\d+), column (\d+): (.+)$")


def problems(text: str) -> list[tuple[int, int, str]]:
    """The (line, column, message) of every problem `text` has; fails if it loads."""
    with pytest.raises(SpecError) as caught:
        parse_spec(text, source="spec.yaml")
    found = []
    for problem in caught.value.problems:
        match = PLACE.match(problem)
        assert match is not None, problem
        found.append((int(match[1]), int(match[2]), match[3]))
    return found


def only_problem(text: str) -> tuple[int, int, str]:
    (found,) = problems(text)
    return found


# The schema file


def test_schema_file_matches_the_models() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == json_schema(), "schema drifted from the models: run `python -m schemas`"
    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == text, "run `python -m schemas`"


def test_schema_documents_every_field() -> None:
    definitions = json_schema()["$defs"]
    for name, definition in definitions.items():
        for key, field in definition["properties"].items():
            assert field.get("description"), f"{name}.{key} has no docstring"
    assert json_schema()["required"] == ["version", "partition"]
    assert "kind" in definitions["ConvAux"]["required"]


# Loading valid specs


def test_smallest_spec_loads_as_written() -> None:
    loaded = parse_spec(SMALLEST, source="spec.yaml")
    spec = loaded.spec
    assert spec.partition.cuts == ["layer1.2", "layer2.1", "layer3.0"]
    assert spec.partition.auto is None
    assert spec.aux.default.kind == "linear"
    assert loaded.positions[("partition", "cuts", 2)] == (3, 30)
    assert loaded.where("partition", "cuts", 1) == "spec.yaml, line 3, column 20"
    assert loaded.where("training", "epochs") == "spec.yaml, line 1, column 1"
    assert loaded.problem(("aux", "default", "kind"), "bad") == "spec.yaml, line 5, column 19: bad"


def test_defaults() -> None:
    spec = parse_spec("version: 1\npartition: {auto: {blocks: 4}}\n").spec
    aux = spec.aux.default
    assert aux.kind == "momentum"
    assert (aux.decay, aux.init, aux.learnable_scale, aux.head.kind) == (
        0.995,
        "fresh",  # MAN's and MAN++'s code: LB and EMA start as new random copies
        True,
        "conv",
    )
    assert spec.partition.auto is not None
    assert (spec.partition.auto.blocks, spec.partition.auto.balance) == (4, "memory")
    assert spec.partition.shared_params == "error"
    training = spec.training
    assert (spec.task.loss, spec.task.targets, training.loss) == ("cross_entropy", None, None)
    assert (training.epochs, training.batch_size) == (10, 128)
    assert (training.optimizer.name, training.optimizer.lr) == ("sgd", 0.05)
    assert training.optimizer.weight_decay == 5e-4
    assert (training.optimizer_scope, training.schedule.name) == ("block", "cosine")
    assert (training.precision, training.devices, training.data.name) == (
        "fp32",
        ["auto"],
        "digits",
    )
    assert (spec.trace.auto_leaf, spec.model.ref, spec.output.dir) == (True, None, None)


def test_models_are_frozen() -> None:
    spec = parse_spec(SMALLEST).spec
    with pytest.raises(ValueError, match="frozen"):
        spec.version = 1


def test_budget_and_aux_overrides_load() -> None:
    text = (
        "version: 1\npartition: {auto: {budget: 512MiB, balance: flops}}\n"
        "aux:\n  blocks:\n    0: {kind: conv, width: 64}\n    '2': {kind: infopro}\n"
    )
    spec = parse_spec(text).spec
    assert spec.partition.auto is not None and spec.partition.auto.budget == 512 * 2**20
    assert spec.aux.blocks[0].kind == "conv" and spec.aux.blocks[2].kind == "infopro"


def test_load_spec_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SMALLEST, encoding="utf-8")
    loaded = load_spec(path)
    assert isinstance(loaded, LoadedSpec) and loaded.source == str(path)
    path.write_text("version: 1\npartition: {cutz: [a]}\n", encoding="utf-8")
    with pytest.raises(SpecError, match=rf"{re.escape(str(path))}, line 2, column 13"):
        load_spec(str(path))


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SplitterError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


# Each bad input: its place and a fix


def test_malformed_yaml() -> None:
    line, column, message = only_problem("version: 1\npartition:\n  cuts: [a, b\naux: x\n")
    assert (line, column) == (4, 4)
    assert "invalid YAML" in message and "check the indentation" in message


def test_unknown_keys_suggest_the_nearest() -> None:
    found = problems("version: 1\npartiton:\n  cuts: [a]\n")
    assert (2, 1, "unknown key `partiton`; did you mean `partition`?") in found
    assert any("missing key `partition`" in message for _, _, message in found)
    found = problems("version: 1\npartition:\n  cutz: [a]\n")
    assert found == [(3, 3, "unknown key `cutz`; did you mean `cuts`?")]


def test_unknown_key_without_a_near_one_lists_the_keys() -> None:
    _, _, message = only_problem(
        "version: 1\npartition: {cuts: [a]}\naux: {default: {kind: linear, width: 8}}\n"
    )
    assert "`kind`, `layout`" in message and "option of `conv`" in message


def test_wrong_type() -> None:
    text = "version: 1\npartition: {cuts: [a]}\ntraining:\n  epochs: ten\n"
    line, column, message = only_problem(text)
    assert (line, column) == (4, 11)
    assert "`training.epochs: ten`" in message and "valid integer" in message
    assert "`epochs: 10`" in message


def test_bad_enum_value() -> None:
    text = "version: 1\npartition:\n  auto: {blocks: 4, balance: speed}\n"
    line, column, message = only_problem(text)
    assert (line, column) == (3, 30)
    assert "speed" in message and "'memory', 'flops', 'params' or 'units'" in message


def test_bad_size() -> None:
    line, column, message = only_problem("version: 1\npartition:\n  auto: {budget: 8 gigs}\n")
    assert (line, column) == (3, 18)
    assert "`8 gigs` is not a size" in message and "8GiB" in message


def test_cuts_and_auto_both_given() -> None:
    text = "version: 1\npartition:\n  cuts: [a]\n  auto: {blocks: 2}\n"
    line, _, message = only_problem(text)
    assert line == 4 and "both `cuts` and `auto`; keep one" in message


def test_cuts_and_auto_neither_given() -> None:
    line, _, message = only_problem("version: 1\npartition:\n  shared_params: owner\n")
    assert line == 2 and "needs `cuts` or `auto`" in message
    line, _, message = only_problem("version: 1\npartition:\n  auto: {balance: flops}\n")
    assert line == 3 and "needs `blocks` or `budget`" in message
    line, _, message = only_problem("version: 1\npartition:\n  cuts: []\n")
    assert line == 3 and "`cuts` is empty" in message


def test_sync_needs_global_scope() -> None:
    text = "version: 1\npartition:\n  cuts: [a]\n  shared_params: sync\n"
    line, column, message = only_problem(text)
    assert (line, column) == (4, 18)
    assert "needs `training.optimizer_scope: global`" in message
    assert "set `training.optimizer_scope: global`" in message
    parse_spec(text + "training: {optimizer_scope: global}\n")


def test_version_two() -> None:
    line, column, message = only_problem("version: 2\npartition: {cuts: [a]}\n")
    assert (line, column) == (1, 10)
    assert "only version 1" in message and "`version: 1`" in message
    _, _, message = only_problem("partition: {cuts: [a]}\n")
    assert message == "missing key `version`; add `version: 1` at the top"


def test_unknown_aux_kind() -> None:
    text = "version: 1\npartition: {cuts: [a]}\naux:\n  default: {kind: convolution}\n"
    line, column, message = only_problem(text)
    assert (line, column) == (4, 19)
    assert "`convolution` is not an auxiliary kind" in message and "`mlaan`" in message
    head = "aux:\n  default: {kind: momentum, head: {kind: momentum}}\n"
    text = "version: 1\npartition: {cuts: [a]}\n" + head
    _, _, message = only_problem(text)
    assert "`momentum` is not an auxiliary kind here" in message and "`infopro`" in message


def test_a_misspelled_kind_is_named_with_the_fix() -> None:
    """`knd:` is reported as the unknown key it is, not as a missing `kind`."""
    text = "version: 1\npartition: {cuts: [a]}\naux:\n  default: {knd: linear}\n"
    line, column, message = only_problem(text)
    assert (line, column) == (4, 13)
    assert message.startswith("unknown key `knd`; did you mean `kind`?") and "`mlaan`" in message
    text = "version: 1\npartition: {cuts: [a]}\naux:\n  blocks:\n    0: {type: conv, width: 8}\n"
    line, _, message = only_problem(text)
    assert line == 5 and "unknown key `type`; did you mean `kind`?" in message
    _, _, message = only_problem("version: 1\npartition: {cuts: [a]}\naux: {default: {width: 8}}\n")
    assert "`aux.default` has no `kind`; add `kind:`" in message


def test_bad_value_inside_an_aux_override() -> None:
    text = "version: 1\npartition: {cuts: [a]}\naux:\n  blocks:\n    1: {kind: conv, width: -3}\n"
    line, column, message = only_problem(text)
    assert (line, column) == (5, 28)
    assert "`aux.blocks.1.width: -3`" in message and "greater than 0" in message


def test_not_a_mapping() -> None:
    assert "not a list" in only_problem("- a\n- b\n")[2]
    assert "empty" in only_problem("")[2]


def test_duplicate_key() -> None:
    line, _, message = only_problem("version: 1\npartition: {cuts: [a]}\nversion: 1\n")
    assert line == 3 and "given twice" in message


def test_every_problem_is_reported_at_once() -> None:
    text = """\
version: 2
partition:
  cuts: [a]
  auto: {blocks: 4}
training:
  epochs: ten
  precison: bf16
  devices: [cpu, gpu]
aux:
  default: {kind: convv}
  blocks:
    1: {kind: conv, width: -3}
"""
    found = problems(text)
    assert [line for line, _, _ in found] == [1, 4, 6, 7, 8, 10, 12]
    with pytest.raises(SpecError, match="the split spec has 7 problems"):
        parse_spec(text)


# parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 * 2**30),
        ("8GB", 8 * 10**9),
        ("512MiB", 512 * 2**20),
        ("500MB", 500 * 10**6),
        ("4KiB", 4096),
        ("4KB", 4000),
        ("1024", 1024),
        (1024, 1024),
        ("1.5 KiB", 1536),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("junk", ["8 gigs", "GiB", "", "-1GB", "8GiBs", "1e9", -5, True])
def test_parse_size_rejects_junk(junk: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a size.*8GiB"):
        parse_size(junk)


# Properties

layouts = st.sampled_from(["auto", "nchw", "nhwc", "nlc", "ncl", "nc"])
small = st.integers(min_value=1, max_value=512)
unit = st.floats(min_value=0.01, max_value=0.99)
pairs = st.tuples(st.floats(0, 10), st.floats(0, 10))
heads = st.one_of(
    st.fixed_dictionaries({"kind": st.just("linear"), "layout": layouts}),
    st.fixed_dictionaries(
        {"kind": st.just("conv")},
        optional={"depth": st.integers(0, 4), "width": st.none() | small, "hidden": small},
    ),
    st.fixed_dictionaries(
        {"kind": st.just("infopro")}, optional={"lambda1": pairs, "width": small}
    ),
    st.fixed_dictionaries(
        {"kind": st.just("augmented")}, optional={"depth": small, "tau": st.floats(0, 1)}
    ),
    st.fixed_dictionaries({"kind": st.just("mlaan")}, optional={"window": small, "weights": pairs}),
)
auxes = heads | st.fixed_dictionaries(
    {"kind": st.just("momentum")},
    optional={"decay": unit, "init": st.sampled_from(["copy", "fresh"]), "head": heads},
)
names = st.text("abcdefgh.0123456789_", min_size=1, max_size=12)
partitions = st.one_of(
    st.fixed_dictionaries({"cuts": st.lists(names, min_size=1, max_size=5)}),
    st.fixed_dictionaries(
        {
            "auto": st.fixed_dictionaries({"blocks": st.integers(2, 64)})
            | st.fixed_dictionaries({"budget": small})
        }
    ),
)
specs = st.fixed_dictionaries(
    {"version": st.just(1), "partition": partitions},
    optional={
        "model": st.fixed_dictionaries(
            {},
            optional={
                "ref": names,
                "input_shape": st.lists(small, max_size=3),
                "output": st.integers() | names,
            },
        ),
        "aux": st.fixed_dictionaries(
            {},
            optional={
                "default": auxes,
                "blocks": st.dictionaries(st.integers(0, 9), auxes, max_size=3),
            },
        ),
        "training": st.fixed_dictionaries(
            {},
            optional={
                "epochs": small,
                "devices": st.lists(st.sampled_from(["auto", "cpu", "cuda", "cuda:1"]), min_size=1),
                "optimizer": st.fixed_dictionaries(
                    {"name": st.sampled_from(["sgd", "adamw"]), "lr": unit}
                ),
                "precision": st.sampled_from(["fp32", "bf16", "fp16"]),
            },
        ),
    },
)
fast = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@fast
@given(specs)
def test_valid_specs_round_trip_through_yaml(data: dict[str, Any]) -> None:
    spec = SplitSpec.model_validate(data)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    loaded = parse_spec(text)
    assert loaded.spec == spec
    assert all(line >= 1 and column >= 1 for line, column in loaded.positions.values())


@fast
@given(st.text(max_size=200))
def test_junk_text_raises_only_spec_errors(text: str) -> None:
    try:
        parse_spec(text)
    except SpecError as error:
        assert all(PLACE.match(p.replace("<spec>", "spec.yaml", 1)) for p in error.problems)


junk_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)
section_names = st.sampled_from(
    ["version", "model", "trace", "partition", "aux", "training", "output"]
)


@fast
@given(st.dictionaries(section_names | st.text(max_size=8), junk_values, max_size=6) | junk_values)
def test_junk_documents_raise_only_spec_errors(data: object) -> None:
    try:
        parse_spec(yaml.safe_dump(data))
    except SpecError as error:
        assert error.problems
