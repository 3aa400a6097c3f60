"""Tasks beyond classification: a GPT-style decoder on next-token targets and a U-Net on
per-pixel targets compile and train, their local heads predict per token (causally) or per
pixel, the losses and metrics are the definitions', and the data has structure to learn."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cli.main import app
from schemas import parse_spec
from splitter import api
from splitter.api import compile_package
from splitter.errors import SpecError, SplitterError
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.runtime.auxiliary import Classifier, Momentum
from splitter.runtime.heads import ConvHead, LinearHead
from splitter.runtime.task import Task
from splitter.runtime.taskdata import chain, entropy, markov_tokens, masks
from tests.conftest import EXAMPLES

GPT, UNET = EXAMPLES / "tiny_gpt" / "model.py", EXAMPLES / "tiny_unet" / "model.py"
ADAMW = "optimizer: {name: adamw, lr: 0.003, weight_decay: 0.0}, "
CONSTANT = "schedule: {name: constant, warmup_epochs: 0}"


def gpt_spec(tmp_path: Path, aux: str = "{kind: momentum}", extra: str = "") -> str:
    path = tmp_path / "gpt.yaml"
    path.write_text(
        "version: 1\n"
        f"model: {{ref: {GPT}, input_shape: [32], input_dtype: int64}}\n"
        "partition: {cuts: [blocks.0, blocks.1, blocks.2]}\n"
        f"aux: {{default: {aux}}}\n"
        f"training: {{data: {{name: synthetic}}, batch_size: 32, {ADAMW}{CONSTANT}}}\n" + extra
    )
    return str(path)


def unet_spec(tmp_path: Path, aux: str = "{kind: conv}") -> str:
    path = tmp_path / "unet.yaml"
    path.write_text(
        "version: 1\n"
        f"model: {{ref: {UNET}, input_shape: [3, 16, 16]}}\n"
        "partition: {cuts: [stem, pre, refine]}\n"
        f"aux: {{default: {aux}}}\n"
        "training: {data: {name: synthetic}, batch_size: 16}\n"
    )
    return str(path)


def trained(spec: str, out: Path, steps: int, *flags: str) -> tuple[dict[str, Any], list[Any]]:
    """Compile `spec` into out/pkg, train `steps` steps; metrics.json and metrics.jsonl rows."""
    compile_package(None, spec, ModelOptions(), out=str(out / "pkg"))
    with load_package(out / "pkg") as train:
        args = ["--steps", str(steps), "--eval-batches", "2", "--out", str(out / "run"), *flags]
        metrics: dict[str, Any] = train.train(args)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    return metrics, rows


def falling(rows: list[Any], block: int, span: int = 4) -> tuple[float, float]:
    """The mean loss of `block` over the first and the last `span` steps."""
    losses = [row["block_losses"][block] for row in rows]
    return sum(losses[:span]) / span, sum(losses[-span:]) / span


# ---------------------------------------------------------------- language model


def test_a_gpt_decoder_trains_on_markov_tokens_its_local_and_final_losses_falling(
    tmp_path: Path,
) -> None:
    metrics, rows = trained(gpt_spec(tmp_path), tmp_path, 20)
    assert metrics["task"] == {"targets": "next_token", "loss": "cross_entropy"}
    for block in range(4):  # three momentum auxiliaries and the task loss
        first, last = falling(rows, block)
        assert last < first - 0.5, (block, first, last)
    assert rows[-1]["block_losses"][0] < math.log(64) - 1.0  # the chain has 1.11 nats
    assert set(metrics) >= {"test_accuracy", "test_loss", "test_perplexity"}
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]))
    assert metrics["test_perplexity"] < 64 / 2  # better than half a uniform guess
    assert metrics["evaluations"][-1]["test_perplexity"] == metrics["test_perplexity"]


def test_the_emitted_heads_predict_every_token_causally(tmp_path: Path) -> None:
    compile_package(None, gpt_spec(tmp_path), ModelOptions(), out=str(tmp_path / "pkg"))
    text = (tmp_path / "pkg" / "blocks.py").read_text()
    assert 'task = Task("next_token", "cross_entropy")' in text
    assert text.count("causal=True") == 3 and "Momentum(" in text
    lock = (tmp_path / "pkg" / "spec.lock.yaml").read_text()
    assert "targets: next_token" in lock and "loss: cross_entropy" in lock


def later_tokens_change(head: torch.nn.Module, t: int = 5) -> bool:
    """Whether the head's predictions at positions up to t move when the tokens after t do."""
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16)
    y = x.clone()
    y[:, t + 1 :] = torch.randn(2, 12 - t - 1, 16)
    head.eval()
    with torch.no_grad():
        a, b = head(x), head(y)
    return not torch.allclose(a[..., : t + 1], b[..., : t + 1])


def test_local_heads_of_next_tokens_see_no_later_token() -> None:
    spec = importlib.util.spec_from_file_location("tiny_gpt", GPT)
    assert spec is not None and spec.loader is not None
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    Block = gpt.Block

    causal = ConvHead((12, 16), "nlc", 10, depth=2, causal=True)
    assert not later_tokens_change(causal)
    assert later_tokens_change(ConvHead((12, 16), "nlc", 10, depth=2, dense=True))  # can fail
    assert not later_tokens_change(LinearHead((12, 16), "nlc", 10, dense=True))
    momentum = Momentum(Block(16, 4), Classifier(LinearHead((12, 16), "nlc", 10, dense=True)))

    class Mixed(torch.nn.Module):  # the momentum auxiliary's prediction before its head's loss
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            mixed = momentum.scale * momentum.lb(h) + momentum.frozen(h)
            out: torch.Tensor = momentum.head.head(mixed)
            return out

    assert not later_tokens_change(Mixed())


def test_an_auxiliary_that_cannot_serve_tokens_is_refused_with_those_that_can(
    tmp_path: Path,
) -> None:
    with pytest.raises(SplitterError) as error:
        compile_package(None, gpt_spec(tmp_path, "{kind: infopro}"), ModelOptions())
    message = str(error.value)
    assert "`infopro` cannot serve `next_token` targets" in message
    assert "`linear`, `conv`, `momentum`, `augmented`" in message


def test_a_byte_level_model_trains_on_a_local_text_file(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    spec = tmp_path / "bytes.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {GPT}, kwargs: {{vocab: 256, length: 16}}, "
        "input_shape: [16], input_dtype: int64}\n"
        "partition: {cuts: [blocks.1]}\naux: {default: {kind: linear}}\n"
        f"training: {{batch_size: 16, {ADAMW}{CONSTANT}}}\n"
    )
    metrics, rows = trained(str(spec), tmp_path, 12, "--data", f"text:{text}")
    assert metrics["data"] == f"text:{text}" and len(rows) == 12
    assert rows[-1]["block_losses"][1] < rows[0]["block_losses"][1] - 1.0
    with load_package(tmp_path / "pkg") as train:
        (tmp_path / "short.txt").write_text("too short")
        with pytest.raises(train.data.DataError, match="too few for windows of 17"):
            train.train(["--steps", "1", "--data", f"text:{tmp_path / 'short.txt'}", "--out",
                         str(tmp_path / "r2")])  # fmt: skip


# ---------------------------------------------------------------- segmentation


def test_a_unet_trains_on_per_pixel_targets_with_iou_in_the_metrics(tmp_path: Path) -> None:
    metrics, rows = trained(unet_spec(tmp_path), tmp_path, 16)
    assert metrics["task"] == {"targets": "pixel", "loss": "cross_entropy"}
    for block in range(4):
        first, last = falling(rows, block)
        assert last < first - 0.2, (block, first, last)
    assert 0 <= metrics["test_miou"] <= 1 and metrics["test_pixel_accuracy"] > 0.5
    assert metrics["test_accuracy"] == metrics["test_pixel_accuracy"]


