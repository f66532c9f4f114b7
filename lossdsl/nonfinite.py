"""What happens when a term is NaN or infinite (DESIGN.md §8).

``"raise"`` raises :class:`~lossdsl.NonFiniteLossError` naming the term(s), their place in
the source and the step; ``"warn"`` logs them and goes on; ``"zero_term"`` replaces a bad
term by 0 for that call; ``"skip_batch"`` returns a zero loss. The last two never
synchronise with the device; ``raise``/``warn`` read one flag per call (skipped on ``meta``
and while ``torch.compile`` traces).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from .errors import NonFiniteLossError, location

__all__ = ["POLICIES", "NonFiniteGuard"]

POLICIES = ("raise", "warn", "zero_term", "skip_batch")
logger = logging.getLogger("lossdsl")


class NonFiniteGuard:
    """Applies a non-finite policy to the logged term values and the total of one call."""

    def __init__(self, policy: str, plan, source: str) -> None:
        self.policy = policy
        self.names = list(plan.logged_names)
        self.spans = [getattr(item, "span", None) for item in plan.logged_items]
        self.source = source

    def __call__(self, logged: list[Tensor], vals: list[Any], total: Tensor, int_step: Tensor):
        policy = self.policy
        if policy in ("raise", "warn"):
            if total.device.type == "meta" or torch.compiler.is_compiling():
                return logged, total
            if not bool(torch.isfinite(total)):
                self._report(logged, total, int_step)
            return logged, total
        if policy == "skip_batch":
            finite = torch.isfinite(total)
            return logged, torch.where(finite, total, torch.zeros_like(total))
        # zero_term: each bad term adds 0 instead of its value
        finite = [torch.isfinite(v) for v in logged]
        safe = [torch.where(f, v, torch.zeros_like(v)) for f, v in zip(finite, logged)]
        return safe, total

    def bad_terms(self, logged: list[Tensor]) -> list[str]:
        return [n for n, v in zip(self.names, logged) if not bool(torch.isfinite(v).all())]

    def _report(self, logged: list[Tensor], total: Tensor, int_step: Tensor) -> None:
        bad = [i for i, v in enumerate(logged) if not bool(torch.isfinite(v).all())]
        step = int(int_step)
        parts = []
        for i in bad:
            span = self.spans[i]
            where = ""
            if span is not None:
                line, col = location(self.source, span[0])
                where = f" (line {line}, column {col})"
            parts.append(f"'{self.names[i]}' = {float(logged[i])}{where}")
        what = ", ".join(parts) if parts else f"the combination of terms ({float(total)})"
        message = f"non-finite loss at step {step}: {what}"
        if self.policy == "warn":
            logger.warning("lossdsl: %s", message)
            return
        first = self.spans[bad[0]] if bad else None
        raise NonFiniteLossError(
            message,
            source=self.source,
            span=first,
            term=self.names[bad[0]] if bad else None,
            hint="check the inputs of this term, or compile with nonfinite='zero_term' or 'skip_batch'",
        )
