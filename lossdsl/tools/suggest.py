"""Suggested weights from a JSONL log (``lossdsl balance LOG [EXPR]``), and telling a log's
terms from its named composites (also for ``lossdsl plot``).

The numbers are those of :meth:`lossdsl.Monitor.suggest_weights`
(:func:`lossdsl.monitor.suggest.suggest`); the program text, when given, is rewritten by
:func:`lossdsl.resolve.rewrite.rewrite_weights`.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Mapping

from ..compiler import check
from ..errors import LossDSLError
from ..monitor.logs import read_jsonl
from ..monitor.suggest import Suggestion, suggest
from ..resolve import ir
from ..resolve.rewrite import rewriter

__all__ = ["suggest_from_log", "written_weights", "log_names", "log_terms"]


def suggest_from_log(
    jsonl_path: str | os.PathLike, source: str | None = None, target: Mapping[str, float] | None = None
) -> Suggestion:
    """Suggest weights from a JSONL log written by :class:`~lossdsl.JsonlWriter`.

    The magnitude of a term is its mean weighted gradient norm over the log when the log
    has ``/grad_norm`` entries for every term, else its mean ``|weighted|`` value; its
    current weight is the mean of ``/weight``. With ``source`` (the program that wrote the
    log) the suggestion carries the rewritten text; without it, named composites are told
    from terms by their shares (see :func:`log_terms`).

    >>> import os, tempfile, torch, lossdsl
    >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
    >>> crit = lossdsl.compile("mse + mae")
    >>> _ = crit.monitor.attach(lossdsl.JsonlWriter(path), every=1)
    >>> _ = crit(torch.zeros(4), torch.full((4,), 10.0))
    >>> crit.monitor.close()
    >>> suggest_from_log(path, "mse + mae").source
    '0.55*mse + 5.5*mae'
    """
    records = read_jsonl(jsonl_path)
    names, prefix = log_names(records)
    if not names:
        raise LossDSLError(
            f"no per-term values in {os.fspath(jsonl_path)!r}",
            hint="write the log with crit.monitor.attach(lossdsl.JsonlWriter(path), every=N)",
        )
    probed = all(any(f"{prefix}{n}/grad_norm" in r for r in records) for n in names)
    key = "grad_norm" if probed else "weighted"
    magnitude = {n: abs(_nanmean(r.get(f"{prefix}{n}/{key}") for r in records)) for n in names}
    weights = {n: _nanmean(r.get(f"{prefix}{n}/weight") for r in records) for n in names}
    if source is None:
        return suggest(weights, magnitude, target, terms=log_terms(records, names, prefix))
    resolved = check(source)
    missing = [n for n in names if n not in resolved.names()]
    if missing:
        raise LossDSLError(
            "the log has terms the program does not: " + ", ".join(map(repr, missing)),
            hint="pass the program that wrote this log",
        )
    terms = [item.name for item in resolved.logged if item.is_term]
    absent = [n for n in terms if n not in names]
    written = written_weights(resolved)
    if absent:  # the log has no magnitude of these: they keep the weight the program gives them
        unknown = [n for n in absent if n not in written]
        if unknown:
            raise LossDSLError(
                "the log has no values of " + ", ".join(map(repr, unknown)) + ", whose weight in the "
                "program depends on the values",
                hint="pass the program that wrote this log",
            )
        weights.update({n: written[n] for n in absent})
    found = suggest(weights, magnitude, target, terms=terms)
    # the text may weigh a term otherwise than the log did: each written weight is scaled to
    # the one found (the others, relative to the log's)
    now = {n: written.get(n, weights[n]) for n in terms}
    scale = {n: found.weights[n] / now[n] for n in terms
             if now[n] and math.isfinite(now[n]) and math.isfinite(found.weights[n]) and found.weights[n] != now[n]}
    text, applied = rewriter(resolved)(scale, magnitude)
    return Suggestion({n: now[n] * applied.get(n, 1.0) for n in terms}, text, kept=tuple(absent))


def written_weights(resolved: ir.IR) -> dict[str, float]:
    """``d total / d term`` of each term that the program only adds, subtracts and multiplies
    by constants (so its weight needs no values); terms inside anything else are left out.

    >>> from lossdsl.compiler import check
    >>> written_weights(check("a = mae; 0.7*mse - a/4 + 2*(0.5*huber + log(l1))"))
    {'a': -0.25, 'mse': 0.7, 'huber': 1.0}
    """
    names = {id(item.node): item.name for item in resolved.logged if item.is_term}
    weights: dict[str, float] = {}
    inside_other: set[str] = set()
    todo = [(resolved.root, 1.0)]
    while todo:
        node, factor = todo.pop()
        if id(node) in names:
            weights[names[id(node)]] = weights.get(names[id(node)], 0.0) + factor
            continue
        parts = _linear_parts(node, factor)
        if parts is None:
            inside_other.update(names[id(n)] for n in ir.walk(node) if id(n) in names)
        else:
            todo.extend(parts)
    return {n: weights[n] for n in names.values() if n in weights and n not in inside_other}


def _linear_parts(node: ir.Node, factor: float) -> list[tuple[ir.Node, float]] | None:
    """The operands of ``node`` with their factors when ``node`` is linear in them, else None."""
    if isinstance(node, ir.Const):
        return []
    if isinstance(node, ir.Named):
        return [(node.value, factor)]
    if not isinstance(node, ir.Call):
        return None
    if node.name == "add":
        signs = node.param("signs") or (1,) * len(node.args)
        return [(arg, factor * sign) for arg, sign in zip(node.args, signs)]
    if node.name == "neg":
        return [(node.args[0], -factor)]
    if node.name == "watch":
        return [(node.args[0], 0.0)]
    if node.name != "multiply":
        return None
    ops = ("*",) + tuple(node.param("ops") or ())
    varying = [(arg, op) for arg, op in zip(node.args, ops) if not isinstance(arg, ir.Const)]
    if len(ops) != len(node.args) or len(varying) > 1 or any(op != "*" for _, op in varying):
        return None
    for arg, op in zip(node.args, ops):
        if isinstance(arg, ir.Const):
            factor = factor * arg.value if op == "*" else factor / arg.value
    return [(varying[0][0], factor)] if varying else []


def log_names(records: list[dict]) -> tuple[list[str], str]:
    """The logged names of a log and the prefix of its keys (``"loss/"`` by default).

    >>> log_names([{"step": 1, "run/loss/mse/share": 0.5, "run/loss/mae/share": 0.5}])
    (['mse', 'mae'], 'run/loss/')
    """
    raw_keys: list[str] = []
    for record in records:
        for key in record:
            if key.endswith("/share") and key[: -len("/share")] not in raw_keys:
                raw_keys.append(key[: -len("/share")])
    if not raw_keys:
        return [], ""
    prefix = os.path.commonprefix(raw_keys)
    prefix = prefix[: prefix.rfind("/") + 1]
    return [k[len(prefix) :] for k in raw_keys], prefix


def log_terms(records: list[dict], names: list[str], prefix: str, source: str | None = None) -> list[str]:
    """Which logged names are terms rather than named composites.

    With the program's ``source`` this is exact. Without it: the terms' shares add up to 1
    and a composite's share repeats those of the terms inside it, so while the mean shares
    add up to more than 1, the name with the largest share that fits in the excess is
    dropped (the later one on a tie: composites are logged after their terms).

    >>> rows = [{"l/mse/share": 0.4, "l/mae/share": 0.2, "l/recon/share": 0.6, "l/huber/share": 0.4}]
    >>> log_terms(rows, ["mse", "mae", "recon", "huber"], "l/")
    ['mse', 'mae', 'huber']
    """
    if source is not None:
        terms = {item.name for item in check(source).logged if item.is_term}
        return [n for n in names if n in terms]
    share = {n: abs(_nanmean(r.get(f"{prefix}{n}/share") for r in records)) for n in names}
    excess = sum(v for v in share.values() if v == v) - 1.0
    dropped: set[str] = set()
    while excess > 0.01:
        # a share above 1 is not one the monitor writes: such a name is never taken for a
        # composite, so at least one name stays a term
        fits = [n for n in names if n not in dropped and 0 < share[n] <= min(excess + 0.01, 1.0)]
        if not fits:
            break
        best = max(reversed(fits), key=lambda n: share[n])  # max keeps the first of equals
        dropped.add(best)
        excess -= share[best]
    return [n for n in names if n not in dropped]


def _nanmean(values: Iterable) -> float:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
