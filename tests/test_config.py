"""Loss configs: YAML/JSON/TOML files and mappings, monitor settings, errors located in the file."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.config import ConfigError, LossConfig, load_config

PROGRAM = "0.7*huber(delta=1) + 0.3*temporal_diff"


def reference(pred, target):
    """0.7 Huber + 0.3 mean |first difference of the error along time|, written out."""
    e = pred - target
    return 0.7 * F.huber_loss(pred, target, delta=1.0) + 0.3 * (e[:, 1:] - e[:, :-1]).abs().mean()


def where(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the n-th occurrence of ``needle`` in ``text``, found by hand."""
    seen = 0
    for number, line in enumerate(text.split("\n"), start=1):
        start = 0
        while (col := line.find(needle, start)) != -1:
            seen += 1
            if seen == occurrence:
                return number, col + 1
            start = col + 1
    raise AssertionError(f"{needle!r} not in the text")


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 7, 2, generator=g) * 2, torch.randn(3, 7, 2, generator=g)


CONFIGS = {
    "yaml": f"expr: |\n  {PROGRAM}\nstrict: false\nnonfinite: warn\n",
    "yml": f"expr: '{PROGRAM}'\nstrict: false\nnonfinite: warn\n",
    "json": json.dumps({"expr": PROGRAM, "strict": False, "nonfinite": "warn"}, indent=2),
    "toml": f"expr = '''\n{PROGRAM}\n'''\nstrict = false\nnonfinite = \"warn\"\n",
}


@pytest.mark.parametrize("suffix", sorted(CONFIGS))
def test_each_format_gives_the_loss_and_its_settings(tmp_path, inputs, suffix):
    path = tmp_path / f"loss.{suffix}"
    path.write_text(CONFIGS[suffix])
    crit = lossdsl.from_config(path)
    assert isinstance(crit, lossdsl.Loss)
    assert (crit.strict, crit.nonfinite) == (False, "warn")
    pred, target = inputs
    torch.testing.assert_close(crit(pred, target), reference(pred, target))
    # strict=False: an input that no term reads is accepted
    crit(pred, target, unused=torch.ones(1))


def test_str_path_and_mapping_work_too(tmp_path, inputs):
    path = tmp_path / "loss.yaml"
    path.write_text(CONFIGS["yaml"])
    pred, target = inputs
    for config in (str(path), {"expr": PROGRAM}, LossConfig(expr=PROGRAM)):
        torch.testing.assert_close(lossdsl.from_config(config)(pred, target), reference(pred, target))


def test_defaults_follow_compile():
    crit = lossdsl.from_config({"expr": "mse"})
    assert (crit.strict, crit.nonfinite) == (True, "raise")
    with pytest.raises(lossdsl.LossInputError):
        crit(torch.zeros(2), torch.zeros(2), typo=torch.zeros(2))


def test_a_training_config_with_a_loss_key(tmp_path, inputs):
    pred, target = inputs
    nested = tmp_path / "train.yaml"
    nested.write_text(f"model: lstm\nlr: 0.001\nloss:\n  expr: {PROGRAM}\n  nonfinite: zero_term\n")
    crit = lossdsl.from_config(nested)
    assert crit.nonfinite == "zero_term"
    torch.testing.assert_close(crit(pred, target), reference(pred, target))
    # `loss:` may hold the program text alone
    short = tmp_path / "short.toml"
    short.write_text(f'epochs = 3\nloss = "{PROGRAM}"\n')
    torch.testing.assert_close(lossdsl.from_config(short)(pred, target), reference(pred, target))
    # any other place, by dotted key
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({"train": {"objective": {"expr": "mse"}}}))
    assert lossdsl.from_config(deep, key="train.objective")(torch.zeros(2), torch.ones(2)).item() == 1.0
    with pytest.raises(ConfigError, match="no key 'train.objectiv'") as info:
        lossdsl.from_config(deep, key="train.objectiv")
    assert "did you mean 'objective'?" in str(info.value)


