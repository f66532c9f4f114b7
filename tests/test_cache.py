"""Caching of the forms of a loss: AST and IR by text, the Program by canonical text (DESIGN.md §2)."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import registry


def test_parse_returns_the_cached_program():
    text = "0.7*huber(delta=1) + 0.3*temporal_diff  # cache test 1"
    assert lossdsl.parse(text) is lossdsl.parse(text)
    assert lossdsl.parse(text) is not lossdsl.parse(text + " ")


def test_resolve_is_cached_by_source_text():
    text = "0.5*mse + 0.5*mae  # cache test 2"
    assert lossdsl.check(text) is lossdsl.check(text)


def test_compiling_twice_shares_the_program_but_not_the_state():
    text = "0.7*huber(delta=1) + 0.3*temporal_diff  # cache test 3"
    a, b = lossdsl.compile(text), lossdsl.compile(text)
    assert a is not b
    assert a.program is b.program
    a.set_step(7)
    assert int(b.step) == 0
    pred, target = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    a(pred, target)
    assert b.terms == {}  # b has not been called
    want = 0.7 * F.huber_loss(pred, target) + 0.3 * torch.diff(pred - target, dim=1).abs().mean()
    torch.testing.assert_close(b(pred, target), want)
    assert a.monitor is not b.monitor


def test_the_same_program_written_differently_shares_one_program():
    a = lossdsl.compile("0.5*mse+0.5*mae  # cache test 3b")
    b = lossdsl.compile("0.5 * mse +\n  0.5 * mae")
    assert a.program is b.program
    assert a.source != b.source and a.canonical == b.canonical


def test_programs_are_not_shared_across_nonfinite_policies():
    text = "mse + spiky_cache_term  # cache test 4"

    def spiky_cache_term(pred, target):
        """NaN where pred < target."""
        return torch.sqrt(pred - target).mean()

    registry.register(spiky_cache_term, replace=True)
    try:
        pred, target = torch.zeros(3, requires_grad=True), torch.ones(3)
        raising = lossdsl.compile(text)
        zeroing = lossdsl.compile(text, nonfinite="zero_term")
        assert raising.program is not zeroing.program
        # zero_term: the NaN term adds 0, so the total is the mse alone
        assert zeroing(pred, target).item() == 1.0
    finally:
        registry.unregister("spiky_cache_term")


def test_balancer_state_is_per_module_while_the_program_is_shared():
    text = 'balance(mse, mae, method="ema")  # cache test 5'
    a, b = lossdsl.compile(text), lossdsl.compile(text)
    assert a.program is b.program
    assert a.balancers[0] is not b.balancers[0]
    pred, target = torch.zeros(4), torch.ones(4)
    for _ in range(3):
        a(pred, 3 * target)
    b(pred, target)
    # b's first call: the EMA holds only this call's values, so each weight is 1 / L_i
    # (1 / (L + eps), eps = 1e-8, in float32)
    assert float(b.weights["mse"]) == pytest.approx(1.0 / float(F.mse_loss(pred, target)), rel=1e-5)
    assert float(b.weights["mae"]) == pytest.approx(1.0 / float(F.l1_loss(pred, target)), rel=1e-5)
    assert float(a.weights["mse"]) == pytest.approx(1.0 / float(F.mse_loss(pred, 3 * target)), rel=1e-5)


def test_registry_change_invalidates_the_cache():
    text = "cache_scaled_term  # cache test 6"

    def cache_scaled_term(pred, target):
        """Sum of errors."""
        return (pred - target).sum()

    registry.register(cache_scaled_term, replace=True)
    try:
        first = lossdsl.check(text)
        assert lossdsl.check(text) is first
        before = registry.version

        def doubled(pred, target):
            """Twice the sum of errors."""
            return 2 * (pred - target).sum()

        registry.register(doubled, name="cache_scaled_term", replace=True)
        assert registry.version != before
        second = lossdsl.check(text)
        assert second is not first
        pred, target = torch.ones(3), torch.zeros(3)
        assert float(lossdsl.compile(text)(pred, target)) == 6.0  # the new function runs
    finally:
        registry.unregister("cache_scaled_term")


def test_local_terms_are_not_mixed_up_between_compiles():
    text = "local_cache_term  # cache test 7"
    one = lossdsl.compile(text, terms={"local_cache_term": lambda pred, target: (pred - target).sum()})
    two = lossdsl.compile(text, terms={"local_cache_term": lambda pred, target: (pred * target).sum()})
    pred, target = torch.full((2,), 3.0), torch.full((2,), 2.0)
    assert float(one(pred, target)) == 2.0
    assert float(two(pred, target)) == 12.0


def test_a_shared_program_survives_pickling_of_one_module():
    import pickle

    text = "0.5*mse + 0.5*mae  # cache test 8"
    a = lossdsl.compile(text)
    b = pickle.loads(pickle.dumps(a))
    pred, target = torch.randn(3, 4), torch.randn(3, 4)
    want = 0.5 * F.mse_loss(pred, target) + 0.5 * F.l1_loss(pred, target)
    torch.testing.assert_close(b(pred, target), want)
    torch.testing.assert_close(a(pred, target), want)
