"""Balancers (DESIGN.md §6): each method against a plain-Python version of its formula.

The term values are fed through custom terms that read one entry of ``pred`` each, so the
test chooses every ``L_i`` exactly and the gradient ``d total / d pred_i`` (autograd) is an
independent check of the effective weights that ``crit.weights`` reports.
"""

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.language.balancers import METHODS as BALANCER_METHODS
from lossdsl.language.balancers import counter_uniform
from lossdsl.runtime.balancer import Balancer

METHODS = ["uncertainty", "ema", "dwa", "cov", "softadapt", "relobralo"]


def first(pred):
    """Entry 0 of pred."""
    return pred[0]


def second(pred):
    """Entry 1 of pred."""
    return pred[1]


def third(pred):
    """Entry 2 of pred."""
    return pred[2]


PICK = {"first": first, "second": second, "third": third}


def compile_balance(method: str, k: int = 3, outer: str = "", nonfinite="raise", **params) -> lossdsl.Loss:
    names = ", ".join(list(PICK)[:k])
    extra = "".join(f", {key}={value}" for key, value in params.items())
    source = f'{outer}balance({names}, method="{method}"{extra})'
    return lossdsl.compile(source, terms=PICK, nonfinite=nonfinite)


def sequence(steps: int, k: int = 3, scale_first: float = 1.0) -> list[list[float]]:
    """A fixed, positive, varying loss history: L_i(t) for t = 1..steps."""
    rows = []
    for t in range(steps):
        row = [(i + 1) * (1.2 + 0.6 * math.sin(0.7 * t + 1.3 * i)) * math.exp(-0.03 * t) for i in range(k)]
        row[0] *= scale_first
        rows.append(row)
    return rows


def run(crit, rows, dtype=torch.float64):
    """Feed the rows; return per step (total, reported weights, autograd d total / d L_i)."""
    out = []
    for row in rows:
        pred = torch.tensor(row, dtype=dtype, requires_grad=True)
        total = crit(pred)
        (grad,) = torch.autograd.grad(total, pred)
        weights = [float(crit.weights[name]) for name in crit.term_names]
        out.append((float(total.detach()), weights, grad.tolist()))
    return out


# --- plain-Python versions of the §6 formulas ---------------------------------------------


def softmax(xs):
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def ref_ema(rows, beta=0.99, eps=1e-8):
    m, out = [0.0] * len(rows[0]), []
    for t, row in enumerate(rows, start=1):
        m = [beta * mi + (1 - beta) * li for mi, li in zip(m, row)]
        out.append([1 / (mi / (1 - beta**t) + eps) for mi in m])
    return out


def ref_dwa(rows, temperature=2.0, window=10, eps=1e-8):
    k, out = len(rows[0]), []
    for t in range(1, len(rows) + 1):
        seen = rows[:t]
        if t < 2 * window:
            out.append([1.0] * k)
            continue
        recent = [statistics.fmean(r[i] for r in seen[-window:]) for i in range(k)]
        older = [statistics.fmean(r[i] for r in seen[-2 * window : -window]) for i in range(k)]
        ratio = [a / (b + eps) for a, b in zip(recent, older)]
        out.append([k * s for s in softmax([r / temperature for r in ratio])])
    return out


def ref_cov(rows, eps=1e-8):
    # Statistics recomputed from the whole history each step (no Welford recurrence).
    k, out = len(rows[0]), []
    for t in range(1, len(rows) + 1):
        mu = [[statistics.fmean(r[i] for r in rows[:j]) for i in range(k)] for j in range(1, t + 1)]
        ratios = [[rows[j][i] / (mu[j][i] + eps) for j in range(t)] for i in range(k)]
        if t <= 2:
            alpha = [1 / k] * k
        else:
            cv = [math.sqrt(statistics.pvariance(r)) / (statistics.fmean(r) + eps) for r in ratios]
            alpha = [c / sum(cv) for c in cv]
        out.append([a / (m + eps) for a, m in zip(alpha, mu[-1])])
    return out


