"""Rewriting a program's text with new weights (the text of ``suggest_weights``, DESIGN.md §7):
each rewrite against the expected text written out by hand, and the factor each term got."""

import sys

import pytest

import lossdsl
from lossdsl.resolve.rewrite import format_number, rewrite_weights


def rewrite(source, scale, magnitude=None):
    return rewrite_weights(lossdsl.check(source), scale, magnitude)


@pytest.mark.parametrize(
    "source, scale, expected",
    [
        # a factor is scaled where it is written; a term without one gets one
        ("0.5*mse + mae  # recon + sparsity", {"mse": 2 / 3, "mae": 2}, "0.3333*mse + 2*mae  # recon + sparsity"),
        ("mae/4 + mse", {"mae": 2}, "mae/2 + mse"),
        ("mse - mae", {"mse": 1, "mae": 2}, "mse - 2*mae"),
        ("-0.5*mae + mse", {"mae": 2}, "-1*mae + mse"),
        ("mse*-2 + mae", {"mse": 0.25}, "mse*-0.5 + mae"),
        # constants the resolver folds or reorders: the first number as written is scaled
        ("2*0.5*mse + mae*3", {"mse": 3, "mae": 0.5}, "6*0.5*mse + mae*1.5"),
        ("mse*1*0.5 + mae", {"mse": 2}, "mse*2*0.5 + mae"),
        ("(0.1+0.2)*huber + mae", {"huber": 2}, "2*(0.1+0.2)*huber + mae"),
        ("k = 0.7\nk*mse + mae", {"mse": 2}, "k = 0.7\n2*k*mse + mae"),
        ("linear(0, 1, steps=10)*mse + mae", {"mse": 0.5}, "0.5*linear(0, 1, steps=10)*mse + mae"),
        # a unit that is not linear in its term is scaled as a whole, outside its brackets
        ("((mse))^2 + huber", {"mse": 4}, "4*((mse))^2 + huber"),
        ("log(mse) + mae", {"mse": 3}, "3*log(mse) + mae"),
        ("2/(mse + mae) + huber", {"mse": 2, "mae": 2}, "4/(mse + mae) + huber"),
        ('balance(mse, mae, method="ema") + huber', {"mse": 2, "mae": 2}, '2*balance(mse, mae, method="ema") + huber'),
        # sums inside a constant factor: each term on its own
        ("0.5*(mse + mae)", {"mse": 2, "mae": 4}, "0.5*(2*mse + 4*mae)"),
        ("-(mse + 3*mae)", {"mse": 2, "mae": 3}, "-(2*mse + 9*mae)"),
        # a binding of one term is scaled where it is used
        (
            "recon = huber(delta=1)  # robust\n0.7*recon + mae",
            {"recon": 2, "mae": 0.5},
            "recon = huber(delta=1)  # robust\n1.4*recon + 0.5*mae",
        ),
        # a composite binding is edited inside its definition, once
        (
            "recon = mse + 0.5*mae\n2*recon + huber + recon",
            {"mse": 3, "mae": 2, "huber": 0.25},
            "recon = 3*mse + 1*mae\n2*recon + 0.25*huber + recon",
        ),
        # watched terms add nothing and stay as they are
        ("mse + watch(mae)  # only logged", {"mse": 2, "mae": 5}, "2*mse + watch(mae)  # only logged"),
        # comments and layout stay
        (
            "# head\n0.7*mse +\n    mae/4  # tail\n",
            {"mse": 0.5, "mae": 2},
            "# head\n0.35*mse +\n    mae/2  # tail\n",
        ),
    ],
)
def test_rewritten_text(source, scale, expected):
    assert rewrite(source, scale).source == expected
    lossdsl.check(expected)  # the new text is a program


def test_each_term_gets_its_factor():
    new = rewrite("recon = mse + 0.5*mae\n2*recon + huber + watch(l1)", {"mse": 3, "mae": 2, "huber": 0.25, "l1": 9})
    assert new.scale == {"mse": 3.0, "mae": 2.0, "huber": 0.25}  # l1 is only watched


def test_a_unit_of_several_terms_gets_their_factors_weighted_by_magnitude():
    # (1 * 3 + 3 * 1) / (3 + 1) = 1.5: the unit gets the terms' combined weighted magnitude
    new = rewrite("mse*mae + huber", {"mse": 1, "mae": 3, "huber": 2}, {"mse": 3, "mae": 1, "huber": 1})
    assert new.source == "1.5*mse*mae + 2*huber"
    assert new.scale == {"mse": 1.5, "mae": 1.5, "huber": 2.0}
    # without magnitudes the factors count equally
    assert rewrite("mse*mae", {"mse": 1, "mae": 3}).source == "2*mse*mae"


def test_repeated_terms_are_told_apart_by_their_place():
    # mse and mse_2 are both `mse` calls: the span in the source says which is which
    new = rewrite("0.5*mse + mae + 2*mse", {"mse": 4, "mse_2": 0.5})
    assert new.source == "2*mse + mae + 1*mse"
    assert new.scale == {"mse": 4.0, "mse_2": 0.5}


def test_factors_close_to_one_leave_the_text_alone():
    source = "0.7*mse + mae  # keep"
    assert rewrite(source, {}).source == source
    new = rewrite(source, {"mse": 1.00001, "mae": 1.0})
    assert new.source == source
    assert new.scale == {"mse": 1.00001, "mae": 1.0}


def test_a_factor_of_zero():
    assert rewrite("mse/4 + mae", {"mse": 0.0}).source == "0*mse/4 + mae"
    assert rewrite("0.5*mse + mae", {"mse": 0.0}).source == "0*mse + mae"


def test_bindings_nested_deeper_than_the_stack():
    depth = 120
    lines = ["b0 = mse + mae"] + [f"b{i} = 0.5*b{i - 1}" for i in range(1, depth)] + [f"b{depth - 1} + huber"]
    resolved = lossdsl.check("\n".join(lines))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100)  # the rewrite walks without recursion
    try:
        new = rewrite_weights(resolved, {"mse": 2, "huber": 3})
    finally:
        sys.setrecursionlimit(limit)
    expected = ["b0 = 2*mse + mae"] + lines[1:-1] + [f"b{depth - 1} + 3*huber"]
    assert new.source == "\n".join(expected)


def test_number_format():
    assert [format_number(x) for x in (0.5, 2.0, 1 / 3, -0.25, 12345.0, 1e-5)] == [
        "0.5", "2", "0.3333", "-0.25", "1.234e+04", "1e-05",
    ]
