"""What lossdsl says back about a program, attacked: the suggested program (its weights against
``d total / d term`` of the rewritten text, taken with autograd), the effective weights of
shared bindings, and explain's words. Each test states the correct behaviour; the three the
library does not meet yet (a term in several nonlinear parts, a limit the README states) are
marked xfail (strict) with the reason."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.tools.explain import weight_descriptions
from lossdsl.tools.suggest import suggest_from_log

F64 = torch.float64


def leaf(x):
    """A term whose value is its input: autograd on the inputs gives d total / d term."""
    return x


def tagged(pred, target, *, tag: str = "x"):
    """Mean squared error with a free-text hyperparameter (strings reach the program's text)."""
    return ((pred - target) ** 2).mean()


LEAF = {"leaf": leaf}


def scalars(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=F64) for k, v in values.items()}


def rewritten_weights(source: str, inputs: dict[str, torch.Tensor], terms=LEAF) -> list[float]:
    """d total / d input of ``source`` compiled, by autograd (each input is one leaf term)."""
    xs = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    total = lossdsl.compile(source, terms=terms)(**xs)
    return [float(g) for g in torch.autograd.grad(total, list(xs.values()))]


def test_a_plain_sum_gets_the_suggested_weights():
    # the premise of the tests below: where every term stands alone, the suggestion holds
    x = scalars(a=2.0, b=0.5)
    crit = lossdsl.compile("# two leaves  é\r\n0.5*leaf(x=a) +\r\n\tleaf(x=b)/4\r\n", terms=LEAF)
    crit(**x)
    s = crit.monitor.suggest_weights(target={"leaf": 0.8})
    # equal magnitude kept, shares 0.8 / 0.2 of it: w_i = share_i * M / x_i
    magnitude = 0.5 * 2.0 + 0.5 / 4
    want = [0.8 * magnitude / 2.0, 0.2 * magnitude / 0.5]
    assert [s.weights["leaf"], s.weights["leaf_2"]] == pytest.approx(want, rel=1e-12)
    assert rewritten_weights(s.source, x) == pytest.approx(want, rel=1e-3)
    # comments, unicode, CRLF line ends and tabs stay; the factors are edited where written
    assert re.fullmatch(r"# two leaves  é\r\n[0-9.]+\*leaf\(x=a\) \+\r\n\tleaf\(x=b\)/[0-9.]+\r\n", s.source), s.source


@pytest.mark.xfail(strict=True, reason="a one-term binding used in two units (log(r) and r*leaf) gets a "
                   "different factor in each; Suggestion.weights reports the first unit's factor only "
                   "(lossdsl/resolve/rewrite.py:_Editor._unit, applied.setdefault)")
def test_a_binding_in_two_units_gets_the_weight_the_suggestion_reports():
    x = scalars(a=2.0, b=0.5)
    source = "r = leaf(x=a)\nlog(r) + r*leaf(x=b)"
    crit = lossdsl.compile(source, terms=LEAF)
    crit(**x)
    s = crit.monitor.suggest_weights(target={"r": 0.8})
    got = rewritten_weights(s.source, x)
    assert got == pytest.approx([s.weights["r"], s.weights["leaf"]], rel=1e-3), s.source


@pytest.mark.xfail(strict=True, reason="the terms of a composite binding are edited inside its definition, "
                   "which also changes a product that uses the binding (r*leaf): the other factor's weight "
                   "moves while the suggestion says it stays (lossdsl/resolve/rewrite.py:_Editor._parts)")
def test_a_composite_edited_in_place_keeps_the_weight_of_the_product_using_it():
    x = scalars(a=2.0, b=0.5, c=3.0)
    crit = lossdsl.compile("r = leaf(x=a) + leaf(x=b)\nr + r*leaf(x=c)", terms=LEAF)
    crit(**x)
    s = crit.monitor.suggest_weights(target={"leaf_3": 0.8})
    got = rewritten_weights(s.source, x)
    assert got == pytest.approx([s.weights["leaf"], s.weights["leaf_2"], s.weights["leaf_3"]], rel=1e-3), s.source


def test_single_quoted_strings_do_not_move_a_factor_inside_a_power():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(20, generator=gen, dtype=F64) * 3, torch.randn(20, generator=gen, dtype=F64)
    source = "(tagged(tag='a\"b'))^2 + (mae)^2  # quoted"
    crit = lossdsl.compile(source, terms={"tagged": tagged})
    crit(pred, target)
    s = crit.monitor.suggest_weights()
    m, a = F.mse_loss(pred, target).item(), F.l1_loss(pred, target).item()
    # weighted magnitudes m^2 and a^2 made equal, their sum kept: factor r_i on each unit
    total = m * m + a * a
    r = {"tagged": 0.5 * total / (m * m), "mae": 0.5 * total / (a * a)}
    new = lossdsl.compile(s.source, terms={"tagged": tagged})
    value = new(pred, target).item()
    assert value == pytest.approx(r["tagged"] * m * m + r["mae"] * a * a, rel=2e-3), s.source
    assert new.weights["tagged"].item() == pytest.approx(r["tagged"] * 2 * m, rel=2e-3)
    assert new.weights["mae"].item() == pytest.approx(r["mae"] * 2 * a, rel=2e-3)


