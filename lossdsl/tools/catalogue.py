"""The term catalogue as text: the README's markdown table and ``lossdsl terms [NAME]``.

The README's table of terms is :func:`markdown_table` (a test keeps the two equal), so the
documentation cannot drift from the code. The built-in terms are those of
:data:`lossdsl.terms.CATALOGUE` that the registry still holds as shipped; a name registered
for a function that another name already has is shown as an alias (``mae`` / ``l1``).
``lossdsl terms`` lists every registered term (user terms too) and the built-in functions of
the language's tables; ``lossdsl terms NAME`` shows one of either in full.

>>> from lossdsl.tools.catalogue import markdown_table
>>> print(markdown_table().splitlines()[0])
| term | inputs | hyperparameters | summary |
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Iterable

from ..compiler import registry
from ..errors import did_you_mean
from ..language.balancers import METHODS
from ..language.functions import FUNCTIONS
from ..language.registry import BALANCE
from ..language.registry import TermSpec
from ..language.schedules import SCHEDULES
from ..terms import CATALOGUE

__all__ = [
    "markdown_table", "builtin_specs", "readme_block", "fill_readme", "terms_listing", "describe",
    "BUILTIN_FUNCTIONS", "unknown_hint",
]

START, END = "<!-- terms:start -->\n", "<!-- terms:end -->"

# The language's built-in functions by name: (group, summary, parameter model or None).
BUILTIN_FUNCTIONS = {
    **{name: (row.group, row.summary, row.params) for name, row in FUNCTIONS.items()},
    **{name: ("schedule", row.summary, row.params) for name, row in SCHEDULES.items()},
    BALANCE: ("balance", "balance(a, b, ..., method=...): methods " + ", ".join(METHODS), None),
}


def builtin_specs() -> list[TermSpec]:
    """The specs of the terms that ship with lossdsl (:data:`lossdsl.terms.CATALOGUE`), by name.

    A catalogue name that a user has registered again for a function of their own is left out.

    >>> [spec.name for spec in builtin_specs()][:3]
    ['adaptive_huber', 'bce', 'bce_logits']
    """
    return [registry[name] for name in sorted(CATALOGUE) if name in registry and registry[name].func is CATALOGUE[name]]


def _cell(text: str) -> str:
    # a bare '|' would end the table cell, even inside backticks (GitHub markdown)
    return text.replace("|", "\\|")


def _rows(specs: Iterable[TermSpec]) -> list[tuple[list[str], TermSpec]]:
    """One row per function: its own name first, then the other names it is registered under."""
    groups: dict[int, list[TermSpec]] = {}
    for spec in specs:
        groups.setdefault(id(spec.func), []).append(spec)
    rows = []
    for group in groups.values():
        own = getattr(group[0].func, "__name__", None)
        group.sort(key=lambda s: (s.name != own, s.name))
        rows.append(([s.name for s in group], group[0]))
    rows.sort(key=lambda row: row[0][0])
    return rows


def _inputs(spec: TermSpec) -> str:
    return ", ".join(p.name + ("" if p.required else "?") for p in spec.inputs)


def markdown_table(specs: Iterable[TermSpec] | None = None) -> str:
    """The catalogue as a markdown table: term, inputs, hyperparameters, summary.

    Optional inputs are marked ``?``; each hyperparameter reads ``name: type = default``
    with its allowed range (``delta: float > 0 = 1.0``); a required one has no default.

    >>> table = markdown_table()
    >>> any(line.startswith("| `mae` / `l1` |") for line in table.splitlines())
    True
    """
    lines = ["| term | inputs | hyperparameters | summary |", "|---|---|---|---|"]
    for names, spec in _rows(builtin_specs() if specs is None else specs):
        term = " / ".join(f"`{n}`" for n in names)
        hyper = ", ".join(f"`{_cell(h.describe())}`" for h in spec.hyper) or "none"
        lines.append(f"| {term} | {_inputs(spec)} | {hyper} | {_cell(spec.summary)} |")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    """The text between the ``terms:start`` and ``terms:end`` markers of a README."""
    start = text.index(START) + len(START)
    return text[start : text.index(END, start)]


def fill_readme(text: str) -> str:
    """``text`` with the block between the markers replaced by :func:`markdown_table`.

    >>> fill_readme("a\\n<!-- terms:start -->\\nold\\n<!-- terms:end -->\\nb").count("| `mse` |")
    1
    """
    start = text.index(START) + len(START)
    end = text.index(END, start)
    return text[:start] + markdown_table() + text[end:]


def terms_listing() -> str:
    """Every registered term as an aligned table, then the names of the built-in functions.

    >>> listing = terms_listing()
    >>> listing.splitlines()[0].split()
    ['term', 'inputs', 'hyperparameters', 'summary']
    >>> "linear" in listing.splitlines()[-2]
    True
    """
    rows = [("term", "inputs", "hyperparameters", "summary")]
    for spec in registry.specs():
        hyper = ", ".join(h.name + ("" if h.required else f"={h.default!r}") for h in spec.hyper)
        rows.append((spec.name, _inputs(spec), hyper or "-", spec.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    lines += ["", "built-in functions: " + ", ".join(BUILTIN_FUNCTIONS),
              "`lossdsl terms NAME` shows one term or function in full"]
    return "\n".join(lines)


def describe(name: str) -> str | None:
    """One term (signature, docstring, inputs, hyperparameters) or built-in function in full;
    ``None`` when ``name`` is neither.

    >>> print(describe("clamp"))
    clamp  (built-in elementwise function)
    clamp(x, min=, max=): x limited to [min, max]
    parameters:
      min = None
      max = None
    """
    if name in registry:
        spec = registry[name]
        lines = [spec.signature(), "", inspect.getdoc(spec.func) or spec.summary or "(no docstring)", "", "inputs:"]
        lines += [f"  {p.name}" + ("" if p.required else "  (optional)") for p in spec.inputs]
        lines.append("hyperparameters:" if spec.hyper else "hyperparameters: none")
        lines += [f"  {h.describe()}" for h in spec.hyper]
        return "\n".join(lines)
    if name in BUILTIN_FUNCTIONS:
        group, summary, params = BUILTIN_FUNCTIONS[name]
        lines = [f"{name}  (built-in {group} function)", summary]
        fields = params.model_fields if params is not None else {}
        if fields:
            lines.append("parameters:")
            for field_name, field in fields.items():
                lines.append(f"  {field_name}" + ("" if field.is_required() else f" = {field.default!r}"))
        return "\n".join(lines)
    return None


def unknown_hint(name: str) -> str | None:
    """A did-you-mean hint for a name that is neither a term nor a built-in function.

    >>> unknown_hint("hubr")
    "did you mean 'huber'?"
    """
    return did_you_mean(name, list(registry) + list(BUILTIN_FUNCTIONS))


if __name__ == "__main__":  # python -m lossdsl.tools.catalogue README.md  (rewrites the block)
    for arg in sys.argv[1:]:
        path = Path(arg)
        path.write_text(fill_readme(path.read_text(encoding="utf-8")), encoding="utf-8")
