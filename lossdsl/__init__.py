"""lossdsl: write a training loss as text, get one differentiable PyTorch module.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> loss = crit(torch.zeros(2, 4, 1), torch.ones(2, 4, 1))
>>> sorted(crit.terms)
['huber', 'temporal_diff']

Names that need torch are loaded on first use, so ``lossdsl.parse`` and ``lossdsl.unparse``
work without importing it.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .errors import (
    LossArgumentError,
    LossDSLError,
    LossInputError,
    LossNameError,
    LossSyntaxError,
    LossTypeError,
    NonFiniteLossError,
)
from .syntax import Program, parse, unparse

__version__ = "0.1.0"

# public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "compile": "lossdsl.compiler",
    "check": "lossdsl.compiler",
    "registry": "lossdsl.compiler",
    "term": "lossdsl.language.registry",
    "Loss": "lossdsl.loss",
    "Monitor": "lossdsl.monitor",
    "Suggestion": "lossdsl.monitor",
    "JsonlWriter": "lossdsl.monitor",
    "TensorBoardWriter": "lossdsl.monitor",
    "from_config": "lossdsl.config",
    "LossConfig": "lossdsl.config",
}

__all__ = [
    "compile",
    "from_config",
    "LossConfig",
    "check",
    "parse",
    "unparse",
    "term",
    "registry",
    "Loss",
    "Monitor",
    "Suggestion",
    "JsonlWriter",
    "TensorBoardWriter",
    "Program",
    "LossDSLError",
    "LossSyntaxError",
    "LossNameError",
    "LossArgumentError",
    "LossTypeError",
    "LossInputError",
    "NonFiniteLossError",
]


# the packages a user may reach as attributes after `import lossdsl` (lossdsl.config.load_config),
# with the modules each brings along (lossdsl.tools.gradcheck.DOMAINS)
_PACKAGES = {
    "config": (), "monitor": (), "terms": (), "errors": (), "syntax": (), "cli": (),
    "tools": ("catalogue", "demo", "explain", "gradcheck", "plot", "suggest", "weight_words"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None and name not in _PACKAGES:
        raise AttributeError(f"module 'lossdsl' has no attribute {name!r}")
    with warnings.catch_warnings():
        # torch warns at import when numpy is missing; lossdsl never converts to numpy, so a
        # missing numpy is no concern of its users
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        if module is None:
            for part in _PACKAGES[name]:
                importlib.import_module(f"lossdsl.{name}.{part}")
            return importlib.import_module(f"lossdsl.{name}")  # which sets the attribute
        if name == "term":
            importlib.import_module("lossdsl.compiler")  # the catalogue first: a new term may not shadow it
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
