"""The life of a ``Loss`` handled carelessly (README "Calling the loss", "Resuming",
"Balancers", "Seeing the balance"; DESIGN.md §4, §6, §7, §9): states edited or saved from
elsewhere, the ``meta`` device and back, ``inference_mode``, schedules whose parameters lie
beyond the step's integer range.

References: the state as it was before a refused load (a fresh loss's step is 0), the
formula of the program written with ``torch.nn.functional``, and the documented error type.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import lossdsl

SOURCE = 'balance(mse, mae, method="ema") + linear(0, 1, steps=10)*huber'
PLAIN = "mse + 0.5*mae"


def inputs(seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, generator=gen).to(device), torch.randn(6, 3, generator=gen).to(device)


def trained(source=SOURCE, calls=3):
    crit = lossdsl.compile(source)
    for step in range(calls):
        crit(*inputs(step), step=step)
    return crit


def plain_total(pred, target):
    return F.mse_loss(pred, target) + 0.5 * F.l1_loss(pred, target)


# --- states that do not fit ---------------------------------------------------------------


def refused_before_anything_is_copied(key: str, value) -> None:
    """A trained loss's state with ``key`` replaced by ``value`` is a LossDSLError for a fresh
    loss, whose step is then still 0 (README: "raises LossDSLError before anything is copied")."""
    state = trained().state_dict()
    state[key] = value
    fresh = lossdsl.compile(SOURCE)
    with pytest.raises(lossdsl.LossDSLError):
        fresh.load_state_dict(state)
    assert int(fresh.step) == 0


@pytest.mark.parametrize("entry", [{}, None, "calls"])
def test_a_corrupt_monitor_entry_is_refused_before_anything_is_copied(entry):
    refused_before_anything_is_copied("monitor._extra_state", entry)


def test_a_state_holding_a_meta_tensor_is_refused_before_anything_is_copied():
    # a state saved from a meta loss
    refused_before_anything_is_copied("balancers.0.ema", trained().state_dict()["balancers.0.ema"].to("meta"))


@pytest.mark.parametrize("step", [torch.tensor(-3), torch.tensor(2.5)])
def test_a_loaded_step_obeys_the_rules_of_step(step):
    refused_before_anything_is_copied("step", step)


# --- the meta device and inference mode -----------------------------------------------------


def test_a_meta_loss_loaded_with_assign_trains():
    # torch's recipe for big models: build on meta, then load_state_dict(..., assign=True)
    source = trained(PLAIN)
    with torch.device("meta"):
        crit = lossdsl.compile(PLAIN)
    crit.load_state_dict(source.state_dict(), assign=True)
    pred, target = inputs(7)
    total = crit(pred, target, step=3)
    torch.testing.assert_close(total, plain_total(pred, target))
    assert crit.monitor.stats()["mse"]["count"] == 4  # three loaded calls and this one


@pytest.mark.parametrize("source", [PLAIN, SOURCE])
def test_a_loss_compiled_under_inference_mode_trains(source):
    with torch.inference_mode():  # e.g. a setup hook that runs under inference mode
        crit = lossdsl.compile(source)
    pred, target = inputs(1)
    pred.requires_grad_(True)
    total = crit(pred, target, step=3)
    total.backward()
    reference = lossdsl.compile(source)
    torch.testing.assert_close(total.detach(), reference(pred, target, step=3).detach())


# --- schedules beyond int64 -----------------------------------------------------------------

HUGE = [
    "after(1e30)*mse + mae",
    "cyclic(period=1e30)*mse + mae",
    "piecewise(boundaries=[1e30], values=[0, 1])*mse + mae",
]


@pytest.mark.parametrize("source", HUGE)
def test_a_schedule_beyond_int64_runs_on_the_tensor_path(source):
    # the CPU eager call computes the schedule on the host and works; the same program on
    # another device (meta stands for an accelerator) computes it on the step tensor
    crit = lossdsl.compile(source)
    pred, target = inputs(2)
    crit(pred, target, step=5)
    assert crit.weights["mse"].item() == pytest.approx(0.0, abs=1e-20)  # 0, or 5/1e30 for cyclic
    meta = lossdsl.compile(source).to("meta")
    total = meta(pred.to("meta"), target.to("meta"), step=5)
    assert total.device.type == "meta" and total.shape == ()


def test_a_schedule_beyond_int64_compiles():
    crit = lossdsl.compile("after(1e30)*mse + mae")
    pred, target = inputs(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = torch.compile(crit, backend="eager")(pred, target, step=torch.tensor(5))
    torch.testing.assert_close(total, F.l1_loss(pred, target))


def test_a_loss_moved_to_meta_and_back_with_to_empty_starts_anew():
    # `.to("cpu")` from meta is refused by torch, whose message says to use to_empty()
    source = 'balance(mse, mae, method="relobralo") + linear(0, 1, steps=10)*huber'
    crit = lossdsl.compile(source)
    for step in range(4):
        crit(inputs(step)[0] * (step + 1), inputs(step)[1], step=step)
    crit.to("meta").to_empty(device="cpu")
    pred, target = inputs(9)
    crit(pred, target)
    fresh = lossdsl.compile(source)
    fresh(pred, target)
    assert int(crit.step) == 0
    for name in ("mse", "mae", "huber"):
        torch.testing.assert_close(crit.weights[name], fresh.weights[name])


# --- what load_state_dict is given ----------------------------------------------------------


@pytest.mark.parametrize("given", [None, 3, ("step", torch.tensor(1)), "loss_state.pt"],
                         ids=["None", "int", "tuple", "path"])
def test_load_state_dict_of_something_that_is_not_a_mapping(given):
    crit = trained()
    step = int(crit.step)
    with pytest.raises(lossdsl.LossDSLError) as err:
        crit.load_state_dict(given)
    assert err.value.hint
    assert "'l', 'o'" not in str(err.value)  # not the characters of "loss_state.pt" as keys
    assert int(crit.step) == step


# --- a gradient aggregator's backward after a validation call ----------------------------------


def _aggregated(validate_between):
    pytest.importorskip("torchjd")
    torch.manual_seed(0)
    trunk, head_a, head_b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    x, ya, yb = torch.randn(8, 3), torch.randn(8, 1), 5 * torch.randn(8, 1)
    crit = lossdsl.compile('balance(mse(pred=a, target=ya), mse(pred=b, target=yb), method="imtl_g")')

    def call():
        h = trunk(x)
        return crit(a=head_a(h), ya=ya, b=head_b(h), yb=yb, shared=trunk)

    call()
    if validate_between:  # e.g. the same loss logged on an EMA copy of the model
        with torch.no_grad():
            call()
    crit.backward()
    return crit, trunk.weight.grad.clone()


def test_backward_after_a_validation_call_reports_the_weights_it_gave():
    # README: crit.weights of an aggregator's terms are the weights it gave on the last
    # crit.backward, and the monitor records them; a validation call in between changes neither
    reference, reference_grad = _aggregated(False)
    crit, grad = _aggregated(True)
    torch.testing.assert_close(grad, reference_grad)
    assert reference.weights["mse"].item() != pytest.approx(1.0)  # the aggregator did weigh
    for name in ("mse", "mse_2"):
        torch.testing.assert_close(crit.weights[name], reference.weights[name])
        # the validation call folded the training call into the statistics before the
        # backward: they hold its weights as of the call (README, "crit.weights of an
        # aggregator's terms")
        assert crit.monitor.stats()[name]["weight"] == pytest.approx(1.0)


@pytest.mark.parametrize("source", ["mse + linear(0, 1, steps=10)*mae", 'balance(mse, mae, method="ema")'])
def test_a_loss_moved_to_meta_takes_the_step_of_its_next_real_call(source):
    # README: state moved to meta with the loss holds no numbers and starts anew at the
    # next real call
    crit = lossdsl.compile(source).to("meta")
    pred, target = inputs(4)
    total = crit(pred, target, step=4)
    if "linear" in source:
        torch.testing.assert_close(total, F.mse_loss(pred, target) + 0.4 * F.l1_loss(pred, target))
    assert crit.step.device.type == "cpu" and int(crit.step) == 4


# --- writing the sinks by hand --------------------------------------------------------------


@pytest.mark.parametrize("step", [float("nan"), torch.tensor([1, 2])], ids=["nan", "vector"])
def test_monitor_write_with_a_bad_step_refuses_and_loses_no_call(step):
    crit = lossdsl.compile("mse")
    rows = []
    crit.monitor.attach(lambda scalars, at: rows.append((at, scalars["loss/mse"])), every=1000)
    zeros = torch.zeros(4)
    for _ in range(3):
        crit(zeros, torch.ones(4), step=5)  # mse 1
    with pytest.raises(lossdsl.LossDSLError):
        crit.monitor.write(step=step)
    crit(zeros, torch.full((4,), 2.0), step=6)  # mse 4
    crit.monitor.write()
    assert rows == [(6, pytest.approx((1 + 1 + 1 + 4) / 4))]


def test_probe_inputs_given_as_one_name_or_none():
    crit = lossdsl.compile("mse")
    try:
        crit.monitor.probe(every=1, inputs="pred")
    except lossdsl.LossDSLError as err:
        assert "'pred'" in str(err)  # names the input given, not its first letter
    else:
        pred = torch.zeros(4, requires_grad=True)
        crit(pred, torch.ones(4))
        # d mse / d pred = 2 (pred - target) / n = -0.5 per entry: norm 1
        assert crit.monitor.stats()["mse"]["grad_norm"] == pytest.approx(1.0)
    with pytest.raises(lossdsl.LossDSLError):
        crit.monitor.probe(every=1, inputs=None)
