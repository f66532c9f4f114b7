"""The built wheel is complete: installed alone in a fresh venv it parses and compiles a program,
which proves that grammar/lossdsl.lark ships inside it (DESIGN.md §2)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, **kw)
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_alone_and_compiles(tmp_path):
    # Build from a copy of the working tree, so the build leaves nothing behind in it.
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
            ".pytest_cache", "runs", "tests", "benchmarks",
        ),
    )
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)])
    (wheel,) = wheels.glob("lossdsl-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    assert "lossdsl/grammar/lossdsl.lark" in shipped
    # every package of the source tree, every module of each
    modules = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "lossdsl").rglob("*.py"))
    assert [m for m in modules if m not in shipped] == []

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)])

    # The dependencies (torch, lark, pydantic) come from this interpreter's site-packages as a
    # plain path line: .pth files inside it are not run, so its editable lossdsl stays out.
    new_site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    Path(new_site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    check = textwrap.dedent(
        """
        import pathlib, sys, torch, lossdsl
        print(pathlib.Path(lossdsl.__file__).resolve())
        program = lossdsl.parse("0.7*huber(delta=1)+0.3*temporal_diff()")
        print(lossdsl.unparse(program))
        crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
        print(float(crit(torch.zeros(2, 5, 1), torch.ones(2, 5, 1))))
        from lossdsl.cli import main
        sys.exit(main(["explain", "0.7*huber + 0.3*mae"]))
        """
    )
    # cwd outside the repository, so the working tree's lossdsl/ cannot be imported by accident
    out = run([str(python), "-c", check], cwd=tmp_path)
    location, canonical, value = out.split("\n")[:3]
    assert "huber  (term huber) : loss" in out  # the command line and its tools shipped too
    assert Path(location).is_relative_to(venv.resolve()), location
    assert canonical == "0.7 * huber(delta=1) + 0.3 * temporal_diff"
    # huber of e = 1 with delta = 1 is 0.5; the target is constant in time, so temporal_diff is 0
    assert float(value) == pytest.approx(0.7 * 0.5)
