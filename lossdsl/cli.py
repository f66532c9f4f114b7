"""The ``lossdsl`` command line: check, explain, list terms, gradcheck, plot, balance, demo.

Every command exits 0 on success and 1 on a problem, which it prints to stderr (program
errors with the line and a caret); 2 is a usage error from argparse.

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
import sys
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


class _Problem(Exception):
    """A problem with the command's arguments that argparse cannot see: exit 1 with the message."""


def _error_name(err: BaseException) -> str:
    module = type(err).__module__
    return f"{module}.{type(err).__qualname__}" if module.startswith("lossdsl") else type(err).__name__


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def _program(args) -> str:
    """The program text of EXPR, ``-`` (stdin) or ``--config FILE``."""
    if getattr(args, "config", None):
        from .config import load_config

        return load_config(args.config, key=args.key).expr
    if args.expr is None:
        raise _Problem(f"lossdsl {args.command}: give a program (EXPR) or --config FILE")
    return sys.stdin.read() if args.expr == "-" else args.expr


# --- check / explain ---------------------------------------------------------------------------


def cmd_check(args) -> int:
    import lossdsl

    if args.config:
        from .config import load_config

        resolved = load_config(args.config, key=args.key).check()
    elif args.expr is None:
        return _fail("lossdsl check: give a program (EXPR) or --config FILE")
    else:
        resolved = lossdsl.check(sys.stdin.read() if args.expr == "-" else args.expr)
    names = [item.name for item in resolved.logged]
    print(f"ok: {resolved.canonical}")
    print(f"{len(names)} term{'s' if len(names) != 1 else ''}: {', '.join(names)}")
    return 0


def cmd_explain(args) -> int:
    import lossdsl

    from .explain import explain

    print(explain(lossdsl.compile(_program(args))))
    return 0


# --- terms ---------------------------------------------------------------------------------


def _hyper_text(spec) -> str:
    return ", ".join(f"{h.name}" + ("" if h.required else f"={h.default!r}") for h in spec.hyper)


def cmd_terms(args) -> int:
    from .builtins import BUILTINS
    from .errors import did_you_mean
    from .language.registry import registry

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


# --- gradcheck -----------------------------------------------------------------------------


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


def _gradcheck_inputs(crit, shape, shapes: dict, generator) -> tuple[list, list]:
    """Random float64 inputs for every input the program reads: ``(names, tensors)``."""
    import torch

    paths: dict[tuple[str, ...], tuple[int, ...]] = {}
    for term in crit._resolved.logged:
        for route in getattr(term, "routes", ()):
            if route.required and route.path[0] != "model":
                paths.setdefault(route.path, shapes.get(".".join(route.path), shape))
    paths.setdefault(("pred",), shapes.get("pred", shape))
    paths.setdefault(("target",), shapes.get("target", shape))
    names, tensors = [], []
    for path, size in paths.items():
        # pred as logits/values; everything else in (0, 1): valid probabilities, masks,
        # variances and class weights, and no ties between ranking targets.
        if path == ("pred",):
            tensor = torch.randn(size, dtype=torch.float64, generator=generator)
        else:
            tensor = torch.rand(size, dtype=torch.float64, generator=generator) * 0.9 + 0.05
        names.append(path)
        tensors.append(tensor.requires_grad_())
    return names, tensors


def _first_failure(fn, tensors) -> str | None:
    """None when ``torch.autograd.gradcheck`` passes, else the first line of its complaint."""
    from torch.autograd.gradcheck import GradcheckError, gradcheck

    try:
        gradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-5, rtol=1e-3)
    except GradcheckError as err:
        return str(err).strip().splitlines()[0]
    return None


def cmd_gradcheck(args) -> int:
    import copy

    import torch

    import lossdsl

    from . import ir

    crit = lossdsl.compile(_program(args))
    generator = torch.Generator().manual_seed(args.seed)
    names, tensors = _gradcheck_inputs(crit, args.shape, dict(args.input or []), generator)
    extra: dict[str, Any] = {}
    if "model" in crit._resolved.inputs_read:
        extra["model"] = torch.nn.Linear(args.shape[-1], 2).double()
    # Balancers and the step live in buffers that each call updates: every evaluation starts
    # from the same state, so the function that finite differences see is a fixed one.
    state = copy.deepcopy(crit.state_dict())

    def nest(values) -> dict[str, Any]:
        inputs: dict[str, Any] = dict(extra)
        for path, value in zip(names, values):
            node = inputs
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        return inputs

    def total(*values):
        crit.load_state_dict(state)
        inputs = nest(values)
        return crit(inputs.pop("pred", None), inputs.pop("target", None), **inputs)

    def one_term(term: ir.Term):
        def value(*values):
            inputs = nest(values)
            args = []
            for route in term.routes:
                node: Any = inputs
                for part in route.path:
                    node = node.get(part) if isinstance(node, dict) else None
                args.append(node)
            return term.spec.func(*args, **dict(term.hyper))

        return value

    shown = ", ".join(".".join(p) + str(tuple(t.shape)) for p, t in zip(names, tensors))
    failure = _first_failure(total, tensors)
    if failure is None:
        print(f"gradcheck passed: {crit.canonical}")
        print(f"inputs (float64): {shown}")
        return 0
    lines = [f"gradcheck FAILED for {crit.canonical}", f"inputs (float64): {shown}", failure, "each term alone:"]
    for term in crit._resolved.logged:
        if isinstance(term, ir.Term):
            alone = _first_failure(one_term(term), tensors)
            lines.append(f"  {term.name}: " + ("passed" if alone is None else f"FAILED ({alone})"))
    lines.append("hint: where every term passes alone, the combination is not differentiable as "
                 "written: detach(), or a balancer whose weights follow the detached values")
    return _fail("\n".join(lines))


