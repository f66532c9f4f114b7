"""Tools on top of the library, each used by a command of ``lossdsl``: ``explain`` (the
operation tree and the table of terms, with ``weight_words``: effective weights in words),
``gradcheck``, ``catalogue`` (the README's table and ``lossdsl terms``), ``plot``, ``suggest``
(weights from a log) and ``demo`` (the demo's data, model and training loop). The tools never
import the configs (:mod:`lossdsl.config`); the command line (:mod:`lossdsl.cli`) joins the two.
"""

import importlib
from typing import Any

_TOOLS = frozenset({"catalogue", "demo", "explain", "gradcheck", "plot", "suggest", "weight_words"})


def __getattr__(name: str) -> Any:
    """A tool reached as an attribute (``lossdsl.tools.gradcheck.DOMAINS``) is imported then."""
    if name not in _TOOLS:
        raise AttributeError(f"module 'lossdsl.tools' has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")
