"""suggest_weights (DESIGN.md §7): the suggested program, compiled, gives the terms the asked
shares, measured with term values and gradients computed by hand in the tests."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.tools.suggest import suggest_from_log


def factors(source: str) -> dict[str, float]:
    """``a*name`` factors of a flat linear program, read from the text by the test itself."""
    return {name: float(w) for w, name in re.findall(r"([0-9.eE+-]+)\*([a-z_0-9]+)", source)}


def batches(n, seed, scale=800.0, shape=(32, 32)):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape, generator=gen) * scale, torch.randn(shape, generator=gen) * scale) for _ in range(n)
    ]


def test_thousandfold_magnitudes_get_equal_shares():
    crit = lossdsl.compile("mse + mae")
    train = batches(20, seed=0)
    for pred, target in train:
        crit(pred, target)
    mse = sum(F.mse_loss(p, t).item() for p, t in train)
    mae = sum(F.l1_loss(p, t).item() for p, t in train)
    assert mse / mae > 900  # the premise: magnitudes 1000x apart

    suggestion = crit.monitor.suggest_weights()
    balanced = lossdsl.compile(suggestion.source)
    w = factors(suggestion.source)
    assert w == pytest.approx(suggestion.weights, rel=1e-3)
    shares = []
    for pred, target in batches(20, seed=1):  # fresh data from the same distribution
        a, b = F.mse_loss(pred, target).item(), F.l1_loss(pred, target).item()
        assert balanced(pred, target).item() == pytest.approx(w["mse"] * a + w["mae"] * b, rel=1e-4)
        shares.append(w["mse"] * a / (w["mse"] * a + w["mae"] * b))
    mean_share = sum(shares) / len(shares)
    assert abs(mean_share - 0.5) <= 0.05 * 0.5


def test_probed_suggestion_equalises_gradient_norms():
    crit = lossdsl.compile("mse + 0.5*mae")
    crit.monitor.probe(every=1)
    for pred, target in batches(10, seed=2, scale=50.0):
        crit(pred.requires_grad_(), target)
    w = factors(crit.monitor.suggest_weights().source)
    norms = {"mse": [], "mae": []}
    for pred, target in batches(10, seed=3, scale=50.0):
        p = pred.requires_grad_()
        for name, fn in (("mse", F.mse_loss), ("mae", F.l1_loss)):
            (g,) = torch.autograd.grad(w[name] * fn(p, target), p)
            norms[name].append(g.norm().item())
    share = sum(norms["mse"]) / (sum(norms["mse"]) + sum(norms["mae"]))
    assert abs(share - 0.5) <= 0.05 * 0.5


SOURCE = """# reconstruction terms
recon = huber(delta=1)   # robust to outliers
0.7*recon + mae/4 +
    2*0.5*mse + watch(l1)  # l1 is only watched
