"""The ``lossdsl`` command line: check, explain, list terms, gradcheck, plot, balance, demo.

Every command exits 0 on success and 1 on a problem, which it prints to stderr (program
errors with the line and a caret, never a traceback); 2 is a usage error (a missing or
contradictory argument), reported by argparse with the command's usage. Output cut short by
its reader (``lossdsl explain ... | head``) ends quietly.

Example::

    $ lossdsl check "0.7*hubr(delta=1) + 0.3*temporal_diff"
    lossdsl.LossNameError: unknown loss term 'hubr' (line 1, column 5)
      0.7*hubr(delta=1) + 0.3*temporal_diff
          ^^^^
    hint: did you mean 'huber'?
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from typing import Sequence

from . import __version__
from .builtins import BUILTINS
from .compile import check as check_program
from .compile import compile as compile_program
from .config import LossConfig, load_config
from .demo import run_demo
from .errors import LossDSLError, did_you_mean
from .explain import explain
from .gradcheck import run_gradcheck
from .plot import PLOT_EXTRA, plot_log, read_log, require_matplotlib
from .registry import registry
from .suggest import suggest_from_log

__all__ = ["main", "build_parser"]


class _Problem(Exception):
    """A problem with the command's arguments that argparse cannot see: exit 1 with the message."""


class _Usage(Exception):
    """A missing or contradictory argument: argparse's usage message and exit 2."""


def _error_name(err: BaseException) -> str:
    module = type(err).__module__
    return f"{module}.{type(err).__qualname__}" if module.startswith("lossdsl") else type(err).__name__


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _program(args) -> str:
    """The program text of EXPR, ``-`` (stdin) or ``--config FILE`` (checked by :func:`_check_usage`)."""
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


def _check_usage(args) -> None:
    """EXPR and --config exclude each other; the commands that need a program need one."""
    expr, config = getattr(args, "expr", None), getattr(args, "config", None)
    if expr is not None and config:
        raise _Usage("give EXPR or --config FILE, not both")
    if getattr(args, "key", None) and not config:
        raise _Usage("--key names a place inside --config FILE; give --config too")
    if args.command in ("check", "explain", "gradcheck") and expr is None and not config:
        raise _Usage("give a program (EXPR, or - to read it from stdin) or --config FILE")


# --- check / explain ---------------------------------------------------------------------------


def cmd_check(args) -> int:
    if args.config:
        resolved = load_config(args.config, key=args.key).check()
    else:
        resolved = check_program(_program(args))
    names = [item.name for item in resolved.logged]
    print(f"ok: {resolved.canonical}")
    print(f"{len(names)} term{'s' if len(names) != 1 else ''}: {', '.join(names)}")
    return 0


def cmd_explain(args) -> int:
    print(explain(compile_program(_program(args))))
    return 0


# --- terms ---------------------------------------------------------------------------------


def _hyper_text(spec) -> str:
    return ", ".join(f"{h.name}" + ("" if h.required else f"={h.default!r}") for h in spec.hyper)


def cmd_terms(args) -> int:
    if args.name is None:
        rows = [("term", "inputs", "hyperparameters", "summary")]
        for spec in registry.specs():
            inputs = ", ".join(p.name + ("" if p.required else "?") for p in spec.inputs)
            rows.append((spec.name, inputs, _hyper_text(spec) or "-", spec.summary))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        print()
        print("built-in functions: " + ", ".join(BUILTINS))
        print("`lossdsl terms NAME` shows one term or function in full")
        return 0
    name = args.name
    if name in registry:
        spec = registry[name]
        print(spec.signature())
        print()
        print(inspect.getdoc(spec.func) or spec.summary or "(no docstring)")
        print()
        print("inputs:")
        for p in spec.inputs:
            print(f"  {p.name}" + ("" if p.required else "  (optional)"))
        print("hyperparameters:" if spec.hyper else "hyperparameters: none")
        for h in spec.hyper:
            print(f"  {h.describe()}")
        return 0
    if name in BUILTINS:
        builtin = BUILTINS[name]
        print(f"{name}  (built-in {builtin.category} function)")
        print(builtin.summary)
        fields = builtin.params.model_fields
        if fields:
            print("parameters:")
            for field_name, field in fields.items():
                default = "" if field.is_required() else f" = {field.default!r}"
                print(f"  {field_name}{default}")
        return 0
    hint = did_you_mean(name, list(registry) + list(BUILTINS))
    return _fail(f"lossdsl terms: unknown term '{name}'" + (f"\nhint: {hint}" if hint else ""))


