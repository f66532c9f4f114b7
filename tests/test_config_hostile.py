"""Hostile and heavy config files: alias bombs, huge or special files, bad encodings, deep
nesting, giant numbers, duplicate keys. Every one ends in a ConfigError (a LossDSLError),
quickly, and never in another exception."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import lossdsl
from lossdsl.config import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, ConfigError

BUDGET_S = 10.0  # generous: the faults these guard against take minutes or never end


def alias_bomb(levels: int = 24, fanout: int = 4) -> str:
    """YAML whose last anchor expands to fanout**levels mappings: ~1 KB of text."""
    lines = ["a0: &a0 {x: 1}"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(fanout)) + "}")
    return "\n".join(lines) + "\n"


def where(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the n-th occurrence of ``needle``, counted by hand."""
    seen = 0
    for number, line in enumerate(text.split("\n"), start=1):
        start = 0
        while (col := line.find(needle, start)) != -1:
            seen += 1
            if seen == occurrence:
                return number, col + 1
            start = col + 1
    raise AssertionError(f"{needle!r} not in the text")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < BUDGET_S, f"took {elapsed:.1f} s"
    return result


# --- alias bombs ---------------------------------------------------------------------------


def test_an_alias_bomb_file_loads_without_expanding(tmp_path):
    text = alias_bomb()
    assert len(text) < 1500
    path = tmp_path / "train.yaml"
    path.write_text(text + "loss:\n  expr: 0.5*mse\n")
    assert timed(lossdsl.from_config, path).source == "0.5*mse"


def test_an_error_next_to_an_alias_bomb_is_located_quickly(tmp_path):
    text = alias_bomb() + "expr: mse\nmonitor: *a24\n"
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        timed(lossdsl.from_config, path)
    # the unknown key is reported where the aliased mapping is written
    assert "unknown key 'monitor.k0'" in str(info.value)
    assert (info.value.line, info.value.column) == where(text, "k0", occurrence=24)


def test_a_mapping_with_shared_sub_mappings_is_read_without_expanding():
    data = yaml.safe_load(alias_bomb() + "loss:\n  expr: mse\n  monitor: {ema: 0.5}\n")
    data["loss"]["unused"] = data["a24"]  # the shared structure inside the loss config itself
    with pytest.raises(ConfigError, match="unknown key 'loss.unused'"):
        timed(lossdsl.from_config, data)
    del data["loss"]["unused"]
    assert timed(lossdsl.from_config, data).monitor.ema == 0.5
    # a mapping that contains itself is no problem either
    cyclic = {"expr": "mse", "monitor": {"ema": 0.5}}
    cyclic["monitor"]["self"] = cyclic
    with pytest.raises(ConfigError, match="monitor.self"):
        timed(lossdsl.from_config, cyclic)


