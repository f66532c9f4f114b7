"""New weights that balance the terms, and the program text rewritten with them.

Scaling a term's weight by ``r`` scales its weighted magnitude (and its weighted gradient
norm) by ``r``. To give term ``i`` the share ``t_i`` of the total magnitude ``M = sum m_j``
while keeping ``M`` unchanged, its weight is multiplied by ``r_i = t_i M / m_i``.

The text is edited in place, so comments and layout stay: the numeric factor of a term
(``0.7`` in ``0.7*huber``, ``4`` in ``mae/4``) is replaced, and ``r*`` is inserted before a
term that has none. The edits go where the term is used, through sums, negations, constant
factors and named composite bindings; a larger unit (``mse*mae``, ``log(mse)``,
``balance(...)``) is scaled as a whole, by the ratio that gives it its terms' combined share.

>>> import lossdsl
>>> from lossdsl.suggest import suggest
>>> program = lossdsl.check("0.5*mse + mae  # recon + sparsity")
>>> s = suggest(program, {"mse": 0.5, "mae": 1.0}, {"mse": 3.0, "mae": 1.0})
>>> s.source
'0.3333*mse + 2*mae  # recon + sparsity'
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .resolve import ir
from .syntax import ast
from .errors import LossDSLError

__all__ = ["Suggestion", "suggest", "suggest_from_log", "target_shares", "log_names", "log_terms"]


@dataclass(frozen=True)
class Suggestion:
    """``weights``: the suggested effective weight of every term; ``source``: the program
    text rewritten with them (``""`` when no program text was known)."""

    weights: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def __str__(self) -> str:
        return self.source or ", ".join(f"{k}: {_fmt(v)}" for k, v in self.weights.items())


def target_shares(
    magnitude: Mapping[str, float], target: Mapping[str, float] | None, known: list[str]
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
    bad = [n for n, t in target.items() if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0)]
    given = [n for n in names if n in target]
    others = [n for n in names if n not in target]
    named = sum(target[n] for n in given)
    if bad or (not others and named <= 0):
        raise LossDSLError(
            "target shares must be finite numbers >= 0, not all zero",
            hint="for example target={'mse': 0.8, 'mae': 0.2}",
        )
    if not others:
        return {n: target[n] / named for n in names}
    if named > 1 + 1e-9:
        raise LossDSLError(
            f"target shares add up to {named:g}, more than the whole",
            hint="shares of the whole add up to at most 1 (the terms left out share the rest); "
            "name every term to give ratios instead",
        )
    rest = max(0.0, 1.0 - named) / len(others)
    return {n: float(target[n]) if n in target else rest for n in names}


def suggest(
    program: ir.Resolved | None,
    weights: Mapping[str, float],
    magnitude: Mapping[str, float],
    target: Mapping[str, float] | None = None,
) -> Suggestion:
    """Weights giving each term the ``target`` share (equal by default) of ``magnitude``
    (the mean ``|weighted|`` value or weighted gradient norm of each term under the current
    ``weights``), and ``program``'s text rewritten with them.

    Terms whose weight or magnitude is 0 or not finite (``watch`` terms, say) keep their
    weight and take no share. Without a program every name counts as a term and the source
    is ``""``.
    """
    terms = [item.name for item in program.logged if isinstance(item, ir.Term)] if program else list(weights)
    usable = {
        n: float(magnitude[n])
        for n in terms
        if n in magnitude and n in weights and _positive(magnitude[n]) and _nonzero(weights[n])
    }
    if not usable:
        unchanged = {n: float(weights.get(n, math.nan)) for n in terms}
        return Suggestion(unchanged, program.source if program else "")
    shares = target_shares(usable, target, terms)
    total = sum(usable.values())
    if program is None:
        ratio = {n: shares[n] * total / usable[n] for n in usable}
        return Suggestion({n: weights[n] * ratio.get(n, 1.0) for n in terms}, "")
    source, ratio = _rewrite(program, usable, shares, total)
    new = {n: float(weights[n]) * ratio.get(n, 1.0) if n in weights else math.nan for n in terms}
    return Suggestion(new, source)


def _rewrite(program: ir.Resolved, usable: dict, shares: dict, total: float) -> tuple[str, dict]:
    from .syntax import parse

    tree = parse(program.source)
    brackets = _bracket_pairs(program.source)
    bindings = {b.name: b for b in tree.bindings}
    edits: list[tuple[int, int, str]] = []
    ratio: dict[str, float] = {}
    visited: set[str] = set()

    def unit(node: Any, where: ast.Node) -> None:
        inside = [n for n in _terms_in(node) if n in usable]
        if not inside:
            return
        r = sum(shares[n] for n in inside) * total / sum(usable[n] for n in inside)
        for n in inside:
            ratio.setdefault(n, r)
        if abs(r - 1.0) < 5e-5:
            return
        if isinstance(node, ir.Apply) and node.fn == "product" and isinstance(where, ast.Product):
            # the text's own numbers: resolve folds two or more of them into one coefficient
            for operand, op in zip(where.operands, ("*",) + tuple(where.ops)):
                if _is_literal(operand):
                    written = -operand.operand.value if isinstance(operand, ast.Neg) else operand.value
                    value = written * r if op == "*" else written / r
                    start, end = operand.offsets
                    edits.append((start, end, _fmt(value)))
                    return
        start = _true_start(where.offsets, brackets)
        edits.append((start, start, _fmt(r) + "*"))

    def walk(node: Any, where: ast.Node) -> None:
        if isinstance(node, (ir.Const, ir.Schedule)):
            return
        if isinstance(where, ast.Call) and where.name in bindings and not (where.args or where.kwargs):
            if isinstance(node, ir.Named):  # a composite binding: edit inside its definition, once
                if where.name not in visited:
                    visited.add(where.name)
                    walk(node, bindings[where.name].value)
                return
            unit(node, where)  # a binding of one term: scale it where it is used
            return
        if isinstance(node, ir.Named):
            walk(node.value, where)
        elif isinstance(node, ir.Apply) and node.fn == "sum" and isinstance(where, ast.Sum):
            operands = _operands_of(node, where)
            if not operands:
                unit(node, where)
            for arg, operand in zip(node.args, operands):
                walk(arg, operand)
        elif isinstance(node, ir.Apply) and node.fn == "neg" and isinstance(where, ast.Neg):
            walk(node.args[0], where.operand)
        elif isinstance(node, ir.Apply) and node.fn == "watch":
            return
        elif isinstance(node, ir.Apply) and node.fn == "product" and isinstance(where, ast.Product):
            losses = [(a, o) for a, o in zip(node.args, _operands_of(node, where)) if a.kind == "loss"]
            inner = losses[0][0] if len(losses) == 1 else None
            if isinstance(inner, ir.Named) or (isinstance(inner, ir.Apply) and inner.fn == "sum"):
                walk(*losses[0])  # `0.5*(a + b)` or `0.5*recon`: balance inside, per term
            else:
                unit(node, where)
        else:
            unit(node, where)

    walk(program.root, tree.expr)
    text = program.source
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text, ratio


def _bracket_pairs(text: str) -> dict[int, int]:
    """Offset of each closing bracket -> offset of its opening one (strings and comments skipped)."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        elif c in "([":
            stack.append(i)
        elif c in ")]" and stack:
            pairs[i] = stack.pop()
        i += 1
    return pairs


def _true_start(span: tuple[int, int], brackets: dict[int, int]) -> int:
    """A node's span leaves out the brackets around its first operand (``(a)^2`` starts at
    ``a``); the node really starts at the opening bracket of any bracket it closes."""
    start, end = span
    return min([start] + [o for c, o in brackets.items() if start <= c < end and o < start])


def _terms_in(node: Any) -> list[str]:
    """Names of the terms whose value reaches ``node`` (not through ``watch``)."""
    found: list[str] = []
    stack, seen = [node], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:  # a binding used twice is one node: visited once
            continue
        seen.add(id(item))
        if isinstance(item, ir.Term):
            found.append(item.name)
        elif isinstance(item, ir.Named):
            stack.append(item.value)
        elif isinstance(item, (ir.Apply, ir.Balance)) and getattr(item, "fn", None) != "watch":
            stack.extend(item.args)
    return list(dict.fromkeys(found))


def _operands_of(node: ir.Apply, where: ast.Sum | ast.Product) -> tuple:
    """The operands of ``where`` that ``node.args`` stand for, in order. Resolve folds two or
    more numbers of a product into one coefficient in front, of a sum into one constant at
    the end; the rest keep their order."""
    if len(node.args) == len(where.operands):
        return where.operands
    rest = [o for o in where.operands if not _is_literal(o)]
    if len(rest) != len(node.args) - 1:
        return ()  # numbers that are not literals were folded too: treat it as one unit
    return (None, *rest) if node.fn == "product" else (*rest, None)


def _is_literal(node: ast.Node) -> bool:
    if isinstance(node, ast.Neg):
        node = node.operand
    return isinstance(node, ast.Number)


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _nonzero(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x != 0


def _fmt(value: float) -> str:
    """A number as the language writes it: 4 significant digits, no trailing zeros."""
    text = format(abs(value), ".4g")
    return ("-" if value < 0 else "") + text


def suggest_from_log(
    jsonl_path: str | os.PathLike, source: str | None = None, target: Mapping[str, float] | None = None
) -> Suggestion:
    """Suggest weights from a JSONL log written by :class:`~lossdsl.JsonlWriter`.

    The magnitude of a term is its mean weighted gradient norm over the log when the log
    has ``/grad_norm`` entries, else its mean ``|weighted|`` value; its current weight is
    the mean of ``/weight``. With ``source`` (the program that wrote the log) the suggestion
    carries the rewritten text; without it, named composites are told from terms by their
    shares (see :func:`log_terms`).

    >>> import os, tempfile, torch, lossdsl
    >>> from lossdsl.suggest import suggest_from_log
    >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
    >>> crit = lossdsl.compile("mse + mae")
    >>> _ = crit.monitor.attach(lossdsl.JsonlWriter(path), every=1)
    >>> _ = crit(torch.zeros(4), torch.full((4,), 10.0))
    >>> crit.monitor.close()
    >>> suggest_from_log(path, "mse + mae").source
    '0.55*mse + 5.5*mae'
    """
    from .compiler import check
    from .sinks import read_jsonl

    records = read_jsonl(jsonl_path)
    names, prefix = log_names(records)
    if not names:
        raise LossDSLError(
            f"no per-term values in {os.fspath(jsonl_path)!r}",
            hint="write the log with crit.monitor.attach(lossdsl.JsonlWriter(path), every=N)",
        )
    if source is None:
        names = log_terms(records, names, prefix)
    probed = all(any(f"{prefix}{n}/grad_norm" in r for r in records) for n in names)
    key = "grad_norm" if probed else "weighted"
    magnitude = {n: abs(_nanmean(r.get(f"{prefix}{n}/{key}") for r in records)) for n in names}
    weights = {n: _nanmean(r.get(f"{prefix}{n}/weight") for r in records) for n in names}
    program = check(source) if source is not None else None
    if program is not None:
        missing = [n for n in names if n not in {item.name for item in program.logged}]
        if missing:
            raise LossDSLError(
                "the log has terms the program does not: " + ", ".join(map(repr, missing)),
                hint="pass the program that wrote this log",
            )
    return suggest(program, weights, magnitude, target)


def log_names(records: list[dict]) -> tuple[list[str], str]:
    """The term names of a log and the prefix of its keys (``"loss/"`` by default)."""
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
    """
    if source is not None:
        from .compiler import check

        terms = {item.name for item in check(source).logged if isinstance(item, ir.Term)}
        return [n for n in names if n in terms]
    share = {n: abs(_nanmean(r.get(f"{prefix}{n}/share") for r in records)) for n in names}
    excess = sum(v for v in share.values() if v == v) - 1.0
    dropped: set[str] = set()
    while excess > 0.01:
        fits = [n for n in names if n not in dropped and 0 < share[n] <= excess + 0.01]
        if not fits:
            break
        best = max(reversed(fits), key=lambda n: share[n])  # max keeps the first of equals
        dropped.add(best)
        excess -= share[best]
    return [n for n in names if n not in dropped]


def _nanmean(values) -> float:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