def ref_softadapt(rows, beta=0.1):
    out, prev = [], None
    for row in rows:
        slope = [0.0] * len(row) if prev is None else [a - b for a, b in zip(row, prev)]
        out.append(softmax([beta * s for s in slope]))
        prev = row
    return out


def relobralo_candidates(row, initial, previous, lam, alpha, temperature, eps=1e-8):
    """lambda(t) for rho = 1 and rho = 0."""
    k = len(row)
    lhat0 = [k * v for v in softmax([a / (temperature * b + eps) for a, b in zip(row, initial)])]
    lhatp = [k * v for v in softmax([a / (temperature * b + eps) for a, b in zip(row, previous)])]
    return [
        [alpha * (rho * lp + (1 - rho) * h0) + (1 - alpha) * hp for lp, h0, hp in zip(lam, lhat0, lhatp)]
        for rho in (1.0, 0.0)
    ]


def ref_relobralo(rows, rho, alpha=0.999, temperature=0.1):
    lam, out = [1.0] * len(rows[0]), []
    for t, row in enumerate(rows):
        previous = rows[t - 1] if t else row
        keep, fresh = relobralo_candidates(row, rows[0], previous, lam, alpha, temperature)
        lam = keep if rho == 1 else fresh
        out.append(lam)
    return out


def close(a, b, rel=1e-9):
    return all(x == pytest.approx(y, rel=rel, abs=1e-12) for x, y in zip(a, b))


# --- each method against its formula ------------------------------------------------------

REFERENCES = [
    ("ema", {"beta": 0.9}, lambda rows: ref_ema(rows, beta=0.9)),
    ("ema", {}, ref_ema),
    ("dwa", {"window": 3, "temperature": 0.5}, lambda rows: ref_dwa(rows, 0.5, 3)),
    ("dwa", {}, ref_dwa),
    ("cov", {}, ref_cov),
    ("softadapt", {}, ref_softadapt),
    ("softadapt", {"beta": 5}, lambda rows: ref_softadapt(rows, beta=5.0)),
    ("relobralo", {"expected_rho": 1, "alpha": 0.6, "temperature": 1}, lambda r: ref_relobralo(r, 1, 0.6, 1.0)),
    ("relobralo", {"expected_rho": 0, "alpha": 0.6}, lambda r: ref_relobralo(r, 0, 0.6, 0.1)),
    ("relobralo", {"expected_rho": 0}, lambda r: ref_relobralo(r, 0)),
]


@pytest.mark.parametrize("method,params,reference", REFERENCES)
def test_weights_follow_the_formula(method, params, reference):
    rows = sequence(25)
    crit = compile_balance(method, **params)
    crit.double()  # statistics in float64, so the comparison can be tight
    got = run(crit, rows)
    for (total, weights, grad), want, row in zip(got, reference(rows), rows):
        assert close(weights, want, rel=1e-6)  # crit.weights are reported in float32
        assert close(grad, want, rel=1e-9)  # d total / d L_i by autograd, float64
        assert total == pytest.approx(sum(w * v for w, v in zip(want, row)), rel=1e-9)


def test_dwa_is_one_until_two_windows_are_seen_then_moves():
    got = run(compile_balance("dwa", window=4), sequence(12))
    assert [w for _, w, _ in got[:7]] == [[1.0, 1.0, 1.0]] * 7
    assert got[7][1] != [1.0, 1.0, 1.0] and sum(got[7][1]) == pytest.approx(3.0, rel=1e-6)


def test_relobralo_random_lookback_draws_from_its_own_generator():
    rows = sequence(40)
    crit = compile_balance("relobralo", expected_rho=0.5, alpha=0.7)
    crit.double()
    global_state = torch.random.get_rng_state()
    got = run(crit, rows)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # global RNG untouched
    lam, picked = [1.0, 1.0, 1.0], []
    for t, (row, (_, weights, _)) in enumerate(zip(rows, got)):
        keep, fresh = relobralo_candidates(row, rows[0], rows[t - 1] if t else row, lam, 0.7, 0.1)
        matches = [close(weights, c, rel=1e-6) for c in (keep, fresh)]
        assert any(matches), f"step {t}: {weights} is neither candidate"
        picked.append(matches[0] and not matches[1])
        lam = keep if matches[0] else fresh
    assert 5 < sum(picked[1:]) < 34  # rho was 1 on some steps and 0 on others