# --- gradcheck ---------------------------------------------------------------------------


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


def cmd_gradcheck(args) -> int:
    report = run_gradcheck(_program(args), args.shape, dict(args.input or []), args.seed)
    if not report.ok:
        return _fail(report.text)
    print(report.text)
    return 0


# --- logs, schema, demo --------------------------------------------------------------------


def cmd_plot(args) -> int:
    require_matplotlib()
    out = args.output or str(args.log).rsplit(".", 1)[0] + ".png"
    plot_log(args.log, out)
    print(f"wrote {out}")
    return 0


def _targets(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    targets = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise _Problem(f"lossdsl balance: write --target name=share,... (got {item!r})")
        try:
            targets[name.strip()] = float(value)
        except ValueError:
            raise _Problem(f"lossdsl balance: a share must be a number (got {item!r})") from None
    return targets


def cmd_balance(args) -> int:
    source = _program(args) if (args.expr is not None or args.config) else None
    target = _targets(args.target)
    read_log(args.log)  # a file that is not a log is reported by line before any work
    suggestion = suggest_from_log(args.log, source=source, target=target)
    width = max((len(n) for n in suggestion.weights), default=4)
    print("suggested weights:")
    for name, weight in suggestion.weights.items():
        print(f"  {name.ljust(width)}  {weight:.4g}")
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
        raise _Problem(f"lossdsl demo: --out {args.out} is a file; the demo writes a folder of files")
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


# --- the parser ----------------------------------------------------------------------------


def _bounded_int(low: int, high: int):
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


def _program_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("expr", nargs="?", metavar="EXPR", help="the loss program ('-' reads stdin)")
    sub.add_argument("--config", metavar="FILE", help="read the program from a YAML/JSON/TOML config")
    sub.add_argument("--key", help="dotted key of the loss config inside FILE (default: top level or 'loss')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (each sub-parser is in ``args.parser``).

    >>> args = build_parser().parse_args(["gradcheck", "mse", "--shape", "2,3"])
    >>> args.command, args.shape
    ('gradcheck', (2, 3))
    """
    parser = argparse.ArgumentParser(
        prog="lossdsl", description="Check, explain and try out lossdsl loss programs."
    )
    parser.add_argument("--version", action="version", version=f"lossdsl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(run=run, parser=sub)
        return sub

    _program_args(command("check", cmd_check, "check a program or config; exit 1 with the error if invalid"))
    _program_args(command("explain", cmd_explain, "show the resolved program: tree, terms, weights, inputs"))

    sub = command("terms", cmd_terms, "list the registered terms, or show one in full")
    sub.add_argument("name", nargs="?", metavar="NAME")

    sub = command("gradcheck", cmd_gradcheck, "torch.autograd.gradcheck on random float64 inputs")
    _program_args(sub)
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


def _silence_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the exit's flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured output)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a problem; a usage error
    exits with 2 through argparse).

    >>> main(["check", "0.7*huber(delta=1) + 0.3*mae"])
    ok: 0.7 * huber(delta=1) + 0.3 * mae
    2 terms: huber, mae
    0
    """
    args = build_parser().parse_args(argv)
    try:
        _check_usage(args)
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a reader that went away is found here, not at exit
        return code
    except _Usage as err:
        args.parser.error(str(err))  # exits with 2
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except LossDSLError as err:
        return _fail(f"{_error_name(err)}: {err}")
    except _Problem as err:
        return _fail(str(err))
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] == "lossdsl":
            raise
        missing = f": {err.name}" if isinstance(err, ModuleNotFoundError) and err.name else f" ({err})"
        return _fail(f"lossdsl {args.command}: needs a package that is not installed{missing}")
    except OSError as err:
        return _fail(f"lossdsl {args.command}: {err}")
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