def test_monitor_settings_reach_the_monitor(tmp_path):
    log = tmp_path / "logs" / "terms.jsonl"
    crit = lossdsl.from_config({"expr": "mse + 0.5*mae", "monitor": {
        "ema": 0.5, "probe_every": 2, "log_every": 3, "sink": str(log)}})
    values = []
    for i in range(6):
        pred = torch.full((4,), float(i), requires_grad=True)
        crit(pred, torch.zeros(4), step=i + 1).backward()
        values.append(float(i) ** 2)  # mse of a constant error i
    # bias-corrected EMA with decay 0.5, computed by hand
    weights = [0.5 ** (len(values) - 1 - k) * 0.5 for k in range(len(values))]
    expected = sum(w * v for w, v in zip(weights, values)) / (1 - 0.5 ** len(values))
    assert crit.monitor.stats()["mse"]["ema"] == pytest.approx(expected)
    crit.monitor.close()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]  # every 3 calls, at steps 3 and 6
    # the probe ran (every 2 calls), so the log carries gradient norms
    assert "loss/mse/grad_norm" in records[0]
    # calls 4, 5, 6: raw mse 9, 16, 25 -> the window mean since the last write
    assert records[1]["loss/mse"] == pytest.approx((9 + 16 + 25) / 3)


def test_a_sink_that_is_not_jsonl_is_a_tensorboard_directory(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    crit = lossdsl.from_config({"expr": "mse", "monitor": {"log_every": 1, "sink": str(tmp_path / "tb")}})
    crit(torch.zeros(2), torch.ones(2))
    crit.monitor.close()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


# --- errors point at the file --------------------------------------------------------------


def test_program_error_in_a_yaml_block_scalar_has_the_files_line_and_column(tmp_path):
    text = (
        "# a training config\n"
        "model: lstm\n"
        "loss:\n"
        "  expr: |\n"
        "    recon = huber(delta=1)   # robust\n"
        "    0.7*recon + 0.3*temporl_diff\n"
        "  strict: true\n"
    )
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(lossdsl.LossNameError) as info:
        lossdsl.from_config(path)
    err = info.value
    assert (err.line, err.column) == where(text, "temporl_diff")
    message = str(err)
    assert str(path) in message and "loss.expr" in message
    assert "    0.7*recon + 0.3*temporl_diff" in message  # the file's line, as written
    caret = message.splitlines()[2]
    assert caret.index("^") == message.splitlines()[1].index("temporl_diff")
    assert "did you mean 'temporal_diff'?" in message


def test_parameter_error_in_a_toml_multiline_string(tmp_path):
    text = "[loss]\nstrict = true\nexpr = '''\nrecon = huber(delta=-1)\nrecon + mae'''\n"
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    with pytest.raises(lossdsl.LossArgumentError) as info:
        lossdsl.from_config(path)
    assert (info.value.line, info.value.column) == where(text, "delta=-1")


def test_program_error_in_a_json_string_with_escapes(tmp_path):
    # the program has a line break written as \n: the caret still lands on the name
    text = '{\n  "strict": true,\n  "expr": "mse +\\n 0.3*hubr(delta=1)"\n}\n'
    path = tmp_path / "cfg.json"
    path.write_text(text)
    with pytest.raises(lossdsl.LossNameError) as info:
        lossdsl.from_config(path)
    assert (info.value.line, info.value.column) == where(text, "hubr")


def test_syntax_error_in_a_quoted_yaml_scalar(tmp_path):
    text = 'strict: true\nexpr: "0.7*mse + (mae"\n'
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(lossdsl.LossSyntaxError) as info:
        lossdsl.from_config(path)
    # at the end of input the caret stands after the last character of the program
    line, column = where(text, "(mae")
    assert (info.value.line, info.value.column) == (line, column + len("(mae"))


def test_a_mapping_error_names_the_key_and_keeps_the_program_position():
    with pytest.raises(lossdsl.LossNameError) as info:
        lossdsl.from_config({"expr": "0.7*hubr"})
    assert "config key 'expr'" in str(info.value)
    assert (info.value.line, info.value.column) == (1, 5)


@pytest.mark.parametrize(
    "suffix, text, needle, words",
    [
        ("yaml", "expr: mse\nmonitr:\n  ema: 0.9\n", "monitr", ["unknown key 'monitr'", "did you mean 'monitor'?"]),
        ("yaml", "expr: mse\nmonitor:\n  ema: 1.5\n", "ema", ["'monitor.ema'", "less than 1"]),
        ("json", '{"expr": "mse",\n\t"nonfinite": "ignore"}', '"nonfinite"', ["'nonfinite'", "raise"]),
        ("toml", 'expr = "mse"\n[monitor]\nlog_evry = 5\n', "log_evry", ["'monitor.log_evry'", "log_every"]),
        ("yaml", "exp: mse\n", "exp", ["unknown key 'exp'", "did you mean 'expr'?"]),
    ],
)
def test_a_bad_key_or_value_points_at_the_key(tmp_path, suffix, text, needle, words):
    path = tmp_path / f"cfg.{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        lossdsl.from_config(path)
    err = info.value
    assert isinstance(err, lossdsl.LossDSLError)
    assert (err.line, err.column) == where(text, needle)
    assert err.path == str(path)
    for word in words:
        assert word in str(err)


def test_missing_expr(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("strict: true\n")
    with pytest.raises(ConfigError, match="missing key 'expr'"):
        lossdsl.from_config(path)


@pytest.mark.parametrize(
    "suffix, text, needle",
    [
        ("yaml", "expr: mse\nmonitor: [1, 2\n", None),
        ("json", '{"expr": "mse",\n "strict": true,\n}\n', "}"),
        ("toml", 'expr = "mse"\nstrict = tru\n', "tru"),
    ],
)
def test_file_syntax_errors_name_the_file_and_line(tmp_path, suffix, text, needle):
    path = tmp_path / f"cfg.{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        lossdsl.from_config(path)
    assert str(path) in str(info.value) and "not valid" in str(info.value)
    if needle is not None:
        assert info.value.line == where(text, needle)[0]
    else:
        assert info.value.line is not None


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        lossdsl.from_config(tmp_path / "missing.yaml")
    (tmp_path / "loss.ini").write_text("expr = mse\n")
    with pytest.raises(ConfigError, match="unknown config format"):
        lossdsl.from_config(tmp_path / "loss.ini")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="empty"):
        lossdsl.from_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match="a mapping or a file path, got int"):
        lossdsl.from_config(42)
    with pytest.raises(ConfigError, match="monitor.log_every"):  # not a bool taken for 1
        lossdsl.from_config({"expr": "mse", "monitor": {"log_every": True}})


