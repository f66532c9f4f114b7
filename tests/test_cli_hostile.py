"""The command line on wrong, hostile and heavy input: usage errors exit 2, problems exit 1
with a message and never a traceback, and a reader that goes away ends it quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lossdsl.cli import main


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    return capsys.readouterr().err


def write_log(path, rows=((3.0, 1.0),) * 4) -> None:
    with open(path, "w") as f:
        for step, (a, b) in enumerate(rows, start=1):
            f.write(json.dumps({
                "step": step, "loss/total": a + b,
                "loss/mse": a, "loss/mse/weight": 1.0, "loss/mse/weighted": a, "loss/mse/share": a / (a + b),
                "loss/mae": b, "loss/mae/weight": 1.0, "loss/mae/weighted": b, "loss/mae/share": b / (a + b),
            }) + "\n")


# --- usage errors are 2 ----------------------------------------------------------------------


def test_a_command_without_its_program_is_a_usage_error(capsys):
    for command in ("check", "explain", "gradcheck"):
        err = usage_error(capsys, command)
        assert err.startswith(f"usage: lossdsl {command}") and "give a program" in err


def test_a_program_and_a_config_together_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "loss.yaml"
    config.write_text("expr: mse\n")
    # the program on the command line would otherwise be ignored without a word
    assert "not both" in usage_error(capsys, "check", "mae", "--config", str(config))
    assert "not both" in usage_error(capsys, "explain", "mae", "--config", str(config))
    log = tmp_path / "run.jsonl"
    write_log(log)
    assert "not both" in usage_error(capsys, "balance", str(log), "mse + mae", "--config", str(config))
    assert "--key" in usage_error(capsys, "check", "mse", "--key", "loss")


@pytest.mark.parametrize("argv", [
    ["gradcheck", "mse", "--seed", str(2**70)],
    ["demo", "--steps", "0"],
    ["demo", "--print-every", "-3"],
    ["schema", "--indent", "1000000000"],
])
def test_numbers_out_of_range_are_usage_errors(capsys, argv):
    assert "error:" in usage_error(capsys, *argv)


# --- problems are 1, with a message ----------------------------------------------------------


def test_balance_of_a_config_prints_no_blank_line(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    write_log(log)
    config = tmp_path / "loss.yaml"
    config.write_text("expr: |\n  mse + mae\n")  # a block scalar ends in a line break
    code, out, err = run_main(capsys, "balance", str(log), "--config", str(config))
    assert code == 0, err
    assert not out.endswith("\n\n") and "\n\n" not in out
    assert out.splitlines()[-1].strip().endswith("*mae")


@pytest.mark.parametrize("content", [
    bytes(range(128, 256)) * 10 + b"\n{}",
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    b'{"step": 1, "loss/mse/share": "high"}\n',
    b'{"step": 1, "loss/mse/share": ' + b"9" * 5000 + b"}\n",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"step": 1, "loss/mse/share": 1.0\n',
    b"[1, 2, 3]\n",
    b'{"step": "one"}\n',
])
@pytest.mark.parametrize("command", ["plot", "balance"])
def test_a_file_that_is_not_a_log(tmp_path, capsys, command, content):
    log = tmp_path / "run.jsonl"
    log.write_bytes(content)
    code, out, err = run_main(capsys, command, str(log))
    assert code == 1
    assert "run.jsonl" in err and "line 1" in err and "hint:" in err
    assert not (tmp_path / "run.png").exists()


@pytest.mark.parametrize("command", ["plot", "balance"])
def test_a_log_that_is_a_directory_or_a_device(tmp_path, capsys, command):
    (tmp_path / "dir.jsonl").mkdir()
    code, _, err = run_main(capsys, command, str(tmp_path / "dir.jsonl"))
    assert code == 1 and "directory" in err
    if os.path.exists("/dev/zero"):
        code, _, err = run_main(capsys, command, "/dev/zero")
        assert code == 1 and "not a regular file" in err


@pytest.mark.parametrize("name, content", [
    ("bin.yaml", b"expr: " + bytes(range(128, 256))),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000),
    ("big.json", b'{"expr": "mse", "strict": ' + b"1" * 5000 + b"}"),
    ("dup.yaml", b"expr: mse\nexpr: mae\n"),
])
@pytest.mark.parametrize("command", ["check", "explain", "gradcheck"])
def test_a_bad_config_file(tmp_path, capsys, command, name, content):
    (tmp_path / name).write_bytes(content)
    code, _, err = run_main(capsys, command, "--config", str(tmp_path / name))
    assert code == 1
    assert err.startswith("lossdsl.config.ConfigError: ") and name in err


def test_a_program_on_stdin_that_is_not_utf8():
    # whatever the locale's decoding of stdin, bytes that are not UTF-8 are a clear error
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8:strict")
    result = subprocess.run([sys.executable, "-m", "lossdsl", "check", "-"], input=b"mse + \xff\xfe",
                            capture_output=True, timeout=300, env=env)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("lossdsl.LossDSLError: standard input is not UTF-8 text")
    ok = subprocess.run([sys.executable, "-m", "lossdsl", "check", "-"], input="mse + 0.5*mae".encode(),
                        capture_output=True, timeout=300, env=env)
    assert ok.returncode == 0 and ok.stdout.decode().startswith("ok: mse + 0.5 * mae")


def test_demo_onto_a_file(tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("not a folder")
    code, _, err = run_main(capsys, "demo", "--out", str(target), "--steps", "1", "--no-progress")
    assert code == 1 and "is a file" in err
    assert target.read_text() == "not a folder"
    code, _, err = run_main(capsys, "demo", "--out", str(target / "inside"), "--steps", "1", "--no-progress")
    assert code == 1 and "lossdsl demo:" in err


def test_a_huge_gradcheck_shape_is_refused_before_any_work(capsys):
    start = time.perf_counter()
    for argv in (["--shape", "100000,100000"], ["--shape", "4,8,3", "--input", "mu=99999999999999999999"]):
        code, _, err = run_main(capsys, "gradcheck", "mse + vae_kl", *argv)
        assert code == 1 and "more than 4096 elements" in err
    assert time.perf_counter() - start < 10


def test_plot_without_matplotlib_names_the_extra_when_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    # the log does not even exist: the missing extra is found first, before any work
    code, _, err = run_main(capsys, "plot", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "pip install 'lossdsl[plot]'" in err
    log = tmp_path / "run.jsonl"
    write_log(log)
    code, _, err = run_main(capsys, "plot", str(log), "-o", str(tmp_path / "terms.png"))
    assert code == 1 and "pip install 'lossdsl[plot]'" in err
    assert not (tmp_path / "terms.png").exists()


def test_the_python_plot_function_names_the_extra_too(tmp_path, monkeypatch):
    from lossdsl.tools.plot import plot_log

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    log = tmp_path / "run.jsonl"
    write_log(log)
    with pytest.raises(ImportError, match=r"pip install 'lossdsl\[plot\]'"):
        plot_log(log, tmp_path / "terms.png")


# --- a reader that goes away -----------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["terms"],
    ["schema"],
    ["explain", " + ".join(f"{i}*mse(pred=p{i})" for i in range(1, 200))],
])
def test_a_closed_pipe_ends_quietly(argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lossdsl", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the command writes a byte
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert err.decode() == ""


def test_head_reads_the_first_line_only():
    program = " + ".join(f"{i}*mse(pred=p{i})" for i in range(1, 200))
    result = subprocess.run(
        f"{sys.executable} -m lossdsl explain '{program}' | head -n 1",
        shell=True, capture_output=True, text=True, timeout=300,
    )
    assert result.stdout.startswith("1 * mse(pred=p1) + 2 * mse(pred=p2)")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
