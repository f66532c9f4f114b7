"""Per-term magnitudes (DESIGN.md §7). Minimal placeholder interface; see issue 4."""

from __future__ import annotations

from torch import nn

__all__ = ["Monitor"]


class Monitor(nn.Module):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.enabled = False

    def record(self, raw, weights, total, logged, env) -> None:
        pass
