"""Per-term statistics, their readers and sinks (DESIGN.md §2, §7). The monitor reads term
names and values, never the program's text, syntax or IR.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*mse + 0.3*mae")
>>> _ = crit(torch.zeros(3), torch.ones(3))
>>> sorted(crit.monitor.stats())
['mae', 'mse', 'total']
"""

from .monitor import Monitor
from .logs import read_jsonl
from .sinks import FunctionSink, JsonlWriter, TensorBoardWriter
from .stats import CallInputs
from .suggest import Suggestion

__all__ = ["Monitor", "CallInputs", "Suggestion", "JsonlWriter", "TensorBoardWriter", "FunctionSink", "read_jsonl"]
