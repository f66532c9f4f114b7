"""Registering terms: the decorator, per-compile terms and entry points (DESIGN.md §4)."""

import importlib
import sys
import textwrap
import warnings
from typing import Annotated

import pytest
import torch
from annotated_types import Ge, Gt, Lt

import lossdsl
from lossdsl import LossArgumentError, LossDSLError, LossNameError

registry = lossdsl.registry


@pytest.fixture
def cleanup():
    """Names registered by a test, removed afterwards so tests stay independent."""
    names: list[str] = []
    yield names
    for name in names:
        if name in registry:
            registry.unregister(name)


def test_bare_decorator_registers_under_the_function_name(cleanup):
    cleanup.append("test_scaled_l1")

    @lossdsl.term
    def test_scaled_l1(pred, target, weight=None, *, scale: Annotated[float, Gt(0)] = 1.0):
        """Absolute error times a scale.

        Longer text that is not the summary.
        """
        return scale * (pred - target).abs().mean()

    assert callable(test_scaled_l1)  # the function comes back unchanged
    spec = registry["test_scaled_l1"]
    assert spec.summary == "Absolute error times a scale."
    assert spec.input_names == ("pred", "target", "weight")
    assert [p.required for p in spec.inputs] == [True, True, False]
    assert spec.hyper_names == ("scale",)
    crit = lossdsl.compile("test_scaled_l1(scale=3)")
    total = crit(torch.zeros(4), torch.full((4,), 0.5))
    assert float(total) == pytest.approx(3 * 0.5)


def test_decorator_with_a_name(cleanup):
    cleanup.append("test_renamed")

    @lossdsl.term(name="test_renamed")
    def some_function(pred):
        """Mean of the prediction."""
        return pred.mean()

    assert "test_renamed" in registry and "some_function" not in registry
    assert float(lossdsl.compile("test_renamed")(torch.tensor([1.0, 3.0]))) == 2.0


def test_annotated_constraints_are_validated(cleanup):
    cleanup.append("test_bounded")

    @lossdsl.term(name="test_bounded")
    def bounded(pred, *, q: Annotated[float, Gt(0), Lt(1)] = 0.5, k: Annotated[int, Ge(1)] = 1):
        """Quantile-like term."""
        return pred.mean() * q * k

    assert float(lossdsl.compile("test_bounded(q=0.25, k=2)")(torch.ones(3))) == 0.5
    for bad, key in (("q=1", "q"), ("q=0", "q"), ("k=0", "k"), ("k=1.5", "k"), ('q="a"', "q")):
        with pytest.raises(LossArgumentError) as caught:
            lossdsl.compile(f"test_bounded({bad})")
        assert caught.value.message == f"test_bounded: {bad} is not allowed"
        assert caught.value.column == len("test_bounded(") + 1
        assert caught.value.hint.startswith(f"{key} must be")


def test_required_hyperparameter(cleanup):
    cleanup.append("test_needs_k")

    @lossdsl.term(name="test_needs_k")
    def needs_k(pred, *, k: float):
        """Needs k."""
        return pred.mean() * k

    with pytest.raises(LossArgumentError, match="test_needs_k needs 'k'"):
        lossdsl.compile("test_needs_k")
    assert float(lossdsl.compile("test_needs_k(k=2)")(torch.ones(2))) == 2.0


def test_names_already_taken_are_refused_unless_replace(cleanup):
    cleanup.append("test_taken")

    @lossdsl.term(name="test_taken")
    def first(pred):
        """First."""
        return pred.sum()

    assert float(lossdsl.compile("test_taken")(torch.ones(3))) == 3.0

    def second(pred):
        """Second."""
        return pred.sum() * 10

    with pytest.raises(ValueError, match="already registered"):
        lossdsl.term(second, name="test_taken")
    with pytest.raises(ValueError, match="built-in function"):
        lossdsl.term(second, name="clamp")
    with pytest.raises(ValueError, match="already registered"):
        lossdsl.term(second, name="mse")
    lossdsl.term(second, name="test_taken", replace=True)
    # the compile cache follows the registry: the same text now uses the new function
    assert float(lossdsl.compile("test_taken")(torch.ones(3))) == 30.0


