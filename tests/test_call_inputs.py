"""Bad call arguments (DESIGN.md §4, §8): a ``step`` that is not an optimizer step, an input
object that raises while being read, a nested input that is not there. Each is a
``LossInputError`` that names what is wrong (and, for inputs, the term and its place)."""

import types
from dataclasses import dataclass

import pytest
import torch

import lossdsl


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)


# --- step= ----------------------------------------------------------------------------------

BAD_STEPS = [
    ("5", "'5'"),
    (2**63, "2**63"),
    (-1, "-1"),
    (float("nan"), "nan"),
    (float("inf"), "inf"),
    (2.5, "2.5"),
    (True, "bool"),
    (None.__class__, "type"),
    (torch.tensor([1, 2]), "shape (2,)"),
    (torch.zeros(2, 2), "shape (2, 2)"),
    (torch.tensor(float("nan")), "nan"),
    (torch.tensor(-3), "-3"),
    (torch.tensor(True), "torch.bool"),
]


@pytest.mark.parametrize("step,named", BAD_STEPS, ids=[n for _, n in BAD_STEPS])
def test_a_bad_step_is_an_input_error_naming_it(step, named):
    crit = lossdsl.compile("mse + linear(0, 1, steps=10)*mae")
    pred, target = _data()
    crit(pred, target, step=4)
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(pred, target, step=step)
    message = str(info.value)
    assert message.startswith("step must be a whole number") and named in message
    assert "step=" in info.value.hint
    with pytest.raises(lossdsl.LossInputError):
        crit.set_step(step)
    assert int(crit.step) == 4  # the stored step is unchanged


@pytest.mark.parametrize(
    "step,stored",
    [(7, 7), (7.0, 7), (2**63 - 1, 2**63 - 1), (torch.tensor(9), 9), (torch.tensor([11]), 11), (torch.tensor(12.0), 12)],
)
def test_good_steps_are_stored(step, stored):
    crit = lossdsl.compile("mse + linear(0, 1, steps=10)*mae")
    pred, target = _data()
    crit(pred, target, step=step)
    assert int(crit.step) == stored
    crit.set_step(step)
    assert int(crit.step) == stored


# --- an input object that raises while it is read -----------------------------------------


class RaisingProperty:
    @property
    def depth(self):
        raise KeyError("depth was not computed")


class RaisingGetattr:
    def __getattr__(self, name):
        raise RuntimeError(f"remote tensor {name} is gone")


class PropertyRaisingAttributeError:
    @property
    def depth(self):
        raise AttributeError("no depth head in this model")


@pytest.mark.parametrize(
    "out,error",
    [(RaisingProperty(), KeyError), (RaisingGetattr(), RuntimeError), ({"head": RaisingGetattr()}, RuntimeError)],
    ids=["property", "getattr", "nested"],
)
def test_an_input_that_raises_is_an_input_error_naming_the_term(out, error):
    source = "0.5*mse + mae(pred=out.depth)" if not isinstance(out, dict) else "0.5*mse + mae(pred=out.head.depth)"
    crit = lossdsl.compile(source)
    pred, target = _data()
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(pred, target, out=out)
    err = info.value
    assert err.term == "mae" and "term 'mae'" in err.message
    assert "could not read its input 'out." in err.message and error.__name__ in err.message
    assert (err.line, err.column) == (1, source.index("mae(") + 1)
    assert "^" * len("mae(pred=out") in str(err)  # the caret under the term
    assert isinstance(err.__cause__, error)  # the original exception, chained


def test_a_property_raising_attribute_error_is_named_not_called_missing():
    crit = lossdsl.compile("mae(pred=out.depth)")
    pred, target = _data()
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(target=target, out=PropertyRaisingAttributeError())
    assert "reading 'out.depth' raised AttributeError: no depth head" in info.value.message
    assert isinstance(info.value.__cause__, AttributeError)


# --- a nested input that is not there ------------------------------------------------------


def test_a_missing_key_is_named_with_the_keys_that_are_there():
    crit = lossdsl.compile("cross_entropy(pred=out.seg)")
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(target=labels, out={"depth": logits, "normals": logits})
    err = info.value
    assert "needs input 'out.seg' for its 'pred', but 'out' has no key 'seg'" in err.message
    assert "'depth', 'normals'" in err.hint
    assert "pass out=" not in str(err)  # out was passed
    assert err.term == "cross_entropy" and err.column == 1


@pytest.mark.parametrize(
    "out,kind",
    [
        ({"depth": 1, "normals": 2}, "key"),
        (types.SimpleNamespace(depth=1, normals=2), "attribute"),
    ],
    ids=["mapping", "object"],
)
def test_the_nearest_name_is_suggested(out, kind):
    crit = lossdsl.compile("mse(pred=out.dpth)")
    pred, target = _data()
    out = {k: pred for k in out} if isinstance(out, dict) else types.SimpleNamespace(depth=pred, normals=pred)
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(target=target, out=out)
    assert f"but 'out' has no {kind} 'dpth'" in info.value.message
    assert info.value.hint.startswith("did you mean 'out.depth'?")


@dataclass
class Heads:
    depth: torch.Tensor
    seg: torch.Tensor | None = None

    @property
    def normals(self):
        return self.depth


def test_attributes_of_an_object_are_listed_and_a_none_is_said_to_be_none():
    crit = lossdsl.compile("mse(pred=out.heads.sgm)")
    pred, target = _data()
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(target=target, out={"heads": Heads(pred)})
    assert "but 'out.heads' has no attribute 'sgm'" in info.value.message
    assert "'depth', 'normals', 'seg'" in info.value.hint and "did you mean 'out.heads.seg'?" in info.value.hint
    crit = lossdsl.compile("mse(pred=out.heads.seg)")
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(target=target, out={"heads": Heads(pred)})
    assert "but 'out.heads.seg' is None" in info.value.message


def test_an_input_not_passed_at_all_still_says_to_pass_it():
    crit = lossdsl.compile("mse(pred=out.depth)")
    pred, target = _data()
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(target=target)
    assert info.value.hint == "pass out=... to the loss call"
