"""The integration surface (configs, Hydra, the command line and its tools, the demo) given the
input of a careless or hostile user: each test states a promised behaviour, found broken
and mended, or one that held up and was not covered."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lossdsl
from lossdsl.cli import main
from lossdsl.config import ConfigError
from lossdsl.monitor import read_jsonl
from lossdsl.tools.gradcheck import run_gradcheck
from lossdsl.tools.suggest import suggest_from_log


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write_rows(path, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def two_term_rows(n: int = 4) -> list[dict]:
    rows = []
    for step in range(1, n + 1):
        a, b = 3.0, 1.0
        rows.append({
            "step": step, "loss/total": a + b,
            "loss/mse": a, "loss/mse/weight": 1.0, "loss/mse/weighted": a, "loss/mse/share": a / (a + b),
            "loss/mae": b, "loss/mae/weight": 1.0, "loss/mae/weighted": b, "loss/mae/share": b / (a + b),
        })
    return rows


# --- reading logs from Python: the same checks as the command line -------------------------


def _not_logs(tmp_path) -> dict[str, str]:
    text = tmp_path / "text.jsonl"
    text.write_text("hello, this is not a log\n")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage\n")
    return {
        "text": str(text), "binary": str(binary), "missing": str(tmp_path / "missing.jsonl"),
        "folder": str(tmp_path),
    }


@pytest.mark.parametrize("kind", ["text", "binary", "missing", "folder"])
def test_suggest_from_log_of_a_file_that_is_not_a_log(tmp_path, kind):
    path = _not_logs(tmp_path)[kind]
    for read in (read_jsonl, suggest_from_log):
        with pytest.raises(lossdsl.LossDSLError) as info:
            read(path)
        assert info.value.hint


def test_the_command_line_reports_the_same_files_without_a_traceback(tmp_path, capsys):
    for kind, path in _not_logs(tmp_path).items():
        code, out, err = run_main(capsys, "balance", path)
        assert code == 1 and "Traceback" not in err and err.startswith("lossdsl.LossDSLError"), (kind, err)


# --- plot -----------------------------------------------------------------------------------


def test_plot_of_a_log_with_huge_shares_gives_no_traceback(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "huge.jsonl"
    # valid JSON, every value a finite float: read_log accepts the file
    write_rows(log, [{"step": 1, "loss/mse": 1.0, "loss/mse/share": 1e300, "loss/total": 1.0}])
    code, out, err = run_main(capsys, "plot", str(log), "-o", str(tmp_path / "huge.png"))
    assert code in (0, 1) and "Traceback" not in err
    if code == 1:
        assert err.startswith("lossdsl.LossDSLError")


def test_plot_without_a_suffix_says_where_the_image_is(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "run.jsonl"
    write_rows(log, two_term_rows())
    out_path = tmp_path / "figure"
    code, out, err = run_main(capsys, "plot", str(log), "-o", str(out_path))
    assert code == 0
    written = out.strip().removeprefix("wrote ")
    assert os.path.isfile(written), (written, sorted(os.listdir(tmp_path)))
    assert open(written, "rb").read(8) == b"\x89PNG\r\n\x1a\n"  # "none means PNG"


def test_plot_suffix_in_capitals_is_the_same_format(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "run.jsonl"
    write_rows(log, two_term_rows())
    code, out, err = run_main(capsys, "plot", str(log), "-o", str(tmp_path / "figure.PNG"))
    assert code == 0
    assert (tmp_path / "figure.PNG").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- balance --------------------------------------------------------------------------------


def test_balance_rewrites_a_subtracted_term_with_its_sign(tmp_path, capsys):
    # a log written by a real loss with a negative weight; the shares are |weighted| / sum |weighted|
    log = tmp_path / "neg.jsonl"
    crit = lossdsl.compile("mse - 0.5*mae")
    crit.monitor.attach(lossdsl.JsonlWriter(str(log)), every=1)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        crit(torch.randn(16, generator=g), 3 * torch.randn(16, generator=g))
    crit.monitor.close()
    code, out, err = run_main(capsys, "balance", str(log), "mse - 0.5*mae")
    assert code == 0, err
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    weighted = {n: sum(abs(r[f"loss/{n}/weighted"]) for r in rows) / len(rows) for n in ("mse", "mae")}
    weight = {n: sum(r[f"loss/{n}/weight"] for r in rows) / len(rows) for n in ("mse", "mae")}
    # equal shares keeping the total magnitude: w_i' = w_i * (sum_j |weighted_j| / K) / |weighted_i|
    mean = sum(weighted.values()) / 2
    expected = {n: weight[n] * mean / weighted[n] for n in weight}
    program = out.split("suggested program:")[1].strip()
    resolved = lossdsl.check(program)
    assert resolved.names() == ["mse", "mae"]
    crit2 = lossdsl.compile(program, nonfinite="raise")
    crit2(torch.zeros(3), torch.ones(3))
    for n in expected:
        assert math.isclose(float(crit2.weights[n]), expected[n], rel_tol=2e-3), (n, program, expected)
    assert expected["mae"] < 0


# --- configs --------------------------------------------------------------------------------


def test_an_empty_sink_in_a_config_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(lossdsl.LossDSLError):
        crit = lossdsl.from_config({"expr": "mse", "monitor": {"sink": "", "log_every": 1}})
        crit(torch.zeros(3), torch.ones(3))
        crit.monitor.close()
    assert not (tmp_path / "runs").exists()


def test_an_empty_jsonl_writer_path_is_refused():
    with pytest.raises(lossdsl.LossDSLError):
        lossdsl.JsonlWriter("")


@pytest.mark.parametrize("name, text", [("loss.json", '{"expr": "0.5*mse"}'), ("loss.toml", 'expr = "0.5*mse"\n')])
def test_a_config_with_a_byte_order_mark(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert lossdsl.config.load_config(str(path)).expr == "0.5*mse"


def test_a_yaml_config_with_a_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "loss.yaml"
    path.write_bytes(b"\xef\xbb\xbfexpr: 0.5*mse\r\nnonfinite: warn\r\n")
    cfg = lossdsl.config.load_config(str(path))
    assert (cfg.expr, cfg.nonfinite) == ("0.5*mse", "warn")


def test_compile_strict_as_text_is_not_silently_true():
    assert lossdsl.from_config({"expr": "mse", "strict": "false"}).strict is False
    try:
        crit = lossdsl.compile("mse", strict="false")
    except lossdsl.LossDSLError:
        return
    assert crit.strict is False


def test_keys_of_the_loss_config_that_are_not_text():
    with pytest.raises(ConfigError) as info:
        lossdsl.from_config({1: "x", "expr": "mse"})
    assert "unknown key '1'" in info.value.message


# --- Hydra / OmegaConf ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [{"expr": "???"}, {"expr": "mse", "monitor": {"sink": "???"}}, {"loss": "???"}])
def test_an_unset_omegaconf_value_is_a_config_error(data):
    omegaconf = pytest.importorskip("omegaconf")
    with pytest.raises(ConfigError):
        lossdsl.from_config(omegaconf.OmegaConf.create(data))


def test_unset_values_outside_the_loss_config_are_not_read():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"loss": "0.5*mse", "optimizer": {"lr": "???"}})
    crit = lossdsl.from_config(cfg)
    torch.testing.assert_close(crit(torch.zeros(4), torch.full((4,), 2.0)), torch.tensor(2.0))
    cfg = omegaconf.OmegaConf.create({"a": {"b": {"expr": "mae"}}, "c": "???"})
    assert lossdsl.from_config(cfg, key="a.b").source == "mae"


# --- gradcheck ------------------------------------------------------------------------------


def test_gradcheck_of_a_boolean_input_used_as_a_condition():
    program = "input m\nmean(where(m, pred^2, 0))"
    crit = lossdsl.compile(program)  # the program is valid with a boolean m
    m = torch.tensor([True, False, True])
    torch.testing.assert_close(crit(torch.tensor([1.0, 2.0, 3.0]), None, m=m), torch.tensor(10.0 / 3))
    report = run_gradcheck(program, shape=(3,))
    assert report.ok, report.text


def test_gradcheck_input_that_the_program_does_not_read(capsys):
    code, out, err = run_main(capsys, "gradcheck", "mse(weight=w)", "--input", "W=4,8,3")
    assert code == 1 and "'W'" in err


def test_gradcheck_input_shapes_reach_the_program(capsys):
    code, out, err = run_main(capsys, "gradcheck", "vae_kl", "--input", "mu=2,5", "--input", "logvar=2,5")
    assert code == 0 and "mu(2, 5)" in out and "logvar(2, 5)" in out


# --- empty batches --------------------------------------------------------------------------


def test_an_inline_reduction_of_an_empty_batch_is_left_to_the_policy():
    # README "Empty batches": the catalogue terms give 0; a tensor expression's mean is
    # torch's, NaN, and meets the non-finite policy like any other value
    with pytest.raises(lossdsl.NonFiniteLossError, match="term 'mean' is nan"):
        lossdsl.compile("mean((pred - target)^2) + 0.5*mse")(torch.empty(0, 4), torch.empty(0, 4))
    crit = lossdsl.compile("mean((pred - target)^2) + 0.5*mse", nonfinite="zero_term")
    pred = torch.empty(0, 4, requires_grad=True)
    loss = crit(pred, torch.empty(0, 4))
    assert loss.item() == 0.0  # mse of nothing is 0, the NaN term is replaced by 0
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)


# --- demo -----------------------------------------------------------------------------------


def test_demo_never_deletes_a_log_it_finds(tmp_path, capsys):
    config = tmp_path / "loss.yaml"
    config.write_text("expr: mse\nmonitor: {sink: elsewhere.jsonl, append: true}\n")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    earlier = json.dumps({"step": 7, "loss/mse": 1.0, "loss/mse/weight": 1.0, "loss/mse/share": 1.0})
    (out_dir / "terms.jsonl").write_text(earlier + "\n")
    code, out, err = run_main(capsys, "demo", "--steps", "1", "--out", str(out_dir), "--config", str(config),
                              "--no-progress")
    # refused before the run (exit 1), or appended to: never replaced silently
    assert (out_dir / "terms.jsonl").read_text().splitlines()[0] == earlier


def test_demo_with_monitoring_off(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    config = tmp_path / "loss.yaml"
    config.write_text("expr: mse\nmonitor: {enabled: false}\n")
    code, out, err = run_main(capsys, "demo", "--steps", "1", "--out", str(tmp_path / "run"),
                              "--config", str(config), "--no-progress")
    assert code == 0 or "trained" not in out, (code, out, err)


# --- positions of program errors in YAML files ---------------------------------------------


def _caret_text(path) -> str:
    with pytest.raises(lossdsl.LossNameError) as info:
        lossdsl.config.load_config(str(path)).check()
    err = info.value
    return err.source[err.span[0] : err.span[1]]


@pytest.mark.parametrize("value", ["&e 0.7*huber + 0.3*temporl_diff", "!!str 0.7*huber + 0.3*temporl_diff",
                                   '!!str "0.7*huber + 0.3*temporl_diff"', "&e '0.7*huber + 0.3*temporl_diff'"])
def test_a_caret_after_a_yaml_anchor_or_tag(tmp_path, value):
    path = tmp_path / "loss.yaml"
    path.write_text(f"expr: {value}\n")
    assert _caret_text(path) == "temporl_diff"


@pytest.mark.parametrize("text", [
    "expr: !!str |\n  0.7*huber\n  + 0.3*temporl_diff\n",
    "expr: &anchor |\n  0.7*huber + 0.3*temporl_diff\n",
    "? expr\n: 0.7*huber + 0.3*temporl_diff\n",
    "---\nexpr:   0.7*huber + 0.3*temporl_diff   # comment\n...\n",
    'loss: {expr: "0.7*huber + 0.3*temporl_diff", strict: true}\n',
])
def test_carets_in_other_yaml_layouts(tmp_path, text):
    path = tmp_path / "loss.yaml"
    path.write_text(text.replace("0.7*huber\n  + 0.3", "0.7*huber +\n  0.3"))
    assert _caret_text(path) == "temporl_diff"


# --- a program that starts with a minus -----------------------------------------------------


def test_a_program_that_starts_with_a_minus(capsys):
    assert main(["check", "-0.5*mse + mae"]) == 0  # with a space argparse leaves it alone
    capsys.readouterr()
    try:
        code = main(["check", "-mse"])
    except SystemExit:
        assert "--" in capsys.readouterr().err.replace("--version", "").replace("--config", "")
        return
    assert code == 0


# --- examples run as scripts, in a fresh interpreter ----------------------------------------


def _chains(tree: ast.AST) -> set[str]:
    """Every dotted ``lossdsl.a.b...`` chain that a script's code reads."""
    found = set()
    for node in ast.walk(tree):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "lossdsl" and parts:
            found.add(".".join(["lossdsl", *reversed(parts)]))
    return found