def test_relobralo_seed_is_reproducible_and_changes_the_draws():
    rows = sequence(30)

    def weights(seed):
        crit = compile_balance("relobralo", expected_rho=0.5, alpha=0.7, seed=seed)
        return [w for _, w, _ in run(crit, rows)]

    assert weights(3) == weights(3)
    assert weights(3) != weights(4)


def test_counter_uniform_is_uniform():
    u = counter_uniform(torch.tensor(12345), torch.arange(20000))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    assert torch.all((counts - 2000).abs() < 200)  # about 7 standard deviations
    assert abs(float((u < 0.3).float().mean()) - 0.3) < 0.02
    # neighbouring draws are uncorrelated
    a, b = u[:-1] - 0.5, u[1:] - 0.5
    assert abs(float((a * b).mean() / (a * a).mean())) < 0.03


def test_softadapt_matches_the_paper_by_hand():
    # Heydari et al. 2019: alpha_k = exp(beta s_k) / sum_l exp(beta s_l), s_k = L_k(t) - L_k(t-1)
    history = [[2.0, 1.0, 0.5], [1.5, 1.2, 0.5]]
    beta = 2.0
    s = [1.5 - 2.0, 1.2 - 1.0, 0.5 - 0.5]
    denominator = math.exp(beta * s[0]) + math.exp(beta * s[1]) + math.exp(beta * s[2])
    expected = [math.exp(beta * v) / denominator for v in s]
    crit = compile_balance("softadapt", beta=2)
    got = run(crit, history)
    assert got[0][1] == pytest.approx([1 / 3] * 3, rel=1e-6)
    assert got[1][1] == pytest.approx(expected, rel=1e-6)
    assert got[1][0] == pytest.approx(sum(e * v for e, v in zip(expected, history[1])), rel=1e-6)


