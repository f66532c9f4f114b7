"""The package never evaluates text as code and never imports user-named modules (DESIGN.md §3)."""

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lossdsl"

# `eval(` / `exec(` as calls of the builtins: a method such as `module.eval()` is fine, and so
# is a longer name that merely ends in "eval" (`_eval(`), so the name must not follow a dot or
# a word character.
FORBIDDEN = {
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
    "__import__": re.compile(r"\b__import__\b"),
    "importlib.import_module": re.compile(r"\bimportlib\s*\.\s*import_module\b|\bimport_module\b"),
    "builtins.eval/exec": re.compile(r"\bbuiltins\s*\.\s*(eval|exec)\b"),
}


def sources():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 10, f"expected the package sources under {PACKAGE}"
    return files


# The two places that import by name, each from a fixed table of the package's own: the lazy
# public names of `lossdsl` (so that `parse` needs no torch) and torch for the function tables.
IMPORTS_BY_NAME = {"__init__.py", "language/lazy.py"}


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_eval_exec_or_dynamic_import(path):
    text = path.read_text(encoding="utf-8")
    allowed = {"importlib.import_module"} if str(path.relative_to(PACKAGE)) in IMPORTS_BY_NAME else set()
    found = [
        f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {what}"
        for what, pattern in FORBIDDEN.items()
        if what not in allowed
        for m in pattern.finditer(text)
    ]
    assert not found, "forbidden constructs: " + "; ".join(found)


def test_names_imported_by_name_come_from_fixed_tables():
    import lossdsl
    from lossdsl.language import lazy

    assert all(module.startswith("lossdsl.") for module in lossdsl._LAZY.values())
    from lossdsl.language.functions import FUNCTIONS, OPERATORS

    # every lazy name of the tables hangs off one of two fixed roots: torch itself, and the
    # optional TorchJD whose aggregators the gradient balancers name
    from lossdsl.language.balancers import METHODS

    assert lazy.T.path == "torch" and lazy.TORCHJD.path == "torchjd"
    runs = [row.run for row in [*FUNCTIONS.values(), *OPERATORS.values()]]
    named = [run.path for run in runs if isinstance(run, lazy.LazyAttribute)]
    assert named and all(path.startswith("torch.") for path in named)
    classes = [m.aggregation.make for m in METHODS.values() if m.aggregation is not None]
    assert classes and all(isinstance(c, lazy.LazyAttribute) for c in classes)
    assert all(c.path.startswith("torchjd.aggregation.") for c in classes)


@pytest.mark.parametrize(
    "line, bad",
    [
        ("x = eval(text)", True),
        ("exec (code)", True),
        ("m = __import__('os')", True),
        ("importlib.import_module(name)", True),
        ("from importlib import import_module", True),
        ("model.eval()", False),
        ("def _eval(x): pass", False),
        ("evaluate(x)", False),
    ],
)
def test_the_patterns_themselves(line, bad):
    assert any(p.search(line) for p in FORBIDDEN.values()) is bad
