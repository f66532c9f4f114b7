"""The layers of DESIGN.md §2: each phase imports only the phases below it, with no import
hidden inside a function, and the language phases load without torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lossdsl"


def test_the_import_linter_contracts_are_kept():
    # the contracts are in pyproject.toml: the layer order, no torch in the language phases,
    # terms that import only torch and the errors, a monitor that never reads syntax or IR.
    # In a process of its own: import-linter reconfigures logging, which would silence the
    # loggers of the tests that run after it in this one.
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "KEPT" in done.stdout


def _function_level_imports(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line module`` of each import of lossdsl's own modules inside a function or class."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    nested = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    for scope in nested:
        for node in ast.walk(scope):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "lossdsl"):
                found.append(f"{path.relative_to(root)}:{node.lineno} {'.' * node.level}{node.module or ''}")
            elif isinstance(node, ast.Import):
                found += [f"{path.relative_to(root)}:{node.lineno} {a.name}" for a in node.names
                          if a.name.split(".")[0] == "lossdsl"]
    return found


def test_no_module_imports_the_package_inside_a_function():
    # a function-level import hides a cycle from the contracts above; optional third-party
    # extras (matplotlib, tqdm, tensorboard) may still be imported where they are used
    found = sorted({hit for path in PACKAGE.rglob("*.py") for hit in _function_level_imports(path)})
    assert found == []


def test_the_checker_finds_a_function_level_import(tmp_path):
    # the check above can fail: a module with such an import is reported
    module = tmp_path / "lossdsl" / "probe.py"
    module.parent.mkdir()
    module.write_text("import torch\n\ndef f():\n    from .errors import LossDSLError\n    import lossdsl.syntax\n")
    hits = [hit.split(" ", 1)[1] for hit in _function_level_imports(module, tmp_path)]
    assert hits == [".errors", "lossdsl.syntax"]


_NO_TORCH = """
import sys
import lossdsl
program = lossdsl.parse("recon = huber(delta=1)\\n0.7*recon + 0.3*temporal_diff")
text = lossdsl.unparse(program)
assert text == "recon = huber(delta=1)\\n0.7 * recon + 0.3 * temporal_diff", text
assert lossdsl.parse(text) == program
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
print(len(loaded), loaded[:3])
"""


def test_parse_and_unparse_load_no_torch():
    result = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0 []"
