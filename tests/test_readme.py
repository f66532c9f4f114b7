"""Every snippet of README.md runs as written.

Code blocks are told apart by their info string:

- ``python``: executed, each in a fresh interpreter in an empty folder that holds a copy of
  ``examples/``, after :data:`PREAMBLE`, which defines the names the README's snippets take
  from the reader's own training code (``pred``, ``target``, ``model``, ``loader``, ...) as
  small random tensors and modules. A block preceded by ``<!-- not-run: reason -->`` is only
  compiled (as Python); the reason is shown as the skip reason. A block that imports a
  package this environment lacks (an optional extra) is skipped, saying which.
- ``lossdsl``: loss programs, separated by blank lines; each must pass ``lossdsl.check``.
- ``yaml``: loss configs; each must load and check with ``lossdsl.config.load_config``.
- ``text``: output and messages. One that starts with ``$ lossdsl ...`` is a transcript: the
  command's real output must equal the rest of the block.
- ``bash`` and ``toml`` (packaging metadata): not run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import lossdsl
from lossdsl.cli import main
from lossdsl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ALLOWED = {"python", "lossdsl", "yaml", "text", "bash", "toml"}

PREAMBLE = """\
import lossdsl
import torch
torch.manual_seed(0)
# what a training script already has: a batch of (batch, time, channels) series, a model,
# a loader of batches, an optimizer
pred = torch.randn(8, 16, 3, requires_grad=True)
target = torch.randn(8, 16, 3)
w = torch.rand(8, 16, 3)
model = net = torch.nn.Linear(3, 3)
loader = [(torch.randn(8, 16, 3), torch.randn(8, 16, 3)) for _ in range(12)]
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
global_step = 100
"""

# Snippets that fail only because of a change another part of the project is making:
# {a line of the snippet: reason}. Each runs as xfail(strict=True), so the mark must go
# when the change lands.
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    info: str
    text: str
    line: int  # 1-based line of the opening fence
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.info}-line{self.line}"


def readme_blocks() -> list[Block]:
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^( *)```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, info = len(fence.group(1)), fence.group(2)
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = re.fullmatch(r"<!-- not-run: (.+?) -->", before)
        end = next(k for k in range(i + 1, len(lines)) if lines[k].strip() == "```")
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        blocks.append(Block(info, body, i + 1, marker.group(1) if marker else None))
        i = end + 1
    return blocks


BLOCKS = readme_blocks()


def of(info: str) -> list:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.info == info]


def test_every_block_says_what_it_is():
    assert BLOCKS, "no code blocks found"
    unlabelled = [b.line for b in BLOCKS if b.info not in ALLOWED]
    assert not unlabelled, f"code blocks without a known info string at lines {unlabelled}"
    assert sum(b.not_run is not None for b in BLOCKS) <= 3, "not-run is for the rare exception"


def _imports(code: str) -> set[str]:
    """The top-level packages a snippet imports."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


@pytest.mark.parametrize("block", of("python"))
def test_python_blocks_run(block, workdir, request):
    if block.not_run is not None:
        compile(block.text, f"README.md:{block.line}", "exec")
        pytest.skip(f"not run: {block.not_run}")
    for name in _imports(block.text):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"needs {name}, which is not installed here")
    reason = next((r for needle, r in PENDING.items() if needle in block.text), None)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="error::DeprecationWarning:lossdsl")
    result = subprocess.run(
        [sys.executable, "-c", PREAMBLE + block.text], cwd=workdir,
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, f"README.md line {block.line}:\n{result.stderr}"


@pytest.mark.parametrize("block", of("lossdsl"))
def test_program_blocks_compile(block):
    programs = [p for p in re.split(r"\n\s*\n", block.text) if p.strip()]
    assert programs
    for program in programs:
        lossdsl.check(program)


@pytest.mark.parametrize("block", of("yaml"))
def test_config_blocks_load_and_check(block):
    load_config(yaml.safe_load(block.text)).check()


@pytest.mark.parametrize("block", [b for b in of("text") if b.values[0].text.startswith("$ lossdsl ")])
def test_transcripts_show_the_real_output(block, capsys):
    command, _, shown = block.text.partition("\n")
    code = main(shlex.split(command)[2:])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == shown