def test_the_names_the_examples_and_the_readme_use_resolve_after_a_plain_import():
    # in a fresh interpreter: in this one other tests have imported the subpackages already
    root = Path(__file__).resolve().parent.parent
    chains = set()
    for script in sorted((root / "examples").glob("*.py")):
        chains |= _chains(ast.parse(script.read_text()))
    chains |= set(re.findall(r"`(lossdsl\.[a-z_]+\.[A-Za-z_.]+)`", (root / "README.md").read_text()))
    assert {"lossdsl.config.load_config", "lossdsl.monitor.read_jsonl"} <= chains
    code = ("import functools, sys, lossdsl\nfor chain in sys.argv[1:]:\n"
            "    functools.reduce(getattr, chain.split('.')[1:], lossdsl)\n")
    result = subprocess.run([sys.executable, "-c", code, *sorted(chains)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_program_error_in_an_inline_toml_table(tmp_path):
    path = tmp_path / "train.toml"
    text = 'loss = {expr = "0.7*huber + 0.3*temporl_diff"}\n'
    path.write_text(text)
    with pytest.raises(lossdsl.LossNameError) as info:
        lossdsl.config.load_config(str(path)).check()
    err = info.value
    assert "train.toml" in err.message and "loss.expr" in err.message
    if err.span is not None:  # a caret, if any, stands in the file, under the typo
        assert err.source == text and text[err.span[0] : err.span[1]] == "temporl_diff"
