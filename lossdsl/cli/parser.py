"""The argument parser of ``lossdsl``: every command, its arguments and their checks.

Arguments are checked as they are read (a shape, a seed, a count in range), so a bad one is
a usage error with the command's usage (exit 2) before any work.

>>> args = build_parser().parse_args(["gradcheck", "mse", "--shape", "2,3"])
>>> args.command, args.shape
('gradcheck', (2, 3))
"""

from __future__ import annotations

import argparse
from typing import Callable

from .. import __version__
from .commands import cmd_balance, cmd_check, cmd_demo, cmd_explain, cmd_gradcheck, cmd_plot, cmd_schema, cmd_terms

__all__ = ["build_parser"]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (write e.g. 4,8,3)") from None
    if not shape or any(n <= 0 for n in shape):
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (positive sizes, e.g. 4,8,3)")
    return shape


def _named_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, shape = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"write NAME=SHAPE, e.g. mu=4,16 (got {text!r})")
    return name.strip(), _shape(shape)


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


_SEED = _bounded_int(0, 2**63 - 1)


def _program_args(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("expr", nargs="?", metavar="EXPR", help="the loss program ('-' reads stdin)")
    sub.add_argument("--config", metavar="FILE", help="read the program from a YAML/JSON/TOML config")
    sub.add_argument("--key", help="dotted key of the loss config inside FILE (default: top level or 'loss')")
    return sub


class _Parser(argparse.ArgumentParser):
    """argparse takes ``-mse`` (a program that starts with a minus) for an option: its usage
    error then says how to pass such a program."""

    def error(self, message: str):
        if "unrecognized arguments: -" in message:
            message += "\nhint: a program that starts with '-' goes after '--', e.g. lossdsl check -- '-mse'"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (each sub-parser is in ``args.parser``)."""
    parser = _Parser(prog="lossdsl", description="Check, explain and try out lossdsl loss programs.")
    parser.add_argument("--version", action="version", version=f"lossdsl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(run=run, parser=sub)
        return sub

    _program_args(command("check", cmd_check, "check a program or config; exit 1 with the error if invalid"))
    sub = _program_args(command("explain", cmd_explain, "show the resolved program: tree, terms, weights, inputs"))
    sub.add_argument("--graph", action="store_true",
                     help="print the code of the program's torch.fx graph instead")

    sub = command("terms", cmd_terms, "list the registered terms, or show one in full")
    sub.add_argument("name", nargs="?", metavar="NAME")

    sub = _program_args(command("gradcheck", cmd_gradcheck, "torch.autograd.gradcheck on random float64 inputs"))
    sub.add_argument("--shape", type=_shape, default=None,
                     help="shape of pred and target (default 4,8,3, or the shapes the terms need)")
    sub.add_argument("--input", type=_named_shape, action="append", metavar="NAME=SHAPE",
                     help="shape of another input, e.g. --input mu=4,16 (repeatable)")
    sub.add_argument("--seed", type=_SEED, default=0)

    sub = command("plot", cmd_plot, "draw the per-term curves of a JSONL log")
    sub.add_argument("log", metavar="LOG")
    sub.add_argument("-o", "--output", metavar="PNG", help="image to write (default: LOG with .png)")

    sub = command("balance", cmd_balance, "suggest weights from a JSONL log")
    sub.add_argument("log", metavar="LOG")
    sub.add_argument("expr", nargs="?", metavar="EXPR", help="the program to rewrite with the new weights")
    sub.add_argument("--config", metavar="FILE", help="read the program to rewrite from a config")
    sub.add_argument("--key", help="dotted key of the loss config inside FILE")
    sub.add_argument("--target", metavar="NAME=SHARE,...", help="target shares (default: equal)")

    sub = command("schema", cmd_schema, "print the JSON Schema of a loss config")
    sub.add_argument("--indent", type=_bounded_int(0, 16), default=2)

    sub = command("demo", cmd_demo, "train a small forecaster with a DSL loss")
    sub.add_argument("--steps", type=_bounded_int(1, 10**9), default=None,
                     help="training steps (default 300)")
    sub.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    sub.add_argument("--config", metavar="FILE", help="loss config (default examples/configs/forecast.yaml)")
    sub.add_argument("--seed", type=_SEED, default=0)
    sub.add_argument("--print-every", type=_bounded_int(1, 10**9), default=None,
                     help="steps between per-term tables")
    sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser
