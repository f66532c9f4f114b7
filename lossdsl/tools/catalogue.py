"""The term catalogue as a markdown table, rendered from :data:`lossdsl.registry`.

The README's table of terms is this function's output (a test keeps the two equal), so the
documentation cannot drift from the code. Only the built-in terms (those defined in
``lossdsl.terms``) are listed unless ``specs`` says otherwise; a name registered for a
function that another name already has is shown as an alias (``mae`` / ``l1``).

>>> from lossdsl.catalogue import markdown_table
>>> print(markdown_table().splitlines()[0])
| term | inputs | hyperparameters | summary |
"""

from __future__ import annotations

from typing import Iterable

from .language.registry import TermSpec, registry

__all__ = ["markdown_table", "builtin_specs", "readme_block", "fill_readme"]

_BUILTIN_MODULE = "lossdsl.terms."
START, END = "<!-- terms:start -->\n", "<!-- terms:end -->"


def builtin_specs() -> list[TermSpec]:
    """The specs of the terms that ship with lossdsl, sorted by name."""
    return [s for s in registry.specs() if getattr(s.func, "__module__", "").startswith(_BUILTIN_MODULE)]


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
        inputs = ", ".join(p.name + ("" if p.required else "?") for p in spec.inputs)
        hyper = ", ".join(f"`{_cell(h.describe())}`" for h in spec.hyper) or "none"
        lines.append(f"| {term} | {inputs} | {hyper} | {_cell(spec.summary)} |")
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


if __name__ == "__main__":  # python -m lossdsl.catalogue README.md  (rewrites the block)
    import sys
    from pathlib import Path

    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(fill_readme(path.read_text(encoding="utf-8")), encoding="utf-8")