def test_a_term_needs_named_parameters():
    def star(*tensors):
        return tensors[0].mean()

    with pytest.raises(TypeError, match="cannot take"):
        lossdsl.term(star, name="test_star")
    assert "test_star" not in registry


def test_terms_for_one_compile_only():
    def double_mae(pred, target, *, factor: Annotated[float, Gt(0)] = 2.0):
        """Twice the MAE."""
        return factor * (pred - target).abs().mean()

    crit = lossdsl.compile("double_mae + mse", terms={"double_mae": double_mae})
    pred, target = torch.zeros(2), torch.ones(2)
    assert float(crit(pred, target)) == 3.0
    assert "double_mae" not in registry
    with pytest.raises(LossNameError, match="unknown loss term 'double_mae'"):
        lossdsl.compile("double_mae + mse")
    with pytest.raises(LossArgumentError, match="double_mae: factor=-1 is not allowed"):
        lossdsl.compile("double_mae(factor=-1)", terms={"double_mae": double_mae})
    # a per-compile term takes precedence over a registered one of the same name
    shadow = lossdsl.compile("mse", terms={"mse": lambda pred, target: (pred - target).abs().sum()})
    assert float(shadow(torch.zeros(2), torch.ones(2))) == 2.0
    assert float(lossdsl.compile("mse")(torch.zeros(2), torch.ones(2))) == 1.0
    with pytest.raises(LossDSLError, match="built-in function"):
        lossdsl.compile("log(mse)", terms={"log": double_mae})


def test_registry_listing():
    names = registry.names()
    assert names == sorted(names)
    assert {"mse", "mae", "l1", "huber", "temporal_diff"} <= set(names)
    summaries = registry.summaries()
    assert summaries["mse"] == registry["mse"].summary and summaries["mse"]
    assert len(registry) == len(names)


# --- the lossdsl.terms entry-point group, through a real installed distribution -------------


@pytest.fixture
def plugin_dir(tmp_path):
    """A distribution `lossdsl-test-plugin` on sys.path: dist-info metadata and a module."""
    module = "lossdsl_test_plugin_mod"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            '''
            def max_abs(pred, target, *, scale: float = 1.0):
                """Largest absolute error, scaled."""
                return scale * (pred - target).abs().max()
            '''
        )
    )
    info = tmp_path / "lossdsl_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lossdsl-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[lossdsl.terms]\n"
        f"test_plugin_max_abs = {module}:max_abs\n"
        f"test_plugin_broken = {module}:does_not_exist\n"
    )
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
        for name in ("test_plugin_max_abs", "test_plugin_broken"):
            if name in registry:
                registry.unregister(name)
        importlib.invalidate_caches()


def test_entry_point_plugin_is_loaded(plugin_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.reload_entry_points()
    # a broken entry point warns and is skipped; the good one loads
    assert any("test_plugin_broken" in str(w.message) for w in caught)
    assert "test_plugin_broken" not in registry
    spec = registry["test_plugin_max_abs"]
    assert spec.summary == "Largest absolute error, scaled."
    crit = lossdsl.compile("0.5*mse + test_plugin_max_abs(scale=2)")
    pred, target = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, -3.0, 0.5])
    expected = 0.5 * (1.0 + 9.0 + 0.25) / 3 + 2 * 3.0
    assert float(crit(pred, target)) == pytest.approx(expected)
    assert crit.term_names == ["mse", "test_plugin_max_abs"]


def test_a_relation_between_hyperparameters_is_refused_when_compiling():
    def band(pred, target, *, low: float = 0.0, high: float = 1.0):
        """Mean of pred clipped to [low, high]."""
        return pred.clamp(low, high).mean()

    def ordered(values):
        if values["low"] > values["high"]:
            raise ValueError("low must not exceed high")

    band.check_hyperparameters = ordered
    with pytest.raises(lossdsl.LossArgumentError, match="band") as info:
        lossdsl.compile("mse + band(low=2, high=1)", terms={"band": band})
    assert "low must not exceed high" in info.value.hint and "^" in str(info.value)
    crit = lossdsl.compile("band(low=0.5, high=1)", terms={"band": band})
    assert float(crit(torch.tensor([0.0, 2.0]), torch.zeros(2))) == 0.75  # (0.5 + 1) / 2
