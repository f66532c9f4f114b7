"""What each ``lossdsl`` command does, given its parsed arguments; each returns the exit status.

The work itself is in the library and its tools (:mod:`lossdsl.tools`); a command reads its
program (EXPR, ``-`` for stdin, or ``--config FILE``), calls them and prints. A problem that
the argument parser cannot see raises :class:`Problem` (exit 1 with its message), a missing
or contradictory argument :class:`Usage` (the command's usage, exit 2).

>>> import argparse
>>> cmd_check(argparse.Namespace(expr="0.7*huber + 0.3*mae", config=None, key=None))
ok: 0.7 * huber + 0.3 * mae
2 terms: huber, mae
0
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..compiler import check as check_program
from ..compiler import compile as compile_program
from ..config import LossConfig, load_config
from ..errors import LossDSLError
from ..tools.catalogue import describe, terms_listing, unknown_hint
from ..tools.explain import explain
from ..tools.gradcheck import run_gradcheck
from ..monitor.logs import read_jsonl
from ..tools.plot import PLOT_EXTRA, plot_log, require_matplotlib
from ..tools.suggest import suggest_from_log
from .demo import run_demo

__all__ = [
    "Problem", "Usage", "check_usage", "cmd_check", "cmd_explain", "cmd_terms", "cmd_gradcheck",
    "cmd_plot", "cmd_balance", "cmd_schema", "cmd_demo",
]

_NEED_PROGRAM = ("check", "explain", "gradcheck")


class Problem(Exception):
    """A problem with the command's arguments that argparse cannot see: exit 1 with the message."""


class Usage(Exception):
    """A missing or contradictory argument: argparse's usage message and exit 2."""


def check_usage(args) -> None:
    """EXPR and --config exclude each other; the commands that need a program need one."""
    expr, config = getattr(args, "expr", None), getattr(args, "config", None)
    if expr is not None and config:
        raise Usage("give EXPR or --config FILE, not both")
    if getattr(args, "key", None) and not config:
        raise Usage("--key names a place inside --config FILE; give --config too")
    if args.command in _NEED_PROGRAM and expr is None and not config:
        raise Usage("give a program (EXPR, or - to read it from stdin) or --config FILE")


def _program(args) -> str:
    """The program text of EXPR, ``-`` (stdin) or ``--config FILE`` (checked by :func:`check_usage`)."""
    if args.config:
        return load_config(args.config, key=args.key).expr
    return _stdin() if args.expr == "-" else args.expr


def _stdin() -> str:
    """The program from standard input, which must be UTF-8 whatever the locale says."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream put in place of stdin (tests, embedding)
        return sys.stdin.read()
    data = buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LossDSLError(
            f"standard input is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
            hint="pipe in the program text, e.g. cat loss.txt | lossdsl check -",
        ) from None


# --- the program: check, explain, gradcheck ------------------------------------------------


def cmd_check(args) -> int:
    if args.config:
        resolved = load_config(args.config, key=args.key).check()
    else:
        resolved = check_program(_program(args))
    names = resolved.names()
    print(f"ok: {resolved.canonical}")
    print(f"{len(names)} term{'s' if len(names) != 1 else ''}: {', '.join(names)}")
    return 0


def cmd_explain(args) -> int:
    if args.config:  # checked first: an error is placed in the file, as `check` places it
        load_config(args.config, key=args.key).check()
    crit = compile_program(_program(args))
    if getattr(args, "graph", False):
        # the generated forward of the program's torch.fx graph: the code every call runs
        print(crit.program.code.lstrip("\n").rstrip())
    else:
        print(explain(crit))
    return 0


def cmd_gradcheck(args) -> int:
    report = run_gradcheck(_program(args), args.shape, dict(args.input or []), args.seed)
    if not report.ok:
        print(report.text, file=sys.stderr)
        return 1
    print(report.text)
    return 0


# --- the catalogue -------------------------------------------------------------------------


def cmd_terms(args) -> int:
    if args.name is None:
        print(terms_listing())
        return 0
    text = describe(args.name)
    if text is None:
        hint = unknown_hint(args.name)
        raise Problem(f"lossdsl terms: unknown term '{args.name}'" + (f"\nhint: {hint}" if hint else ""))
    print(text)
    return 0


# --- logs, schema, demo --------------------------------------------------------------------


def cmd_plot(args) -> int:
    require_matplotlib()
    out = args.output or _beside(args.log, ".png")
    out = plot_log(args.log, out)
    print(f"wrote {out}")
    return 0


def _beside(path: str, suffix: str) -> str:
    """``path`` with its file name's suffix (if any) replaced by ``suffix``; folders keep their dots.

    >>> _beside("run.v2/log", ".png"), _beside("terms.jsonl", ".png")
    ('run.v2/log.png', 'terms.png')
    """
    log = Path(path)
    return str(log.with_suffix(suffix) if log.name else Path(str(log) + suffix))


def _targets(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    targets = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise Problem(f"lossdsl balance: write --target name=share,... (got {item!r})")
        try:
            targets[name.strip()] = float(value)
        except ValueError:
            raise Problem(f"lossdsl balance: a share must be a number (got {item!r})") from None
    return targets


def cmd_balance(args) -> int:
    source = _program(args) if (args.expr is not None or args.config) else None
    target = _targets(args.target)
    read_jsonl(args.log)  # a file that is not a log is reported by line before any work
    suggestion = suggest_from_log(args.log, source=source, target=target)
    width = max((len(n) for n in suggestion.weights), default=4)
    print("suggested weights:")
    for name, weight in suggestion.weights.items():
        kept = "  (kept: the log has no values of it)" if name in suggestion.kept else ""
        print(f"  {name.ljust(width)}  {weight:.4g}{kept}")
    if suggestion.source:
        print("suggested program:")
        print("  " + suggestion.source.strip("\n").replace("\n", "\n  "))
    return 0


def cmd_schema(args) -> int:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(LossConfig.model_json_schema())
    print(json.dumps(schema, indent=args.indent))
    return 0


def cmd_demo(args) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise Problem(f"lossdsl demo: --out {args.out} is a file; the demo writes a folder of files")
    try:
        require_matplotlib()
    except ImportError:
        print(f"note: matplotlib is not installed, so the demo draws no plot ({PLOT_EXTRA})", file=sys.stderr)
    run_demo(
        steps=args.steps,
        out_dir=args.out,
        config=args.config,
        seed=args.seed,
        print_every=args.print_every,
        progress=not args.no_progress,
    )
    return 0