def test_targets_are_inferred_printed_and_may_be_set(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["compile", unet_spec(tmp_path), "-o", str(tmp_path / "u")])
    assert result.exit_code == 0, result.output
    assert "task: pixel targets over 4 classes, cross_entropy (inferred from the float32 " in (
        result.output
    )
    example = api.load("examples/resnet_cifar/model.py", None, ModelOptions()).analysis
    from splitter.analysis.task import resolve_task

    assert resolve_task(example).targets == "class" and resolve_task(example).classes == 10
    spec = gpt_spec(tmp_path, "{kind: linear}", "task: {targets: per_token}\n")
    plan = api.plan(None, spec, ModelOptions())
    assert resolve_task(plan.analysis, plan.spec.spec.task).targets == "per_token"
    wrong = gpt_spec(tmp_path, "{kind: linear}", "task: {targets: pixel}\n")
    with pytest.raises(SplitterError, match=r"takes an output \(B, C, H, W\), but the model's "):
        compile_package(None, wrong, ModelOptions(), out=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_training_loss_is_taken_as_task_loss_with_a_note(tmp_path: Path) -> None:
    spec = unet_spec(tmp_path).replace("batch_size: 16", "batch_size: 16, loss: mse")
    path = tmp_path / "old.yaml"
    path.write_text(Path(spec).read_text().replace("batch_size: 16", "batch_size: 16, loss: mse"))
    plan = api.plan(None, str(path), ModelOptions())
    assert plan.spec.spec.task.loss == "mse"
    assert any("`training.loss: mse` is deprecated" in w for w in plan.analysis.model.warnings)
    both = "version: 1\npartition: {cuts: [a]}\ntask: {loss: bce}\ntraining: {loss: mse}\n"
    with pytest.raises(SpecError, match=r"`training.loss: mse` and `task.loss: bce` differ"):
        parse_spec(both)


# ---------------------------------------------------------------- losses and metrics


def test_the_losses_are_their_definitions() -> None:
    torch.manual_seed(0)
    tokens, y = torch.randn(3, 7, 5), torch.randint(0, 7, (3, 5))  # (B, V, T) and (B, T)
    nll = -sum(F.log_softmax(tokens[b, :, t], 0)[y[b, t]] for b in range(3) for t in range(5)) / 15
    assert Task("next_token")(tokens, y).item() == pytest.approx(float(nll), rel=1e-6)
    coarse, mask = torch.randn(2, 4, 4, 4), torch.randint(0, 4, (2, 8, 8))
    fine = F.interpolate(coarse, size=(8, 8), mode="bilinear")
    assert torch.equal(Task("pixel")(coarse, mask), F.cross_entropy(fine, mask))
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    hot = torch.eye(3)[labels]
    assert Task("class", "mse")(logits, labels).item() == pytest.approx(
        float(((logits - hot) ** 2).mean()), rel=1e-6
    )
    bce = -(hot * F.logsigmoid(logits) + (1 - hot) * F.logsigmoid(-logits)).mean()
    assert Task("class", "bce")(logits, labels).item() == pytest.approx(float(bce), rel=1e-6)


def test_perplexity_and_mean_iou_are_their_definitions() -> None:
    torch.manual_seed(0)
    score = Task("next_token").score(7)
    out, y = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))  # the model's (B, T, V)
    score.add(out[:1], y[:1])
    score.add(out[1:], y[1:])
    nll = F.cross_entropy(out.reshape(10, 7), y.reshape(10)).item()
    found = score.summary()
    assert found["test_perplexity"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert found["test_accuracy"] == (out.argmax(-1) == y).float().mean().item()
    pixels = Task("pixel").score(3)
    guess = torch.tensor([[[0, 0], [1, 1]]])  # class per pixel, as one-hot logits below
    truth = torch.tensor([[[0, 1], [1, 1]]])
    pixels.add(F.one_hot(guess, 3).movedim(-1, 1).float(), truth)
    # class 0: 1 / 2 (one pixel right of two guessed); class 1: 2 / 3; class 2 absent
    assert pixels.summary()["test_miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert pixels.summary()["test_pixel_accuracy"] == 0.75


# ---------------------------------------------------------------- data


def test_markov_tokens_follow_a_fixed_chain_below_log_v() -> None:
    successors, probs = chain(64)
    data = markov_tokens(64, 32, 200, seed=3)
    x, y = data.x, data.y
    assert torch.equal(x[:, 1:], y[:, :-1])  # the targets are the next tokens
    allowed = successors[x]  # (N, T, 4)
    assert bool((allowed == y.unsqueeze(-1)).any(-1).all())
    assert entropy() == pytest.approx(1.1097, abs=1e-4) and entropy() < math.log(64) - 3
    again = markov_tokens(64, 32, 200, seed=3)
    assert torch.equal(again.x, x) and torch.equal(chain(64)[0], successors)
    labelled = markov_tokens(64, 8, 10, seed=1, labels=5)
    before = torch.cat([torch.zeros(10, 1, dtype=torch.int64), labelled.x[:, :-1]], 1)
    assert torch.equal(labelled.y, (before + labelled.x) % 5)
    assert float(probs.sum()) == pytest.approx(1.0)


def test_masks_are_rectangles_in_their_class_colour() -> None:
    made = masks((3, 16, 16), 4, 8, seed=0)
    image, target = next(made.batches([[0, 1, 2]], 0))
    assert image.shape == (3, 3, 16, 16) and target.shape == (3, 16, 16)
    assert 0 < float((target > 0).float().mean()) < 1
    again = next(made.batches([[0, 1, 2]], 0))
    assert torch.equal(again[0], image) and torch.equal(again[1], target)
    means = [image.movedim(1, -1)[target == k].mean(0) for k in range(4) if (target == k).any()]
    assert len(means) >= 2 and float(torch.cdist(torch.stack(means), torch.stack(means)).max()) > 1


def test_a_classifier_keeps_cross_entropy_over_classes(tmp_path: Path) -> None:
    """The default task changes nothing for classifiers: no `task` in the emitted blocks."""
    model = copy.copy(str(Path("examples/resnet_cifar/model.py")))
    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"version: 1\nmodel: {{ref: {Path(model).resolve()}}}\n"
        "partition: {cuts: [layer2]}\naux: {default: {kind: linear}}\n"
    )
    compile_package(None, str(spec), ModelOptions(), out=str(tmp_path / "pkg"))
    text = (tmp_path / "pkg" / "blocks.py").read_text()
    assert "Task(" not in text and "Classifier(LinearHead(" in text


# ---------------------------------------------------------------- the user's loss

LOSSES = """
import torch.nn.functional as F


def smooth(output, target):
    return F.cross_entropy(output.movedim(-1, 1), target, label_smoothing=0.2)
"""


def test_a_loss_function_of_the_users_file_trains_every_block(tmp_path: Path) -> None:
    (tmp_path / "losses.py").write_text(LOSSES)
    spec = Path(gpt_spec(tmp_path, "{kind: linear}", "task: {loss: losses.py:smooth}\n"))
    pkg = tmp_path / "pkg"
    compile_package(None, str(spec), ModelOptions(), out=str(pkg))
    assert (pkg / "losses.py").read_text() == LOSSES
    assert 'task = Task("next_token", "losses.py:smooth")' in (pkg / "blocks.py").read_text()
    with load_package(pkg) as train:
        s, _ = train.prepare(train.parse_args(["--steps", "1", "--out", str(tmp_path / "r")]))
        x, y = next(s.dataset.train_batches(0, 4, 0))
        h = s.parts.blocks[0](x)
        logits = s.parts.auxiliaries[0].head(h)  # (B, V, T), channels first
        expected = F.cross_entropy(logits, y, label_smoothing=0.2)
        assert torch.equal(s.parts.auxiliaries[0](h, y, x)[0], expected)
        out, loss, _ = s.locals[3](h, y, x, [h], {})  # the task loss, on the model's output
        assert loss.item() > 0
        metrics = train.train(["--steps", "2", "--eval-batches", "1", "--out", str(tmp_path / "r")])
    assert metrics["task"]["loss"] == "losses.py:smooth" and len(metrics["block_losses"]) == 4
    missing = gpt_spec(tmp_path, "{kind: linear}", "task: {loss: losses.py:focal}\n")
    with pytest.raises(SplitterError, match=r"defines no function `focal`; its functions: `smooth`"):
        compile_package(None, missing, ModelOptions(), out=str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------- detection targets


def test_boxes_are_the_rectangles_of_the_masks_scenes() -> None:
    from splitter.runtime.taskdata import boxes

    images, targets = next(boxes((3, 16, 16), 5, 4, seed=0).batches([[0, 1, 2]], 0))
    same, masks_only = next(masks((3, 16, 16), 5, 4, seed=0).batches([[0, 1, 2]], 0))
    assert torch.equal(images, same) and torch.equal(targets.masks, masks_only)
    for mask, target in zip(targets.masks, targets.targets, strict=True):
        for (x1, y1, x2, y2), label in zip(target["boxes"].long(), target["labels"], strict=True):
            assert 0 <= x1 < x2 <= 16 and 0 <= y1 < y2 <= 16 and 1 <= label < 5
        last = target["boxes"][-1].long()  # drawn last, on top: its pixels carry its class
        assert bool((mask[last[1] : last[3], last[0] : last[2]] == target["labels"][-1]).all())
    assert len(targets) == 3 and targets.to("cpu").masks.shape == (3, 16, 16)
    task = Task("boxes", "model")
    logits = torch.randn(3, 5, 8, 8)
    fine = F.interpolate(logits, size=(16, 16), mode="bilinear")
    assert torch.equal(task(logits, targets), F.cross_entropy(fine, targets.masks))
    score = task.score(5)
    score.add({"a": torch.tensor(1.0), "b": torch.tensor(2.0)}, targets)
    score.add({"a": torch.tensor(0.5), "b": torch.tensor(0.5)}, targets)
    assert score.summary() == {"test_loss": 2.0}
