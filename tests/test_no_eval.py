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


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_eval_exec_or_dynamic_import(path):
    text = path.read_text(encoding="utf-8")
    found = [
        f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {what}"
        for what, pattern in FORBIDDEN.items()
        for m in pattern.finditer(text)
    ]
    assert not found, "forbidden constructs: " + "; ".join(found)


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