def test_a_suggestion_beyond_float_range_is_refused_or_compiles():
    pred, target = torch.full((8,), 1e-100, dtype=F64), torch.zeros(8, dtype=F64)
    crit = lossdsl.compile("1e300*mse + 1e300*mae")
    crit(pred, target)
    try:
        s = crit.monitor.suggest_weights()
    except lossdsl.LossDSLError:
        return  # refusing a weight that no float holds is fine
    new = lossdsl.compile(s.source)  # else the source must be a program
    new(pred, target)
    for name, w in s.weights.items():
        assert math.isfinite(w)
        assert new.weights[name].item() == pytest.approx(w, rel=1e-3)


@pytest.mark.parametrize("fn", ["max", "min"])
def test_max_of_a_binding_with_itself_has_weight_one(fn):
    x = scalars(a=0.7)
    crit = lossdsl.compile(f"r = leaf(x=a)\n3*{fn}(r, r)", terms=LEAF)
    xs = {k: v.clone().requires_grad_() for k, v in x.items()}
    total = crit(**xs)
    # 3*max(r, r) = 3*r: d total / d r = 3
    assert float(torch.autograd.grad(total, xs["a"])[0]) == pytest.approx(3.0)
    assert crit.weights["r"].item() == pytest.approx(3.0)


def test_explain_does_not_multiply_the_words_depends_on_the_values():
    crit = lossdsl.compile("b = mse; c = 7*(b + b); sqrt(c)")
    words = weight_descriptions(crit)
    assert words["c"] == "depends on the term values"
    # either the plain words, or the factors over the composite's weight: 14 * w(c)
    assert words["b"] in ("depends on the term values", "14 * w(c)"), words["b"]


def test_explain_numbers_equal_the_weights_for_shared_bindings_and_divisions():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(10, generator=gen, dtype=F64), torch.randn(10, generator=gen, dtype=F64)
    crit = lossdsl.compile("a = mse\nb = 7*(a + a)/4\n-b/3 + a*0.5 - mse + watch(b)")
    crit(pred, target)
    words = weight_descriptions(crit)
    # d total / d a = -7*2/4/3 + 0.5; d total / d mse = -1; b is a composite of weight -1/3
    want = {"a": -14 / 12 + 0.5, "mse": -1.0, "b": -1 / 3}
    for name, w in want.items():
        assert crit.weights[name].item() == pytest.approx(w, rel=1e-12)
        assert float(words[name].split(" ")[0]) == pytest.approx(w, rel=1e-5)


@pytest.mark.xfail(strict=True, reason="an inline term reading a loss binding (mean(pred*a)) is scaled as a unit "
                   "holding both terms, so it keeps factor ~1 while 'a' gets its own factor where used alone, and "
                   "Suggestion.weights reports the unit's factor for 'a' (lossdsl/resolve/rewrite.py:"
                   "_Editor._terms_in descends into a term's operands; _Editor._unit keeps the first factor)")
def test_an_inline_term_reading_a_binding_gets_its_own_share():
    pred = torch.tensor([0.5, -2.0, 1.0, 0.25], dtype=F64)
    x = scalars(a=0.8)
    crit = lossdsl.compile("a = leaf(x=a)\nmean(pred*a) + a", terms=LEAF)
    crit(pred, **x)
    s = crit.monitor.suggest_weights()
    # the terms over the scalar top: a (weight 1) and the inline term mean = mean(pred)*a (weight 1)
    m = pred.mean().item() * 0.8
    magnitude = abs(m) + 0.8
    want = {"mean": 0.5 * magnitude / abs(m), "a": 0.5 * magnitude / 0.8}
    assert s.weights == pytest.approx(want, rel=1e-9)
    new = lossdsl.compile(s.source, terms=LEAF)
    value = new(pred, **x).item()
    assert {n: new.weights[n].item() for n in want} == pytest.approx(want, rel=1e-3), s.source
    assert value == pytest.approx(want["mean"] * m + want["a"] * 0.8, rel=1e-3)


