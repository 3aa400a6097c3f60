"""Every example in examples/ runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import EXAMPLES

MODELS = sorted(EXAMPLES.glob("*/model.py"))


@pytest.mark.parametrize("model", MODELS, ids=[m.parent.name for m in MODELS])
def test_example_inspects(cli: CliRunner, model: object) -> None:
    result = cli.invoke(app, ["inspect", str(model), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cut_points"] and report["units"] and report["leafed"] == []


SPECS = sorted(EXAMPLES.glob("*/spec.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[s.parent.name for s in SPECS])
def test_example_spec_verifies(cli: CliRunner, spec: object) -> None:
    result = cli.invoke(app, ["verify", str(spec), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ok"]


def test_there_are_examples() -> None:
    assert len(MODELS) >= 2 and len(SPECS) == len(MODELS)