def test_uncertainty_formula_value_and_gradients():
    crit = compile_balance("uncertainty")
    params = list(crit.parameters())
    assert len(params) == 1 and params[0].shape == (3,) and params[0].requires_grad
    assert torch.equal(params[0].detach(), torch.zeros(3))  # s_i start at 0
    s = [0.3, -1.2, 2.0]
    with torch.no_grad():
        params[0].copy_(torch.tensor(s))
    row = [1.5, 0.25, 8.0]
    pred = torch.tensor(row, requires_grad=True)
    total = crit(pred)
    total.backward()
    want = sum(0.5 * math.exp(-si) * li + 0.5 * si for si, li in zip(s, row))
    assert float(total.detach()) == pytest.approx(want, rel=1e-6)
    weights = [0.5 * math.exp(-si) for si in s]
    assert [float(crit.weights[n]) for n in crit.term_names] == pytest.approx(weights, rel=1e-6)
    assert pred.grad.tolist() == pytest.approx(weights, rel=1e-6)
    d_s = [-0.5 * math.exp(-si) * li + 0.5 for si, li in zip(s, row)]
    assert params[0].grad.tolist() == pytest.approx(d_s, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_weight_outside_the_balance_scales_the_effective_weight(method):
    rows = sequence(6, k=2)
    params = {"expected_rho": 0} if method == "relobralo" else {}
    inner = run(compile_balance(method, k=2, **params), rows)
    outer = run(compile_balance(method, k=2, outer="2*", **params), rows)
    for (t1, w1, _), (t2, w2, g2) in zip(inner, outer):
        assert w2 == pytest.approx([2 * w for w in w1], rel=1e-6)
        assert g2 == pytest.approx(w2, rel=1e-6)
        assert t2 == pytest.approx(2 * t1, rel=1e-6)


def test_inner_terms_keep_their_log_names():
    crit = lossdsl.compile('recon = mse\nbalance(recon, mae, method="ema") + 0.1*mse')
    crit(torch.randn(4, 3), torch.randn(4, 3))
    assert crit.term_names == ["recon", "mae", "mse"]
    assert float(crit.weights["mse"]) == pytest.approx(0.1)


# --- scale invariance ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dwa", "relobralo"])
def test_scaling_one_term_leaves_the_weights(method):
    params = {"window": 3} if method == "dwa" else {"alpha": 0.6, "expected_rho": 0.5}
    plain = run(compile_balance(method, **params), sequence(20))
    scaled = run(compile_balance(method, **params), sequence(20, scale_first=100.0))
    for (_, w1, _), (_, w2, _) in zip(plain, scaled):
        assert w2 == pytest.approx(w1, rel=1e-5)
    assert plain[-1][1] != pytest.approx([1.0, 1.0, 1.0], rel=1e-3)  # the weights did move


@pytest.mark.parametrize("method", ["cov", "ema"])
def test_scaling_one_term_leaves_its_contribution(method):
    rows, scaled_rows = sequence(20), sequence(20, scale_first=100.0)
    plain = run(compile_balance(method), rows)
    scaled = run(compile_balance(method), scaled_rows)
    for (_, w1, _), (_, w2, _), r1, r2 in zip(plain, scaled, rows, scaled_rows):
        assert w2[0] == pytest.approx(w1[0] / 100, rel=1e-5)  # the scaled term's weight drops 100x
        assert w2[1:] == pytest.approx(w1[1:], rel=1e-5)
        assert [w * v for w, v in zip(w2, r2)] == pytest.approx([w * v for w, v in zip(w1, r1)], rel=1e-5)


# --- state: save/load, eval mode, devices, compile -----------------------------------------


def _train_steps(crit, rows, optimizer=None):
    totals, weights = [], []
    for row in rows:
        pred = torch.tensor(row, requires_grad=True)
        total = crit(pred)
        if optimizer is not None:
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        totals.append(total.detach().clone())
        weights.append(_weights(crit).clone())
    return totals, weights


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_resume_is_bit_identical(method):
    params = {"dwa": {"window": 2}, "relobralo": {"expected_rho": 0.5, "alpha": 0.7}}.get(method, {})
    rows = sequence(14)
    a = compile_balance(method, **params)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1) if method == "uncertainty" else None
    _train_steps(a, rows[:7], opt_a)
    saved = copy.deepcopy(a.state_dict())
    want = _train_steps(a, rows[7:], opt_a)

    b = compile_balance(method, **params)
    b.load_state_dict(saved)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1) if method == "uncertainty" else None
    got = _train_steps(b, rows[7:], opt_b)
    for x, y in zip(want[0] + want[1], got[0] + got[1]):
        assert torch.equal(x, y)

    fresh = compile_balance(method, **params)  # without the saved state the run differs
    other = _train_steps(fresh, rows[7:], torch.optim.SGD(fresh.parameters(), lr=0.1) if opt_a else None)
    assert not all(torch.equal(x, y) for x, y in zip(want[1], other[1]))


@pytest.mark.parametrize("method", METHODS)
def test_eval_mode_reads_state_without_changing_it(method):
    crit = compile_balance(method, **({"window": 2} if method == "dwa" else {}))
    rows = sequence(10)
    _, train_weights = _train_steps(crit, rows[:6])
    before = copy.deepcopy(crit.balancers.state_dict())
    crit.eval()
    eval_weights = _train_steps(crit, rows[6:])[1]
    after = crit.balancers.state_dict()
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[k], after[k]) for k in before)
    if method in ("ema", "dwa", "cov"):
        # weights come from stored statistics only: those of the last training step
        for w in eval_weights:
            assert torch.allclose(w, train_weights[-1], rtol=1e-6)


@pytest.mark.parametrize("method", ["ema", "dwa", "cov", "softadapt", "relobralo"])
def test_a_nonfinite_step_leaves_the_statistics_alone(method):
    params = {"dwa": {"window": 2}, "relobralo": {"expected_rho": 0, "alpha": 0.6}}.get(method, {})
    rows = sequence(10)
    clean = run(compile_balance(method, **params), rows)
    crit = compile_balance(method, nonfinite="warn", **params)  # the run goes on after a NaN
    run(crit, rows[:5])
    total = crit(torch.tensor([float("nan"), 1.0, float("inf")]))
    assert math.isnan(float(total))
    after = run(crit, rows[5:])
    for (_, want, _), (_, got, _) in zip(clean[5:], after):
        assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_eval_before_any_training_gives_finite_weights(method):
    crit = compile_balance(method).eval()
    total = crit(torch.tensor([2.0, 0.5, 4.0]))
    assert torch.isfinite(total)
    assert all(torch.isfinite(w) and w > 0 for w in crit.weights.values())