def test_positions_follow_aliases_and_merge_keys(tmp_path):
    text = (
        "base: &base\n"
        "  expr: 0.7*mse + 0.3*hubr\n"
        "runs:\n"
        "  a:\n"
        "    <<: *base\n"
        "    strict: false\n"
        "  b: *base\n"
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    for key in ("runs.a", "runs.b"):
        with pytest.raises(lossdsl.LossNameError) as info:
            lossdsl.from_config(path, key=key)
        assert (info.value.line, info.value.column) == where(text, "hubr")
    # a merged key may be overridden: that is not a duplicate
    path.write_text(text.replace("    strict: false\n", "    strict: false\n    expr: mse\n"))
    assert lossdsl.from_config(path, key="runs.a").source == "mse"


# --- files that are not config files ----------------------------------------------------------


def test_the_size_of_a_config_file_is_capped(tmp_path):
    assert MAX_CONFIG_BYTES == 1 << 20  # the README states it
    path = tmp_path / "big.yaml"
    path.write_text("expr: mse\n#" + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        lossdsl.from_config(path)
    path.write_text("expr: mse\n#" + "x" * (MAX_CONFIG_BYTES - 100) + "\n")
    assert lossdsl.from_config(path).source == "mse"


def test_directories_devices_and_pipes_are_refused(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        lossdsl.from_config(tmp_path / "dir.yaml")
    if os.path.exists("/dev/zero"):
        (tmp_path / "zero.yaml").symlink_to("/dev/zero")
        with pytest.raises(ConfigError, match="not a regular file"):
            lossdsl.from_config(tmp_path / "zero.yaml")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "loss.yaml"
    os.mkfifo(fifo)
    outcome: list = []

    def load():
        try:
            lossdsl.from_config(fifo)
        except Exception as err:  # noqa: BLE001 - the type is checked below
            outcome.append(err)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(BUDGET_S)
    assert not worker.is_alive(), "reading a named pipe blocked"
    assert isinstance(outcome[0], ConfigError) and "not a regular file" in str(outcome[0])


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"strict: true\nexpr: 'mse + \xe9'\n")
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        lossdsl.from_config(path)
    # the byte 0xe9: 13 characters stand before it on its line
    assert (info.value.line, info.value.column) == (2, 14)
    assert "0xe9" in str(info.value)


def test_control_characters_of_a_file_are_not_echoed(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("expr: mse\x1b[2J\n")
    with pytest.raises(ConfigError) as info:
        lossdsl.from_config(path)
    assert "\x1b" not in str(info.value)
    assert (info.value.line, info.value.column) == (1, 10)


# --- deep nesting, giant numbers -------------------------------------------------------------


@pytest.mark.parametrize("suffix, text", [
    ("json", "[" * 100_000 + "]" * 100_000),
    ("yaml", "[" * 100_000 + "]" * 100_000),
    ("yaml", "".join(f"{' ' * i}k:\n" for i in range(3000))),
    ("toml", "a = " + "[" * 100_000 + "]" * 100_000),
])
def test_deeply_nested_files(tmp_path, suffix, text):
    path = tmp_path / f"deep.{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError):
        timed(lossdsl.from_config, path)


def test_a_deeply_nested_mapping():
    deep: dict = {}
    node = deep
    for _ in range(100_000):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(ConfigError, match=f"more than {MAX_CONFIG_DEPTH} levels"):
        timed(lossdsl.from_config, {"expr": "mse", "monitor": deep})
    # the rest of a training config is not walked: only the loss config is read
    assert lossdsl.from_config({"loss": {"expr": "mse"}, "data": deep}).source == "mse"


@pytest.mark.parametrize("suffix, text", [
    ("json", '{"expr": "mse", "strict": ' + "7" * 5000 + "}"),
    ("yaml", "expr: mse\nstrict: " + "7" * 5000 + "\n"),
    ("toml", 'expr = "mse"\nstrict = ' + "7" * 5000 + "\n"),
])
def test_integers_beyond_pythons_digit_limit(tmp_path, suffix, text):
    path = tmp_path / f"cfg.{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match="4300 digits") as info:
        lossdsl.from_config(path)
    assert info.value.line == where(text, "7777")[0]


# --- duplicate keys --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, text, second", [
    ("yaml", "expr: mse\nstrict: false\nexpr: mae\n", ("expr", 2)),
    ("yaml", "expr: mse\nmonitor:\n  ema: 0.5\n  log_every: 3\n  ema: 0.9\n", ("ema", 2)),
    ("yaml", "{expr: mse, 'expr': mae}", ("'expr'", 1)),
    ("json", '{"expr": "mse",\n "monitor": {"sink": "a.jsonl"},\n "expr": "mae"}', ('"expr"', 2)),
    ("json", '{"expr": "mse", "monitor": {"ema": 0.5, "ema": 0.9}}', ('"ema"', 2)),
])
def test_a_key_written_twice_is_an_error(tmp_path, suffix, text, second):
    path = tmp_path / f"cfg.{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match="appears twice") as info:
        lossdsl.from_config(path)
    assert (info.value.line, info.value.column) == where(text, *second)


def test_the_same_key_in_different_mappings_is_fine(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train": {"expr": "mae"}, "loss": {"expr": "mse"}}))
    assert lossdsl.from_config(path).source == "mse"
    path = tmp_path / "cfg.yaml"
    path.write_text("runs: [{expr: mse}, {expr: mae}]\nloss: {expr: mse}\n")
    assert lossdsl.from_config(path).source == "mse"


def test_toml_duplicates_stay_errors(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('expr = "mse"\nexpr = "mae"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        lossdsl.from_config(path)


# --- anything at all -------------------------------------------------------------------------


def _outcome(path) -> str:
    try:
        lossdsl.from_config(path)
    except lossdsl.LossDSLError:
        return "error"
    return "loss"


@given(st.sampled_from(["yaml", "json", "toml"]), st.text(max_size=200))
def test_any_text_gives_a_loss_or_a_lossdsl_error(tmp_path_factory, suffix, text):
    path = tmp_path_factory.mktemp("fuzz") / f"cfg.{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert _outcome(path) in ("loss", "error")


@given(st.sampled_from(["yaml", "json", "toml"]), st.binary(max_size=200))
def test_any_bytes_give_a_loss_or_a_lossdsl_error(tmp_path_factory, suffix, data):
    path = tmp_path_factory.mktemp("fuzz") / f"cfg.{suffix}"
    path.write_bytes(data)
    assert _outcome(path) in ("loss", "error")


@pytest.mark.parametrize("text", [
    "{1: 2}", "expr: mse\n1: 2", "expr: mse\nnull: 2", "expr: mse\n? !!set {a, b}\n: 1",
    "expr: &a [*a]", "loss: &a {loss: *a}", "expr: 2020-13-45", "expr: !!binary aGVsbG8=",
    "expr: mse\nmonitor: {sink: [1]}", "[1, 2]", "5",
])
def test_odd_yaml_values(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    for key in (None, "loss", "a.b"):
        try:
            lossdsl.from_config(path, key=key)
        except lossdsl.LossDSLError:
            pass