def test_errors_pickle():
    import pickle

    try:
        load_config({"expr": "mse", "strict": "maybe"})
    except ConfigError as err:
        again = pickle.loads(pickle.dumps(err))
        assert str(again) == str(err) and again.key == "strict"
    else:
        raise AssertionError("no error")


# --- JSON Schema ---------------------------------------------------------------------------


def test_json_schema_describes_the_config(tmp_path, monkeypatch):
    # the example's sink is a relative path: written in a folder of the test's own, so a log
    # that `make demo` left in runs/demo/ neither blocks the test nor gets written to
    monkeypatch.chdir(tmp_path)
    schema = LossConfig.model_json_schema()
    assert set(schema["properties"]) == {"expr", "monitor", "nonfinite", "strict"}
    assert schema["required"] == ["expr"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["nonfinite"]["enum"] == ["raise", "warn", "zero_term", "skip_batch"]
    monitor = schema["$defs"]["MonitorSettings"]
    assert {"ema", "probe_every", "log_every", "sink"} <= set(monitor["properties"])
    assert monitor["additionalProperties"] is False
    # the example in the schema is itself a valid config
    for example in schema["examples"]:
        assert math.isfinite(float(lossdsl.from_config(example)(torch.zeros(2, 3), torch.ones(2, 3))))


def test_monitor_can_be_switched_off():
    crit = lossdsl.from_config({"expr": "mse", "monitor": {"enabled": False}})
    crit(torch.zeros(2), torch.ones(2))
    assert crit.monitor.stats()["mse"]["count"] == 0
    on = lossdsl.from_config({"expr": "mse"})
    on(torch.zeros(2), torch.ones(2))
    assert on.monitor.stats()["mse"]["count"] == 1
