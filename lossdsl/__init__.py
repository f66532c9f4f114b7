"""lossdsl: write a training loss as text, get one differentiable PyTorch module.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> loss = crit(torch.zeros(2, 4, 1), torch.ones(2, 4, 1))
>>> sorted(crit.terms)
['huber', 'temporal_diff']
"""

import warnings as _warnings

with _warnings.catch_warnings():
    # torch warns at import when numpy is missing; lossdsl never converts to numpy, so a
    # missing numpy is no concern of its users.
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch as _torch  # noqa: F401

from . import terms as _terms  # noqa: F401  (registers the catalogue)
from .ast import Program
from .compile import check, compile
from .config import LossConfig, from_config
from .errors import (
    LossArgumentError,
    LossDSLError,
    LossInputError,
    LossNameError,
    LossSyntaxError,
    LossTypeError,
    NonFiniteLossError,
)
from .module import Loss
from .monitor import Monitor
from .registry import registry, term
from .sinks import JsonlWriter, TensorBoardWriter
from .suggest import Suggestion
from .syntax import parse
from .unparse import unparse

__version__ = "0.1.0"

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