def _suggest_for(source: str, target: dict) -> tuple[lossdsl.Loss, object]:
    crit = lossdsl.compile(source, terms=LEAF)
    crit(**scalars(a=2.0, b=0.5))
    return crit, crit.monitor.suggest_weights(target=target)


@pytest.mark.parametrize("source", ["-(2)*leaf(x=a) + leaf(x=b)", "leaf(x=a)*(-(2)) + leaf(x=b)",
                                    "leaf(x=a)/(-((0.5))) + leaf(x=b)"])
def test_a_negated_number_in_brackets_is_scaled_in_place(source):
    _, s = _suggest_for(source, {"leaf": 0.5})
    # both get half of M = |-4| + 0.5 = 4.5: the first term keeps its sign
    want = [-0.5 * 4.5 / 2.0, 0.5 * 4.5 / 0.5]
    assert rewritten_weights(s.source, scalars(a=2.0, b=0.5)) == pytest.approx(want, rel=1e-3), s.source


def test_a_comment_after_a_unary_minus_stays():
    source = "leaf(x=b) + -  # subtracted: the a part\n  2*leaf(x=a)\n"
    _, s = _suggest_for(source, {"leaf": 0.5})
    assert "# subtracted: the a part\n" in s.source, s.source
    want = [-0.5 * 4.5 / 2.0, 0.5 * 4.5 / 0.5]
    assert rewritten_weights(s.source, scalars(a=2.0, b=0.5)) == pytest.approx(want, rel=1e-3)


def _trained(source: str = "mse + mae") -> lossdsl.Loss:
    crit = lossdsl.compile(source)
    crit(torch.linspace(-3, 3, 20, dtype=F64), torch.zeros(20, dtype=F64))
    return crit


def test_a_share_too_large_for_a_float_is_a_lossdsl_error():
    with pytest.raises(lossdsl.LossDSLError):
        _trained().monitor.suggest_weights(target={"mse": 10**400, "mae": 1})


def test_equal_huge_ratios_are_equal_shares():
    crit = _trained()
    s = crit.monitor.suggest_weights(target={"mse": 1e308, "mae": 1e308})
    e = torch.linspace(-3, 3, 20, dtype=F64)
    mse, mae = (e * e).mean().item(), e.abs().mean().item()
    total = mse + mae  # kept, split in halves
    assert s.weights == pytest.approx({"mse": 0.5 * total / mse, "mae": 0.5 * total / mae}, rel=1e-9)


@pytest.mark.parametrize("source, want", [
    # 0^b is 0 for every b > 0: d/db = 0; d/da of a^2 at 0 is 0
    ("r = leaf(x=a)\nr^leaf(x=b)", {"r": 0.0, "leaf": 0.0}),
    # a^0 is 1 for every a: d/da = 0
    ("r = leaf(x=a)\nr^0 + leaf(x=b)", {"r": 0.0, "leaf": 1.0}),
])
def test_a_power_of_a_zero_term_has_finite_weights(source, want):
    xs = {"a": torch.tensor(0.0, dtype=F64, requires_grad=True), "b": torch.tensor(2.0, dtype=F64, requires_grad=True)}
    crit = lossdsl.compile(source, terms=LEAF)
    total = crit(**xs)
    grads = torch.autograd.grad(total, [xs["a"], xs["b"]])
    assert [float(g) for g in grads] == pytest.approx([want["r"], want["leaf"]])  # the reference agrees
    assert {n: crit.weights[n].item() for n in want} == pytest.approx(want)


def test_balance_with_a_new_term_prints_weights_of_the_program_it_prints(tmp_path):
    path = tmp_path / "run.jsonl"
    crit = lossdsl.compile("0.5*mse + mae/4")
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=1)
    pred, target = torch.linspace(-3, 3, 20, dtype=F64), torch.zeros(20, dtype=F64)
    crit(pred, target)
    crit.monitor.close()
    s = suggest_from_log(path, "r = 0.5*mse + mae/4 + huber\nr/2", target={"mse": 0.5})
    assert s.kept == ("huber",)
    mse, mae = F.mse_loss(pred, target).item(), F.l1_loss(pred, target).item()
    # the logged terms get equal halves of their logged magnitude 0.5*mse + mae/4
    magnitude = 0.5 * mse + mae / 4
    assert s.weights["mse"] == pytest.approx(0.5 * magnitude / mse, rel=1e-6)
    assert s.weights["mae"] == pytest.approx(0.5 * magnitude / mae, rel=1e-6)
    assert s.weights["huber"] == pytest.approx(0.5)  # kept: 1/2 as written
    new = lossdsl.compile(s.source)
    new(pred, target)
    assert {n: new.weights[n].item() for n in s.weights} == pytest.approx(s.weights, rel=1e-3), s.source
