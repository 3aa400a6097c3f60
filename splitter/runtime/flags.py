"""The flags of train.py: their defaults (spec.lock.yaml's), their help, and the checks of their
values, all before anything is built. A refused value raises `FlagError` (exit status 2)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import data
from memory import Allocator
from settings import HERE, TRAINING, FlagError

DEFAULT_OUT = str(Path("runs") / HERE.name)
"""`--out` by default: runs/<package folder name>, under the working folder."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; each flag's default after its help, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        none = (
            action.default is None or action.default is False or action.default == argparse.SUPPRESS
        )
        if none or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def data_set(name: str) -> str:
    """A `--data` value: a data set's name, or `text:PATH`."""
    if name in data.DATA_SETS or (name.startswith("text:") and len(name) > 5):
        return name
    known = ", ".join(data.DATA_SETS)
    raise argparse.ArgumentTypeError(f"`{name}` is not one of {known}, or text:PATH")


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (`FlagError`) instead of usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise FlagError(f"{message}; see `python train.py --help`")


def parser(description: str) -> Parser:
    p = Parser(description=description, formatter_class=HelpFormatter)
    p.add_argument(
        "--mode",
        choices=["local", "e2e"],
        default="local",
        help="local: each block on its own local loss; e2e: the unsplit model on the task loss",
    )
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="with --mode e2e: activation checkpointing at the block boundaries (each block's "
        "activations recomputed in the backward; the same weights, less memory, more time)",
    )
    p.add_argument(
        "--data",
        type=data_set,
        default=TRAINING["data"]["name"],
        help=f"the data set: {', '.join(data.DATA_SETS)}, or text:PATH (a language model)",
    )
    p.add_argument("--data-root", default=TRAINING["data"]["root"], help="folder of the data set")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train this many steps instead of --epochs (0, with --export: the initial weights)",
    )
    p.add_argument(
        "--epochs", type=int, default=TRAINING["epochs"], help="epochs to train (without --steps)"
    )
    p.add_argument("--batch-size", type=int, default=TRAINING["batch_size"], help="batch size")
    p.add_argument(
        "--seed",
        type=int,
        default=TRAINING["seed"],
        help="seed of the initial weights, the data order and every block's generators",
    )
    devices = " ".join(TRAINING["devices"])
    p.add_argument(
        "--device",
        nargs="+",
        default=TRAINING["devices"],
        help="one device, or several for groups of blocks (under torchrun: one per local rank)"
        f" (default: {devices})",
    )
    p.add_argument(
        "--stages",
        type=int,
        default=TRAINING["stages"],
        help="pipeline stages under torchrun (default: one per process)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a rank waits for another")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=TRAINING["precision"],
        help="fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler)",
    )
    p.add_argument("--channels-last", action="store_true", help="the channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile every block")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="folder of this run: run.json, checkpoint.pt, metrics.json, metrics.jsonl",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from the checkpoint PATH (without PATH: --out's checkpoint.pt)",
    )
    p.add_argument("--export", default=None, metavar="PATH", help="save the model's state_dict")
    p.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="steps between checkpoints, besides each epoch's end and the last step (0: none)",
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="write no checkpoint.pt (unrelated to --checkpoint, which recomputes activations)",
    )
    p.add_argument(
        "--eval-batches",
        type=int,
        default=None,
        help="evaluate on this many test batches (default: all)",
    )
    p.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    p.add_argument(
        "--malloc",
        choices=Allocator.CHOICES,
        default="trim",
        help="how freed memory goes back to the system (glibc): see memory.Allocator",
    )
    return p


def parse_args(argv: Sequence[str] | None, description: str = "") -> argparse.Namespace:
    """The flags, their values checked (`FlagError` names the value and the fix)."""
    args = parser(description).parse_args(argv)
    check(args)
    return args


def check(args: argparse.Namespace) -> None:
    """Refuse values no run can honour, before anything is built."""
    if args.steps is not None and args.steps < 0:
        raise FlagError(
            f"--steps {args.steps} is negative; pass the number of steps to train, e.g. "
            "--steps 100 (or --steps 0 with --export PATH to save the initial weights)"
        )
    if args.steps == 0 and not args.export:
        raise FlagError(
            "--steps 0 trains nothing and writes nothing; pass --steps 0 --export PATH to "
            "save the initial weights, or a positive --steps"
        )
    if args.steps == 0 and args.resume is not None:
        raise FlagError(
            "--steps 0 with --resume: --steps 0 saves the initial weights; to export a "
            "checkpoint's weights pass --resume with the --steps it was saved at and --export"
        )
    if args.steps is None and args.epochs < 1:
        raise FlagError(f"--epochs {args.epochs} trains nothing; pass --epochs 1 or more")
    at_least = {"--batch-size": 1, "--log-every": 1, "--save-every": 0, "--eval-batches": 0}
    at_least |= {"--threads": 1, "--stages": 1}
    for flag, least in at_least.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < least:
            raise FlagError(f"{flag} {value} is below {least}; pass {flag} {least} or more")
    if args.checkpoint and args.mode != "e2e":
        raise FlagError(
            "--checkpoint recomputes activations of the unsplit model; pass it with --mode e2e "
            "(local training already keeps one block's activations at a time)"
        )
    if args.timeout <= 0:
        raise FlagError(f"--timeout {args.timeout}: pass a positive number of seconds")
