"""New weights that balance the terms: the numbers of ``suggest_weights`` (DESIGN.md §7).

Scaling a term's weight by ``r`` scales its weighted magnitude (and its weighted gradient
norm) by ``r``. To give term ``i`` the share ``t_i`` of the total magnitude ``M = sum m_j``
while keeping ``M`` unchanged, its weight is multiplied by ``r_i = t_i M / m_i``.

The text of the program is not read here: a ``rewrite(scale, magnitude) -> (source,
scale)`` callable, given by whoever knows the program (the ``Loss`` passes
:func:`lossdsl.resolve.rewrite.rewriter` of its program), applies the factors to the text
and says which factor each term got in the end (terms scaled together, inside ``log(mse)``
or ``mse*mae``, share one).

>>> s = suggest({"mse": 0.5, "mae": 1.0}, {"mse": 3.0, "mae": 1.0})
>>> {name: round(w, 4) for name, w in s.weights.items()}
{'mse': 0.3333, 'mae': 2.0}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import LossDSLError

__all__ = ["Suggestion", "Rewrite", "suggest", "suggest_from_stats", "target_shares"]

# rewrite(scale, magnitude) -> (source, scale applied to each term)
Rewrite = Callable[[Mapping[str, float], Mapping[str, float]], "tuple[str, Mapping[str, float]]"]


@dataclass(frozen=True)
class Suggestion:
    """``weights``: the suggested effective weight of every term; ``source``: the program
    text rewritten with them (``""`` when no program text was known); ``kept``: the terms
    that kept their weight because nothing was known of their magnitude (a log without them).

    >>> import torch, lossdsl
    >>> crit = lossdsl.compile("mse + mae")
    >>> _ = crit(torch.zeros(4), torch.full((4,), 10.0))
    >>> suggestion = crit.monitor.suggest_weights()
    >>> suggestion.source, suggestion.kept
    ('0.55*mse + 5.5*mae', ())
    """

    weights: dict[str, float] = field(default_factory=dict)
    source: str = ""
    kept: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.source or ", ".join(f"{k}: {format(v, '.4g')}" for k, v in self.weights.items())


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def target_shares(
    magnitude: Mapping[str, float], target: Mapping[str, float] | None, known: Sequence[str]
) -> dict[str, float]:
    """The share of the whole each term of ``magnitude`` should get. ``target=None``: equal
    shares. The terms ``target`` names get their given share; the ones it leaves out share
    the rest equally. A ``target`` that names every term gives ratios (scaled to add up to 1).

    >>> target_shares({"a": 1.0, "b": 3.0}, None, ["a", "b"])
    {'a': 0.5, 'b': 0.5}
    >>> target_shares({"a": 1.0, "b": 1.0, "c": 2.0}, {"a": 0.5}, ["a", "b", "c"])
    {'a': 0.5, 'b': 0.25, 'c': 0.25}
    >>> target_shares({"a": 1.0, "b": 1.0}, {"a": 3, "b": 1}, ["a", "b"])
    {'a': 0.75, 'b': 0.25}
    """
    names = list(magnitude)
    if target is None:
        return {n: 1.0 / len(names) for n in names}
    unknown = [n for n in target if n not in known]
    if unknown:
        raise LossDSLError(
            f"target names unknown term{'s' if len(unknown) > 1 else ''} " + ", ".join(map(repr, unknown)),
            hint="the terms are " + ", ".join(map(repr, known)),
        )
    bad = [n for n, t in target.items() if isinstance(t, bool) or not (isinstance(t, (int, float)) and _finite(t) and t >= 0)]
    given = [n for n in names if n in target]
    others = [n for n in names if n not in target]
    if not others and not bad:  # ratios: scaled by the largest first, so that no sum overflows
        top = max(float(target[n]) for n in names)
        ratios = {n: float(target[n]) / top for n in names} if top > 0 else {}
    named = 0.0 if bad else (sum(ratios.values()) if not others else sum(target[n] for n in given))
    if bad or (not others and named <= 0):
        raise LossDSLError(
            "target shares must be finite numbers >= 0, not all zero",
            hint="for example target={'mse': 0.8, 'mae': 0.2}",
        )
    if not others:
        return {n: ratios[n] / named for n in names}
    if named > 1 + 1e-9:
        raise LossDSLError(
            f"target shares add up to {named:g}, more than the whole",
            hint="shares of the whole add up to at most 1 (the terms left out share the rest); "
            "name every term to give ratios instead",
        )
    rest = max(0.0, 1.0 - named) / len(others)
    return {n: float(target[n]) if n in target else rest for n in names}


def suggest(
    weights: Mapping[str, float],
    magnitude: Mapping[str, float],
    target: Mapping[str, float] | None = None,
    *,
    terms: Sequence[str] | None = None,
    rewrite: Rewrite | None = None,
) -> Suggestion:
    """Weights giving each term the ``target`` share (equal by default) of ``magnitude``
    (the mean ``|weighted|`` value or weighted gradient norm of each term under the current
    ``weights``), and, with ``rewrite``, the program's text rewritten with them.

    ``terms``: the names that are terms (default: every name of ``weights``); named
    composites are left out. Terms whose weight or magnitude is 0 or not finite (``watch``
    terms, say) keep their weight and take no share.

    >>> s = suggest({"a": 1.0, "b": 1.0, "w": 0.0}, {"a": 1.0, "b": 3.0, "w": 5.0}, {"a": 0.75})
    >>> s.weights
    {'a': 3.0, 'b': 0.3333333333333333, 'w': 0.0}
    """
    terms = list(weights) if terms is None else list(terms)
    usable = {
        n: float(magnitude[n])
        for n in terms
        if n in magnitude and n in weights and _positive(magnitude[n]) and _nonzero(weights[n])
    }
    if not usable:
        unchanged = {n: float(weights.get(n, math.nan)) for n in terms}
        return Suggestion(unchanged, rewrite({}, {})[0] if rewrite is not None else "")
    shares = target_shares(usable, target, terms)
    top = max(usable.values())  # the magnitudes relative to the largest: their sum cannot overflow
    total = sum(m / top for m in usable.values())
    scale: Mapping[str, float] = {n: shares[n] * total / (usable[n] / top) for n in usable}
    new = {n: float(weights[n]) * scale.get(n, 1.0) if n in weights else math.nan for n in terms}
    beyond = [n for n in usable if not math.isfinite(new[n]) or not math.isfinite(scale[n])]
    if beyond:
        raise LossDSLError(
            f"the weight that would balance '{beyond[0]}' is beyond the range of a float",
            hint="the terms' magnitudes differ by more than a float spans: rescale a term's "
            "inputs or units first",
        )
    source = ""
    if rewrite is not None:
        source, scale = rewrite(scale, usable)
        new = {n: float(weights[n]) * scale.get(n, 1.0) if n in weights else math.nan for n in terms}
    return Suggestion(new, source)


def suggest_from_stats(
    table: Mapping[str, Mapping[str, float]],
    terms: Sequence[str],
    target: Mapping[str, float] | None,
    rewrite: Rewrite | None,
) -> Suggestion:
    """:func:`suggest` over a monitor's ``stats()`` table: the magnitudes are the weighted
    gradient norms where the probe ran, else the mean weighted values.

    >>> table = {"a": {"weight": 1.0, "weighted": 1.0, "grad_norm": 0.0},
    ...          "b": {"weight": 1.0, "weighted": 3.0, "grad_norm": 0.0}}
    >>> suggest_from_stats(table, ["a", "b"], None, None).weights
    {'a': 2.0, 'b': 0.6666666666666666}
    """
    probed = any(row["grad_norm"] > 0 for row in table.values())
    magnitude = {n: abs(row["grad_norm" if probed else "weighted"]) for n, row in table.items()}
    weights = {n: row["weight"] for n, row in table.items()}
    return suggest(weights, magnitude, target, terms=terms, rewrite=rewrite)


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _nonzero(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x != 0
