"""Every example and the demo run at a small size and train: finite, decreasing loss."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

import lossdsl
from lossdsl.cli import demo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"lossdsl_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_trains(history: list[float], k: int = 10) -> None:
    assert all(math.isfinite(v) for v in history)
    first, last = sum(history[:k]) / k, sum(history[-k:]) / k
    assert last < first, (first, last)


def test_demo_trains_and_writes_its_files(tmp_path):
    history = demo.run_demo(steps=40, out_dir=tmp_path / "demo", quiet=True)
    assert len(history) == 40
    assert_trains(history)
    records = [json.loads(line) for line in (tmp_path / "demo" / "terms.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    for record in records:
        # the program is 0.7*huber + 0.3*temporal_diff + watch(mse): total = weighted sum
        expected = 0.7 * record["loss/huber"] + 0.3 * record["loss/temporal_diff"]
        assert record["loss/total"] == pytest.approx(expected, rel=1e-5)
        assert record["loss/mse/weight"] == 0.0
    assert (tmp_path / "demo" / "terms.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_config_is_found_or_embedded(tmp_path, monkeypatch):
    # the examples file and the embedded copy are the same config
    example = EXAMPLES / "configs" / "forecast.yaml"
    assert yaml.safe_load(example.read_text()) == yaml.safe_load(demo.DEFAULT_CONFIG)
    monkeypatch.chdir(tmp_path)
    assert demo.find_config() in (None, example)  # the source checkout's file, if any
    monkeypatch.setattr(demo, "__file__", str(tmp_path / "site-packages" / "lossdsl" / "cli" / "demo.py"))
    assert demo.find_config() is None  # installed without the examples: the embedded copy
    history = demo.run_demo(steps=3, out_dir=None, quiet=True)
    assert len(history) == 3 and all(math.isfinite(v) for v in history)


def test_forecast_example(tmp_path):
    history = load_example("forecast").main(steps=60, log_dir=str(tmp_path))
    assert_trains(history)
    assert (tmp_path / "terms.jsonl").exists()


def test_vae_example_with_kl_annealing():
    history = load_example("vae_kl_annealing").main(steps=80)
    assert_trains(history)


def test_imbalanced_classification_example():
    histories = load_example("imbalanced_classification").main(steps=60)
    assert set(histories) == {"focal", "cross_entropy"}
    for history in histories.values():
        assert_trains(history)


def test_ranking_example():
    assert_trains(load_example("ranking").main(steps=60))


def test_detection_boxes_example(capsys):
    history = load_example("detection_boxes").main(steps=60)
    assert_trains(history)
    assert "giou" in capsys.readouterr().out
    assert_trains(load_example("detection_boxes").main(steps=40, loss="ciou + 0.5*l1"))


def test_contrastive_pairs_example():
    assert_trains(load_example("contrastive_pairs").main(steps=60))


def test_image_restoration_example():
    assert_trains(load_example("image_restoration").main(steps=60))


def test_multitask_gradients_example():
    pytest.importorskip("torchjd")
    pytest.importorskip("lightning")
    histories = load_example("multitask_gradients").main(steps=60)
    assert set(histories) == {"upgrad", "lra"}
    for history in histories.values():
        assert len(history) == 60
        assert_trains(history)


def test_custom_term_example():
    try:
        module = load_example("custom_term")
        assert "spectral" in lossdsl.registry
        assert_trains(module.main(steps=60))
        with pytest.raises(lossdsl.LossArgumentError):
            lossdsl.compile('spectral(dim="time")')
    finally:
        # the example registers a term globally; other tests in this process must not see it
        if "spectral" in lossdsl.registry:
            lossdsl.registry.unregister("spectral")


def test_demo_progress_without_tqdm(monkeypatch, capsys):
    # tqdm is optional: without it the demo prints a plain line of progress
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    history = demo.run_demo(steps=10, out_dir=None, print_every=10)
    out = capsys.readouterr().out
    assert len(history) == 10
    assert "step 5/10  loss" in out and "step 10/10  loss" in out
    assert "per-term statistics at step 10" in out and "suggested program:" in out


def test_custom_losses_example_trains_both_programs_from_its_config():
    module = load_example("custom_losses")
    histories = module.main(steps=60, quiet=True)
    assert set(histories) == {"bounded", "sequence"}
    for history in histories.values():
        assert len(history) == 60
        assert_trains(history)
    # the config's programs are the README's examples, compiled from the file
    config = yaml.safe_load(module.CONFIG.read_text())
    assert "relu(1 - abs(pred - target))" in config["bounded"]["expr"]
    assert "var(step_ce, correction=0)" in config["sequence"]["expr"]
