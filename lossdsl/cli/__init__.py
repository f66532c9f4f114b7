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

The package is the top of the library: :mod:`.parser` reads the arguments, :mod:`.commands`
runs them with the tools, and :mod:`.demo` trains the demo forecaster with a config's loss.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Sequence

with warnings.catch_warnings():
    # The commands import torch, which warns at import when numpy is missing; lossdsl never
    # converts to numpy, so that warning is no concern of the command's users.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from ..errors import LossDSLError
from .commands import Problem, Usage, check_usage
from .parser import build_parser

__all__ = ["main", "build_parser"]


def _error_name(err: BaseException) -> str:
    module = type(err).__module__
    return f"{module}.{type(err).__qualname__}" if module.startswith("lossdsl") else type(err).__name__


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


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
        check_usage(args)
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a reader that went away is found here, not at exit
        return code
    except Usage as err:
        args.parser.error(str(err))  # exits with 2
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except LossDSLError as err:
        return _fail(f"{_error_name(err)}: {err}")
    except Problem as err:
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
