"""``lossdsl gradcheck`` draws each input from the domain its terms declare and passes for
every term of the catalogue, naming the one documented non-differentiability."""

from __future__ import annotations

import pytest

import lossdsl
from lossdsl.tools.catalogue import builtin_specs
from lossdsl.cli import main
from lossdsl.tools.gradcheck import DOCUMENTED

# Values for hyperparameters that have no default (the program must compile).
REQUIRED = {"lower": "-1", "upper": "1"}


def catalogue_programs() -> list[str]:
    programs = []
    for spec in builtin_specs():
        required = [h.name for h in spec.hyper if h.required]
        args = ", ".join(f"{name}={REQUIRED[name]}" for name in required)
        programs.append(f"{spec.name}({args})" if args else spec.name)
    return programs


@pytest.mark.parametrize("program", catalogue_programs())
def test_every_catalogue_term_passes(capsys, program):
    # as a user would type it: no shapes given, so terms that need shapes of their own
    # (images, boxes, sequences) get them
    code = main(["gradcheck", program])
    out, err = capsys.readouterr()
    assert code == 0, err
    name = program.split("(")[0]
    if name in DOCUMENTED:
        assert out.startswith("gradcheck passed except where documented")
        assert f"  {name}: differs, as documented: " in out
    else:
        assert out.startswith("gradcheck passed: ")


def test_bce_gets_probabilities_and_focal_ce_class_indices(capsys):
    # bce reads pred as probabilities: with standard normal values it used to fail
    assert main(["gradcheck", "bce", "--shape", "5,3"]) == 0
    assert "gradcheck passed: bce" in capsys.readouterr().out
    # focal_ce reads class indices: pred (4, 8, 3) with classes on axis 1 -> target (4, 3)
    assert main(["gradcheck", "focal_ce + 0.5*cross_entropy(class_dim=1)"]) == 0
    out = capsys.readouterr().out
    assert "target(4, 3) int64" in out and "pred(4, 8, 3)" in out
    assert main(["gradcheck", "focal_ce(class_dim=-1)", "--shape", "6,5"]) == 0
    assert "target(6,) int64" in capsys.readouterr().out


def test_hyperparameters_change_the_domain(capsys):
    # poisson_nll(log_input=false) reads rates: negative normal values would be invalid
    for program in ("poisson_nll(log_input=false)", "dice(from_logits=false)", "kl_div(log_target=true)"):
        assert main(["gradcheck", program]) == 0, capsys.readouterr().err
    capsys.readouterr()


def test_a_documented_term_next_to_a_detach_is_not_excused(capsys):
    # detach() is a non-differentiability the program writes itself: exit 1
    code = main(["gradcheck", "adaptive_huber + detach(mse)", "--shape", "4,3"])
    err = capsys.readouterr().err
    assert code == 1
    assert "adaptive_huber: differs, as documented" in err and "  mse: passed" in err
    assert "detach()" in err.splitlines()[-1]


def test_a_wrong_gradient_next_to_a_documented_term_fails(capsys):
    def half_gradient(pred, target):
        """The value of mse with half its gradient: a term whose backward is wrong."""
        sq = ((pred - target) ** 2).mean()
        return 0.5 * sq + 0.5 * sq.detach()

    lossdsl.registry.register(half_gradient, replace=True)
    try:
        code = main(["gradcheck", "adaptive_huber + half_gradient", "--shape", "4,3"])
    finally:
        lossdsl.registry.unregister("half_gradient")
    err = capsys.readouterr().err
    assert code == 1
    assert "  half_gradient: FAILED" in err and "adaptive_huber: differs, as documented" in err


def test_a_term_with_shapes_of_its_own(capsys, monkeypatch):
    import torch

    from lossdsl.tools import gradcheck

    def rows_term(pred, target):
        """Squared distance of rows: needs 2-d inputs of 5 columns."""
        if pred.dim() != 2 or pred.shape[1] != 5:
            raise lossdsl.LossInputError(f"rows_term needs (N, 5), got {tuple(pred.shape)}")
        return ((pred - target) ** 2).sum(1).mean()

    def rows(hyper, generator):
        return {name: torch.randn(3, 5, dtype=torch.float64, generator=generator)
                for name in ("pred", "target")}

    lossdsl.registry.register(rows_term, replace=True)
    monkeypatch.setitem(gradcheck.SHAPED, "rows_term", rows)
    try:
        # no shape given: the term's own; read by another term too, which takes the same
        assert main(["gradcheck", "rows_term + 0.5*mse"]) == 0
        assert "pred(3, 5), target(3, 5)" in capsys.readouterr().out
        # a shape given wins, and the term says when it cannot take it
        assert main(["gradcheck", "rows_term", "--shape", "7,5"]) == 0
        assert "pred(7, 5)" in capsys.readouterr().out
        assert main(["gradcheck", "rows_term", "--shape", "4,8,3"]) == 1
        assert "rows_term needs (N, 5)" in capsys.readouterr().err
    finally:
        lossdsl.registry.unregister("rows_term")


def test_catalogue_terms_with_shapes_of_their_own(capsys):
    expected = {"ctc": "target(2, 3) int64", "giou": "pred(6, 4), target(6, 4)",
                "info_nce": "anchor(6, 5), positive(6, 5)"}
    present = {name: shown for name, shown in expected.items() if name in lossdsl.registry}
    if not present:
        pytest.skip("no term with shapes of its own in this catalogue")
    for name, shown in present.items():
        assert main(["gradcheck", name]) == 0, capsys.readouterr().err
        assert shown in capsys.readouterr().out