def test_state_moves_with_dtype_and_statistics_use_half_inputs():
    crit = compile_balance("ema", k=2, beta=0.5)
    for row in ([4.0, 0.5], [2.0, 1.0]):
        crit(torch.tensor(row, dtype=torch.float16))
    # m = bias-corrected EMA: (0.5*0.5*4 + 0.5*2) / (1 - 0.25) and likewise for term 2
    m = [(0.25 * 4.0 + 0.5 * 2.0) / 0.75, (0.25 * 0.5 + 0.5 * 1.0) / 0.75]
    assert [float(crit.weights[n]) for n in crit.term_names] == pytest.approx([1 / v for v in m], rel=1e-6)
    crit.double()
    assert crit.balancers[0].ema.dtype == torch.float64


@pytest.mark.parametrize("method", METHODS)
def test_torch_compile_fullgraph_one_graph_for_all_steps(method):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    params = {"window": 2} if method == "dwa" else {}
    rows = sequence(6)
    eager = compile_balance(method, **params)
    crit = compile_balance(method, **params)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(crit, backend=counter, fullgraph=True)
    for row in rows:
        pe = torch.tensor(row, requires_grad=True)
        pc = torch.tensor(row, requires_grad=True)
        want, got = eager(pe), compiled(pc)
        want.backward()
        got.backward()
        assert torch.allclose(got, want, rtol=1e-6)
        assert torch.allclose(pc.grad, pe.grad, rtol=1e-6)
        assert torch.allclose(_weights(crit), _weights(eager), rtol=1e-6)
    assert counter.frame_count == 1  # state lives in buffers: no recompilation per step
    if method == "ema":  # and the compiled weights are the formula's
        assert close(_weights(crit).tolist(), ref_ema(rows)[-1], rel=1e-5)
    if method == "uncertainty":
        assert crit.balancers[0].log_var.grad.tolist() == pytest.approx(
            [6 * 0.5 - sum(0.5 * r[i] for r in rows) for i in range(3)], rel=1e-5
        )


def test_torch_compile_default_backend_ema_and_relobralo():
    import torch._inductor.config as inductor_config

    # one compile thread: a pool of compile workers costs more CPU than these tiny graphs
    with inductor_config.patch(compile_threads=1):
        torch._dynamo.reset()
        rows = sequence(6)
        crit = compile_balance("ema", beta=0.9)
        compiled = torch.compile(crit, fullgraph=True)
        for row, want in zip(rows, ref_ema(rows, beta=0.9)):
            total = compiled(torch.tensor(row))
            assert close(_weights(crit).tolist(), want, rel=1e-5)
            assert float(total) == pytest.approx(sum(w * v for w, v in zip(want, row)), rel=1e-5)

        # the integer hash behind relobralo's random lookback, in generated code
        params = {"expected_rho": 0.5, "alpha": 0.7}
        eager, crit = compile_balance("relobralo", **params), compile_balance("relobralo", **params)
        compiled = torch.compile(crit, fullgraph=True)
        for row in rows:
            want, got = eager(torch.tensor(row)), compiled(torch.tensor(row))
            assert torch.allclose(got, want, rtol=1e-5)
            assert torch.allclose(_weights(crit), _weights(eager), rtol=1e-5)
        assert torch.equal(crit.balancers[0].rng_counter, eager.balancers[0].rng_counter)


def test_the_balancer_module_alone():
    b = Balancer(BALANCER_METHODS["cov"], 2, {"eps": 1e-8})
    for row in ([1.0, 2.0], [3.0, 1.0]):
        _, weights = b([torch.tensor(row[0]), torch.tensor(row[1])])
    # still in the first two steps: alpha = 1/2, weight = alpha / running mean
    assert weights.tolist() == pytest.approx([0.5 / 2.0, 0.5 / 1.5], rel=1e-6)