"""


def test_rewrite_keeps_comments_layout_and_hits_target_shares():
    gen = torch.Generator().manual_seed(4)
    pred, target = torch.randn(64, generator=gen) * 3, torch.randn(64, generator=gen)
    raw = {
        "recon": F.huber_loss(pred, target, delta=1.0).item(),
        "mae": F.l1_loss(pred, target).item(),
        "mse": F.mse_loss(pred, target).item(),
    }
    crit = lossdsl.compile(SOURCE)
    crit(pred, target)
    target_shares = {"recon": 0.5, "mae": 0.3, "mse": 0.2}
    suggestion = crit.monitor.suggest_weights(target=target_shares)
    new = suggestion.source
    lines, old_lines = new.splitlines(), SOURCE.splitlines()
    assert len(lines) == len(old_lines)
    assert lines[0] == old_lines[0] and lines[1] == old_lines[1]
    assert lines[3].endswith("+ watch(l1)  # l1 is only watched")
    assert re.fullmatch(r"[0-9.]+\*recon \+ mae/[0-9.]+ \+", lines[2])  # factors replaced in place
    assert re.fullmatch(r"    [0-9.]+\*0\.5\*mse \+ watch\(l1\)  # l1 is only watched", lines[3])

    # the new program's total, written out from the numbers in its text
    w_recon = float(re.match(r"([0-9.]+)\*recon", lines[2]).group(1))
    div = float(re.search(r"mae/([0-9.]+)", lines[2]).group(1))
    w_mse = float(re.match(r"    ([0-9.]+)\*", lines[3]).group(1)) * 0.5
    weights = {"recon": w_recon, "mae": 1 / div, "mse": w_mse}
    balanced = lossdsl.compile(new)
    total = sum(weights[n] * raw[n] for n in raw)
    assert balanced(pred, target).item() == pytest.approx(total, rel=1e-5)
    for name in raw:
        assert weights[name] * raw[name] / total == pytest.approx(target_shares[name], rel=2e-3)
        assert suggestion.weights[name] == pytest.approx(weights[name], rel=1e-3)
    assert suggestion.weights["l1"] == 0.0  # watched: no share, weight unchanged
    # the total magnitude is kept
    assert total == pytest.approx(0.7 * raw["recon"] + raw["mae"] / 4 + raw["mse"], rel=1e-3)


def test_terms_inside_a_composite_binding_are_edited_in_the_binding():
    source = "recon = mse + mae  # inner\n0.5*recon + huber"
    pred, target = torch.linspace(-4, 4, 50), torch.zeros(50)
    crit = lossdsl.compile(source)
    crit(pred, target)
    new = crit.monitor.suggest_weights().source
    first, second = new.splitlines()
    assert first.endswith("  # inner") and second.startswith("0.5*recon + ")
    m = re.fullmatch(r"recon = ([0-9.]+)\*mse \+ ([0-9.]+)\*mae  # inner", first)
    h = re.fullmatch(r"0\.5\*recon \+ ([0-9.]+)\*huber", second)
    w = {"mse": 0.5 * float(m.group(1)), "mae": 0.5 * float(m.group(2)), "huber": float(h.group(1))}
    raw = {"mse": F.mse_loss(pred, target).item(), "mae": F.l1_loss(pred, target).item(),
           "huber": F.huber_loss(pred, target).item()}
    contributions = [w[n] * raw[n] for n in raw]
    assert lossdsl.compile(new)(pred, target).item() == pytest.approx(sum(contributions), rel=1e-5)
    assert max(contributions) / min(contributions) == pytest.approx(1.0, rel=2e-3)


def test_suggest_from_log_matches_the_monitor(tmp_path):
    path = tmp_path / "run.jsonl"
    crit = lossdsl.compile("mse + 0.1*mae")
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=2)
    pred, target = torch.linspace(-10, 10, 30), torch.zeros(30)
    for _ in range(6):
        crit(pred, target)
    crit.monitor.close()
    assert len(path.read_text().splitlines()) == 3
    for source in ("mse + 0.1*mae", None):
        suggestion = suggest_from_log(path, source)
        raw = {"mse": F.mse_loss(pred, target).item(), "mae": F.l1_loss(pred, target).item()}
        w = suggestion.weights
        assert w["mse"] * raw["mse"] == pytest.approx(w["mae"] * raw["mae"], rel=1e-6)
        assert w["mse"] * raw["mse"] + w["mae"] * raw["mae"] == pytest.approx(raw["mse"] + 0.1 * raw["mae"])
    w = factors(suggest_from_log(path, "mse + 0.1*mae").source)
    assert w["mse"] * raw["mse"] == pytest.approx(w["mae"] * raw["mae"], rel=2e-3)


def test_suggest_from_log_without_source_drops_composites(tmp_path):
    path = tmp_path / "run.jsonl"
    crit = lossdsl.compile("recon = mse + mae\nrecon + 0.2*huber")
    crit.monitor.attach(str(path), every=1)
    pred, target = torch.linspace(-3, 3, 20), torch.zeros(20)
    crit(pred, target)
    crit.monitor.close()
    assert "loss/recon/share" in json.loads(path.read_text())
    assert set(suggest_from_log(path).weights) == {"mse", "mae", "huber"}


def test_unknown_target_name_is_an_error():
    crit = lossdsl.compile("mse + mae")
    crit(torch.zeros(3), torch.ones(3))
    with pytest.raises(lossdsl.LossDSLError, match="msee"):
        crit.monitor.suggest_weights(target={"msee": 1.0})


def test_brackets_negation_and_nonlinear_units():
    source = "-0.5*mae + ((mse))^2 + (0.1+0.2)*huber"
    pred, target = torch.linspace(-4, 4, 50), torch.zeros(50)
    crit = lossdsl.compile(source)
    crit(pred, target)
    new = crit.monitor.suggest_weights().source
    m = re.fullmatch(r"-([0-9.]+)\*mae \+ ([0-9.]+)\*\(\(mse\)\)\^2 \+ ([0-9.]+)\*\(0\.1\+0\.2\)\*huber", new)
    assert m, new
    a, b, c = (float(g) for g in m.groups())
    mae, mse = F.l1_loss(pred, target).item(), F.mse_loss(pred, target).item()
    huber = F.huber_loss(pred, target).item()
    expected = -a * mae + b * mse**2 + c * 0.3 * huber
    assert lossdsl.compile(new)(pred, target).item() == pytest.approx(expected, rel=1e-5)
    # effective weight times value: d/d mse of b*mse^2 is 2*b*mse
    contributions = [a * mae, 2 * b * mse * mse, c * 0.3 * huber]
    assert max(contributions) / min(contributions) == pytest.approx(1.0, rel=2e-3)


def test_a_partial_target_is_a_share_of_the_whole_and_the_rest_is_split_equally():
    source = "0.7*huber(delta=1) + 0.3*temporal_diff + 0.2*mae"
    weights = {"huber": 0.7, "temporal_diff": 0.3, "mae": 0.2}
    crit = lossdsl.compile(source)
    gen = torch.Generator().manual_seed(7)
    data = [(torch.randn(4, 6, 2, generator=gen) * 3, torch.randn(4, 6, 2, generator=gen)) for _ in range(5)]
    raw = {n: [] for n in weights}
    for pred, target in data:
        crit(pred, target)
        raw["huber"].append(F.huber_loss(pred, target, delta=1.0).item())
        d = (pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])
        raw["temporal_diff"].append(d.abs().mean().item())
        raw["mae"].append(F.l1_loss(pred, target).item())
    # the mean weighted magnitude of each term, its share of the whole after the change
    magnitude = {n: weights[n] * sum(v) / len(v) for n, v in raw.items()}
    whole = sum(magnitude.values())
    shares = {"huber": 0.5, "temporal_diff": 0.25, "mae": 0.25}
    suggestion = crit.monitor.suggest_weights(target={"huber": 0.5})
    for name, share in shares.items():
        expected = weights[name] * share * whole / magnitude[name]
        assert suggestion.weights[name] == pytest.approx(expected, rel=1e-6), name
        new = suggestion.weights[name] * magnitude[name] / weights[name]
        assert new / whole == pytest.approx(share, rel=1e-6)
    w = factors(suggestion.source)
    assert w == pytest.approx(suggestion.weights, rel=1e-3)


def test_target_shares_over_the_whole_are_refused():
    crit = lossdsl.compile("mse + mae + huber")
    crit(torch.zeros(3), torch.full((3,), 2.0))
    with pytest.raises(lossdsl.LossDSLError, match="more than the whole") as info:
        crit.monitor.suggest_weights(target={"mse": 0.8, "mae": 0.4})
    assert "ratios" in info.value.hint
    # every term named: ratios
    ratio = crit.monitor.suggest_weights(target={"mse": 3, "mae": 1, "huber": 0}).weights
    mse, mae = 4.0, 2.0  # errors of 2: mse 4, mae 2
    assert ratio["mse"] * mse / (ratio["mae"] * mae) == pytest.approx(3.0, rel=1e-6)
