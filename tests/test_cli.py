"""The ``lossdsl`` command line: every command once as a subprocess (exit codes and what it
prints), further cases in-process through ``lossdsl.cli.main`` to keep the suite fast."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from lossdsl.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lossdsl(*args: str, cwd=None, module: str = "lossdsl.cli"):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
    )


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_valid_and_invalid(capsys):
    code, out, err = run_main(capsys, "check", "0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)")
    assert code == 0, err
    assert "ok: 0.7 * huber(delta=1) + 0.3 * temporal_diff + watch(mse)" in out
    assert "3 terms: huber, temporal_diff, mse" in out

    # as `python -m lossdsl`, the same as the console script
    bad = lossdsl("check", "0.7*hubr(delta=1) + 0.3*temporal_diff", module="lossdsl")
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert lines[0] == "lossdsl.LossNameError: unknown loss term 'hubr' (line 1, column 5)"
    assert lines[1] == "  0.7*hubr(delta=1) + 0.3*temporal_diff"
    assert lines[2] == "      ^^^^"
    assert lines[3] == "hint: did you mean 'huber'?"
    assert bad.stdout == ""


def test_check_a_config_file_and_stdin(tmp_path, capsys, monkeypatch):
    text = "model: lstm\nloss:\n  expr: |\n    mse +\n    0.1*hubr\n"
    (tmp_path / "train.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, "check", "--config", "train.yaml")
    assert code == 1
    assert err.startswith("lossdsl.LossNameError: train.yaml, key 'loss.expr'")
    assert "(line 5, column 9)" in err  # 'hubr' in the file, counted by hand
    assert "'huber'" in err.splitlines()[-1]  # the hint
    # checking a config opens no sink and writes no file
    (tmp_path / "good.toml").write_text('expr = "mse"\n[monitor]\nsink = "out/terms.jsonl"\nlog_every = 1\n')
    assert run_main(capsys, "check", "--config", "good.toml")[0] == 0
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(sys, "stdin", io.StringIO("recon = mse\nrecon + 0.5*mae\n"))
    code, out, _ = run_main(capsys, "check", "-")
    assert code == 0 and "2 terms: recon, mae" in out


def test_explain_shows_terms_weights_hyperparameters_and_inputs():
    result = lossdsl("explain", "r = huber(delta=2)\n0.7*r + 0.3*mse(pred=out.depth, weight=w) + watch(mae)")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["r"][1:3] == ["huber", "0.7"]
    assert "delta=2," in rows["r"]
    assert rows["mse"][1:3] == ["mse", "0.3"]
    assert "pred<-out.depth," in rows["mse"] and "weight<-w," in rows["mse"]
    assert rows["mae"][1:3] == ["mae", "0"]
    # the tree: a sum of two products and a watch, each node with its kind
    assert "add : loss" in result.stdout and "`-- watch : loss" in result.stdout
    assert "|   |-- 0.7 : const" in result.stdout


def test_explain_names_a_schedule_weight(capsys):
    code, out, err = run_main(capsys, "explain", "recon = mse\nrecon + linear(0, 1, steps=100)*vae_kl")
    assert code == 0, err
    kl = next(line for line in out.splitlines() if line.startswith("vae_kl "))
    assert "linear(start=0, end=1, steps=100" in kl and "mu, logvar" in kl


def test_explain_graph_prints_the_generated_code(tmp_path, capsys):
    result = lossdsl("explain", "--graph", "r = huber(delta=2)\n0.7*r + 0.3*mae")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the forward of the program's torch.fx graph: straight-line code, weights as numbers
    assert lines[0] == "def forward(self, pred, target, inputs, step, balancers):"
    assert lines[-1].lstrip().startswith("return (")
    assert any(line.lstrip().startswith("r = ") for line in lines)  # the term, under its log name
    assert any("0.7 * " in line for line in lines) and any("0.3 * " in line for line in lines)
    assert "term  function" not in result.stdout  # the code instead of the tree and table
    # from a config as well; a bad program is an error with its caret, not a traceback
    (tmp_path / "loss.yaml").write_text("expr: mse + 0.5*mae\n")
    code, out, _ = run_main(capsys, "explain", "--graph", "--config", str(tmp_path / "loss.yaml"))
    assert code == 0 and out.startswith("def forward(") and "0.5 * " in out
    code, out, err = run_main(capsys, "explain", "--graph", "0.5*hubr")
    assert code == 1 and out == "" and err.startswith("lossdsl.LossNameError: unknown loss term 'hubr'")
    assert "did you mean 'huber'?" in err


def test_terms_lists_the_catalogue_and_shows_one(capsys):
    listing = lossdsl("terms")
    assert listing.returncode == 0
    names = {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}
    # the catalogue of DESIGN.md section 5
    for name in ("mse", "mae", "l1", "huber", "smooth_l1", "temporal_diff", "focal", "cross_entropy",
                 "pairwise_ranking", "vae_kl", "kl_div", "triplet", "l2_reg"):
        assert name in names, name
    code, out, _ = run_main(capsys, "terms", "huber")
    assert code == 0
    assert "delta: float > 0 = 1.0" in out and "Huber loss" in out
    code, out, _ = run_main(capsys, "terms", "linear")
    assert code == 0 and "schedule" in out and "steps" in out
    code, _, err = run_main(capsys, "terms", "hubr")
    assert code == 1 and "did you mean 'huber'?" in err


def test_terms_shows_the_built_in_functions_of_the_language(capsys):
    code, out, _ = run_main(capsys, "terms")
    functions = next(line for line in out.splitlines() if line.startswith("built-in functions: "))
    listed = functions.split(": ", 1)[1].split(", ")
    # DESIGN.md section 3.1 and 6: math, reductions, shape functions, schedules, balance
    for name in ("abs", "where", "clamp", "mean", "logsumexp", "norm", "softmax", "size", "detach",
                 "watch", "linear", "cyclic", "after", "balance"):
        assert name in listed, name
    code, out, _ = run_main(capsys, "terms", "mean")
    assert code == 0 and out.splitlines()[0] == "mean  (built-in reduction function)"
    assert "  dim = None" in out and "  keepdim = False" in out
    code, out, _ = run_main(capsys, "terms", "balance")
    assert code == 0 and out.startswith("balance  (built-in balance function)")
    for method in ("uncertainty", "ema", "dwa", "cov", "softadapt", "relobralo"):
        assert method in out, method


def test_gradcheck_passes_and_fails():
    good = lossdsl("gradcheck", "0.7*huber(delta=1) + 0.3*temporal_diff", "--shape", "3,5,2")
    assert good.returncode == 0, good.stderr
    assert "gradcheck passed" in good.stdout and "pred(3, 5, 2)" in good.stdout


def test_gradcheck_fails_where_the_gradient_is_not_the_values(capsys):
    # detach() removes the gradient but not the value: finite differences disagree
    code, _, err = run_main(capsys, "gradcheck", "mae + detach(mse)", "--shape", "4")
    assert code == 1
    assert "gradcheck FAILED" in err and "  mse: passed" in err  # the term itself is fine


def test_gradcheck_other_inputs_and_their_shapes(capsys):
    code, out, err = run_main(capsys, "gradcheck", "mse + vae_kl", "--shape", "4,6",
                              "--input", "mu=4,2", "--input", "logvar=4,2")
    assert code == 0, err
    assert "mu(4, 2)" in out and "logvar(4, 2)" in out and "pred(4, 6)" in out
    code, out, err = run_main(capsys, "gradcheck", "mse(pred=out.depth, target=gt) + 0.1*mae", "--shape", "2,3")
    assert code == 0, err
    assert "out.depth(2, 3)" in out and "gt(2, 3)" in out


def test_gradcheck_names_the_term_with_a_wrong_gradient(capsys):
    import lossdsl

    def half_gradient(pred, target):
        """The value of mse with half its gradient: a term whose backward is wrong."""
        sq = ((pred - target) ** 2).mean()
        return 0.5 * sq + 0.5 * sq.detach()

    lossdsl.registry.register(half_gradient, replace=True)
    try:
        code, _, err = run_main(capsys, "gradcheck", "0.5*mae + half_gradient", "--shape", "3,2")
    finally:
        lossdsl.registry.unregister("half_gradient")
    assert code == 1
    assert "  mae: passed" in err
    assert "  half_gradient: FAILED" in err


def _write_log(path, rows):
    with open(path, "w") as f:
        for step, (a, b) in enumerate(rows, start=1):
            f.write(json.dumps({
                "step": step, "loss/total": a + b,
                "loss/mse": a, "loss/mse/weight": 1.0, "loss/mse/weighted": a, "loss/mse/share": a / (a + b),
                "loss/mae": b, "loss/mae/weight": 1.0, "loss/mae/weighted": b, "loss/mae/share": b / (a + b),
            }) + "\n")


def test_plot_reads_a_jsonl_log(tmp_path):
    log = tmp_path / "run.jsonl"
    _write_log(log, [(3.0 / k, 1.0) for k in range(1, 11)])
    plot = lossdsl("plot", str(log), "-o", str(tmp_path / "terms.png"))
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "terms.png").read_bytes()[:8] == PNG_MAGIC


def test_balance_reads_a_jsonl_log(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    _write_log(log, [(3.0, 1.0)] * 10)
    balance = lossdsl("balance", str(log), "mse + mae  # the run's program")
    assert balance.returncode == 0, balance.stderr
    weights = dict(re.findall(r"^\s+(mse|mae)\s+([0-9.eE+-]+)$", balance.stdout, re.M))
    # equal shares: each weight times its magnitude is the same, so w_mae / w_mse = 3 / 1
    assert float(weights["mae"]) / float(weights["mse"]) == pytest.approx(3.0, rel=1e-3)
    program = balance.stdout.split("suggested program:")[1].strip()
    assert program.endswith("# the run's program")
    # other target shares: w_mse * 3 : w_mae * 1 = 0.75 : 0.25, so w_mae / w_mse = 1
    code, out, err = run_main(capsys, "balance", str(log), "--target", "mse=0.75,mae=0.25")
    assert code == 0, err
    weights = dict(re.findall(r"^\s+(mse|mae)\s+([0-9.eE+-]+)$", out, re.M))
    assert float(weights["mae"]) / float(weights["mse"]) == pytest.approx(1.0, rel=1e-3)


def test_missing_log(tmp_path, capsys):
    code, _, err = run_main(capsys, "plot", str(tmp_path / "nope.jsonl"))
    assert code == 1 and "nope.jsonl" in err


def test_schema_is_json_of_the_config_model():
    result = lossdsl("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "LossConfig"
    assert set(schema["properties"]) == {"expr", "monitor", "nonfinite", "strict"}
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_demo_writes_its_log_and_plot(tmp_path):
    result = lossdsl("demo", "--steps", "20", "--out", "out", "--no-progress", "--print-every", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "huber" in result.stdout and "temporal_diff" in result.stdout
    assert "suggested weights" in result.stdout
    records = [json.loads(line) for line in (tmp_path / "out" / "terms.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]  # log_every: 10 in the config
    assert (tmp_path / "out" / "terms.png").read_bytes()[:8] == PNG_MAGIC


def test_missing_program(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain"])
    assert info.value.code == 2 and "give a program" in capsys.readouterr().err
    code, _, err = run_main(capsys, "balance", "run.jsonl", "--target", "mse=lots")
    assert code == 1 and "must be a number" in err


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("lossdsl ")
    for argv in (["frobnicate"], ["gradcheck", "mse", "--shape", "4,-1"], ["gradcheck", "mse", "--shape", "four"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
