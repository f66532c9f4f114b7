"""Filling an ``nn.Module`` without ``nn.Module.__setattr__``'s checks.

``lossdsl.compile`` of a cached source builds fresh modules and nothing else, and each
``__setattr__``/``register_buffer`` costs about a microsecond of isinstance checks; with some
forty of them they were most of the cost. These helpers write the same entries directly.
Use them only in ``__init__``-like code, for names that are not yet a parameter, buffer or
submodule of the module.

>>> import torch
>>> from torch import nn
>>> m = nn.Module()
>>> set_attributes(m, scale=2.0)
>>> set_buffers(m, {"count": torch.zeros(())}, persistent=False)
>>> m.scale, list(m.state_dict()), m.count.item()
(2.0, [], 0.0)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["set_attributes", "set_buffers"]


def set_attributes(module: nn.Module, **attrs: Any) -> None:
    """Plain Python attributes (never tensors or modules), as ``module.name = value`` would."""
    module.__dict__.update(attrs)


def set_buffers(module: nn.Module, buffers: dict[str, Tensor | None], persistent: bool = True) -> None:
    """Buffers, as ``module.register_buffer(name, tensor, persistent)`` would."""
    module._buffers.update(buffers)
    if not persistent:
        module._non_persistent_buffers_set.update(buffers)