# --- logs, schema, demo --------------------------------------------------------------------


def cmd_plot(args) -> int:
    from .tools.plot import plot_log

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
    from .tools.suggest import suggest_from_log

    source = _program(args) if (args.expr or args.config) else None
    suggestion = suggest_from_log(args.log, source=source, target=_targets(args.target))
    width = max((len(n) for n in suggestion.weights), default=4)
    print("suggested weights:")
    for name, weight in suggestion.weights.items():
        print(f"  {name.ljust(width)}  {weight:.4g}")
    if suggestion.source:
        print("suggested program:")
        print("  " + suggestion.source.replace("\n", "\n  "))
    return 0


def cmd_schema(args) -> int:
    from .config import LossConfig

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(LossConfig.model_json_schema())
    print(json.dumps(schema, indent=args.indent))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

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


def _program_args(sub: argparse.ArgumentParser, config: bool = True) -> None:
    sub.add_argument("expr", nargs="?", metavar="EXPR", help="the loss program ('-' reads stdin)")
    if config:
        sub.add_argument("--config", metavar="FILE", help="read the program from a YAML/JSON/TOML config")
        sub.add_argument("--key", help="dotted key of the loss config inside FILE (default: top level or 'loss')")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lossdsl", description="Check, explain and try out lossdsl loss programs."
    )
    parser.add_argument("--version", action="version", version=f"lossdsl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("check", help="check a program or config; exit 1 with the error if invalid")
    _program_args(sub)
    sub.set_defaults(run=cmd_check)

    sub = commands.add_parser("explain", help="show the resolved program: tree, terms, weights, inputs")
    _program_args(sub)
    sub.set_defaults(run=cmd_explain)

    sub = commands.add_parser("terms", help="list the registered terms, or show one in full")
    sub.add_argument("name", nargs="?", metavar="NAME")
    sub.set_defaults(run=cmd_terms)

    sub = commands.add_parser("gradcheck", help="torch.autograd.gradcheck on random float64 inputs")
    _program_args(sub)
    sub.add_argument("--shape", type=_shape, default=(4, 8, 3), help="shape of pred and target (default 4,8,3)")
    sub.add_argument("--input", type=_named_shape, action="append", metavar="NAME=SHAPE",
                     help="shape of another input, e.g. --input mu=4,16 (repeatable)")
    sub.add_argument("--seed", type=int, default=0)
    sub.set_defaults(run=cmd_gradcheck)

    sub = commands.add_parser("plot", help="draw the per-term curves of a JSONL log")
    sub.add_argument("log", metavar="LOG")
    sub.add_argument("-o", "--output", metavar="PNG", help="image to write (default: LOG with .png)")
    sub.set_defaults(run=cmd_plot)

    sub = commands.add_parser("balance", help="suggest weights from a JSONL log")
    sub.add_argument("log", metavar="LOG")
    sub.add_argument("expr", nargs="?", metavar="EXPR", help="the program to rewrite with the new weights")
    sub.add_argument("--config", metavar="FILE", help="read the program to rewrite from a config")
    sub.add_argument("--key", help="dotted key of the loss config inside FILE")
    sub.add_argument("--target", metavar="NAME=SHARE,...", help="target shares (default: equal)")
    sub.set_defaults(run=cmd_balance)

    sub = commands.add_parser("schema", help="print the JSON Schema of a loss config")
    sub.add_argument("--indent", type=int, default=2)
    sub.set_defaults(run=cmd_schema)

    sub = commands.add_parser("demo", help="train a small forecaster with a DSL loss")
    sub.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    sub.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    sub.add_argument("--config", metavar="FILE", help="loss config (default examples/configs/forecast.yaml)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--print-every", type=int, default=None, help="steps between per-term tables")
    sub.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 a problem, 2 usage).

    >>> main(["check", "0.7*huber(delta=1) + 0.3*mae"])
    ok: 0.7 * huber(delta=1) + 0.3 * mae
    2 terms: huber, mae
    0
    """
    from .errors import LossDSLError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except LossDSLError as err:
        return _fail(f"{_error_name(err)}: {err}")
    except _Problem as err:
        return _fail(str(err))
    except (FileNotFoundError, IsADirectoryError) as err:
        return _fail(f"lossdsl {args.command}: {err}")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "lossdsl":
            raise
        return _fail(f"lossdsl {args.command}: needs a package that is not installed: {err.name}")
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