# --- two tasks of very different scale -----------------------------------------------------


def _two_task_ratio(source: str) -> float:
    """Train a shared linear model on two regression tasks; return the ratio of the weighted
    terms ``big / small``, averaged over the last 50 steps."""
    torch.manual_seed(0)
    n, d = 256, 8
    x = torch.randn(n, d)
    w1, w2 = torch.randn(d, 1), torch.randn(d, 1)
    y1 = x @ w1 + 0.3 * torch.randn(n, 1)
    y2 = 100 * (x @ w2 + 0.3 * torch.randn(n, 1))  # task 2: targets scaled by 100
    model = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Linear(16, 2))  # shared trunk
    crit = lossdsl.compile(source)
    groups = [{"params": model.parameters(), "lr": 0.03}]
    if list(crit.parameters()):  # the log-variances: a faster, shorter-memory group
        groups.append({"params": crit.parameters(), "lr": 0.1, "betas": (0.9, 0.9)})
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
    weighted = []
    for _ in range(300):
        out = model(x)
        loss = crit(task1=out[:, :1], y1=y1, task2=out[:, 1:], y2=y2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        weighted.append([float(crit.weights[k] * crit.terms[k]) for k in ("small", "big")])
    small, big = (statistics.fmean(col) for col in zip(*weighted[-50:]))
    return big / small


def test_uncertainty_evens_out_tasks_of_different_scale():
    terms = "small = mse(pred=task1, target=y1)\nbig = mse(pred=task2, target=y2)\n"
    fixed = _two_task_ratio(terms + "0.5*small + 0.5*big")
    balanced = _two_task_ratio(terms + 'balance(small, big, method="uncertainty")')
    # fixed weights: the big task's term ends ~100^2 times the small one's (noise 30^2 vs 0.3^2);
    # uncertainty drives each 0.5 exp(-s_i) L_i towards 0.5 (its optimum in s_i): ratio -> 1
    assert fixed > 1000
    assert 0.5 < balanced < 2.0


# --- errors in the text --------------------------------------------------------------------


def _caret_column(err: lossdsl.LossDSLError) -> int:
    lines = str(err).splitlines()
    caret = next(line for line in lines if line.strip() and set(line.strip()) == {"^"})
    return len(caret) - len(caret.lstrip()) - 2  # the source line is indented by two spaces


@pytest.mark.parametrize(
    "source,error,at",
    [
        ('balance(mse, method="ema")', lossdsl.LossArgumentError, "balance("),
        ('balance(mse, mae, method="emma")', lossdsl.LossArgumentError, 'method="emma"'),
        ('balance(mse, mae, method="ema", beta=1.5)', lossdsl.LossArgumentError, "beta=1.5"),
        ('balance(mse, mae, method="dwa", window=0)', lossdsl.LossArgumentError, "window=0"),
        ('balance(mse, mae, method="dwa", beta=0.5)', lossdsl.LossArgumentError, "beta=0.5"),
        ('balance(mse, mae, method="relobralo", expected_rho=2)', lossdsl.LossArgumentError, "expected_rho=2"),
        ("balance(mse, mae)", lossdsl.LossArgumentError, "balance("),
        ('balance(mse, 0.5, method="ema")', lossdsl.LossTypeError, "0.5"),
    ],
)
def test_bad_balance_calls_point_at_the_problem(source, error, at):
    with pytest.raises(error) as info:
        lossdsl.compile(source)
    assert _caret_column(info.value) == source.index(at)
    assert info.value.hint


def test_balance_of_real_terms_matches_hand_written_loss():
    pred, target = torch.randn(5, 4), torch.randn(5, 4)
    crit = lossdsl.compile('balance(mse, mae, method="ema", beta=0.5)')
    total = crit(pred, target)
    mse, mae = F.mse_loss(pred, target), F.l1_loss(pred, target)
    assert float(total) == pytest.approx(float(mse / (mse + 1e-8) + mae / (mae + 1e-8)), rel=1e-6)


def _weights(crit):
    """The effective weights of the loss's last call, as one tensor."""
    return torch.stack(list(crit.weights.values()))
