"""Ranking and embedding terms (margin_ranking, pairwise_ranking, triplet, cosine_distance)
against torch.nn.functional or their DESIGN.md §5 formula written out, in float64 through
lossdsl.compile. CASES is shared with test_terms_common.py (see test_terms_regression.py).
"""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _scores(seed=0):
    g = _gen(seed)
    return {
        "pos": torch.randn(8, generator=g, dtype=torch.float64),
        "neg": torch.randn(8, generator=g, dtype=torch.float64),
    }


def _extreme_scores(dtype):
    return {"pos": torch.tensor([1e4, -1e4, 0.0], dtype=dtype), "neg": torch.tensor([-1e4, 1e4, 0.0], dtype=dtype)}


def _lists(seed=0, shape=(3, 6)):
    g = _gen(seed)
    pred = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, shape, generator=g).to(torch.float64)  # graded relevance with ties
    return {"pred": pred, "target": target}


def _extreme_lists(dtype):
    return {
        "pred": torch.tensor([[1e4, -1e4, 0.0, 0.0]], dtype=dtype),
        "target": torch.tensor([[0.0, 1.0, 1.0, 2.0]], dtype=dtype),
    }


def _pairwise_reference(margin, dim=-1):
    # every list, every pair i < j with different targets, one at a time
    def reference(pred, target):
        p = pred.movedim(dim, -1).reshape(-1, pred.shape[dim])
        t = target.movedim(dim, -1).reshape(-1, pred.shape[dim])
        terms = []
        for row_p, row_t in zip(p, t):
            n = len(row_p)
            for i in range(n):
                for j in range(i + 1, n):
                    if row_t[i] != row_t[j]:
                        s = 1.0 if row_t[i] > row_t[j] else -1.0
                        terms.append(torch.relu(margin - s * (row_p[i] - row_p[j])))
        return torch.stack(terms).mean()

    return reference


def _triplets(seed=0):
    g = _gen(seed)
    return {k: torch.randn(5, 4, generator=g, dtype=torch.float64) for k in ("anchor", "positive", "negative")}


def _extreme_triplets(dtype):
    a = torch.tensor([[1e4, 0.0], [1.0, 2.0]], dtype=dtype)
    return {"anchor": a, "positive": a.clone(), "negative": -a}  # identical anchor and positive


def _vectors(seed=0):
    g = _gen(seed)
    return {
        "pred": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "target": torch.randn(4, 3, generator=g, dtype=torch.float64),
    }


def _extreme_vectors(dtype):
    return {
        "pred": torch.tensor([[1e4, -1e4, 1.0], [0.0, 0.0, 0.0]], dtype=dtype),
        "target": torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]], dtype=dtype),
    }


def _cosine_reference(dim):
    def reference(pred, target):
        dot = (pred * target).sum(dim)
        norms = pred.norm(dim=dim) * target.norm(dim=dim)
        return (1 - dot / norms).mean()

    return reference


CASES = {
    "margin_ranking": (
        _scores,
        lambda pos, neg: F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=1.0),
        _extreme_scores,
    ),
    "margin_ranking(margin=0.25)": (
        _scores, lambda pos, neg: torch.relu(0.25 - (pos - neg)).mean(), _extreme_scores,
    ),
    "pairwise_ranking": (_lists, _pairwise_reference(1.0), _extreme_lists),
    "pairwise_ranking(margin=0.3, dim=0)": (
        lambda seed=0: _lists(seed, shape=(5, 2)), _pairwise_reference(0.3, dim=0), _extreme_lists,
    ),
    "triplet": (_triplets, lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative), _extreme_triplets),
    "triplet(margin=0.2)": (
        _triplets,
        lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative, margin=0.2),
        _extreme_triplets,
    ),
    "cosine_distance": (_vectors, _cosine_reference(-1), _extreme_vectors),
    "cosine_distance(dim=0)": (_vectors, _cosine_reference(0), _extreme_vectors),
}


def test_pairwise_ranking_on_a_batch_of_lists_with_more_axes():
    inputs = _lists(1, shape=(2, 3, 7))
    got = lossdsl.compile("pairwise_ranking(margin=0.5, dim=1)")(**inputs)
    torch.testing.assert_close(got, _pairwise_reference(0.5, dim=1)(**inputs), rtol=1e-10, atol=0)


def test_pairwise_ranking_with_no_differing_pair_is_zero():
    pred = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = lossdsl.compile("pairwise_ranking")(pred, torch.ones(2, 4, dtype=torch.float64))
    out.backward()
    assert out.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_pairwise_ranking_is_vectorised_for_long_lists():
    # 64 lists of 200 items: ~1.3 million pairs, which a Python loop could not do quickly
    g = _gen(2)
    pred = torch.randn(64, 200, generator=g, dtype=torch.float64)
    target = torch.randn(64, 200, generator=g, dtype=torch.float64)
    got = lossdsl.compile("pairwise_ranking(margin=0.1)")(pred, target)
    # all targets differ, so the mean runs over every pair i < j: half the full matrix
    dp = pred[:, :, None] - pred[:, None, :]
    sign = torch.sign(target[:, :, None] - target[:, None, :])
    full = torch.relu(0.1 - sign * dp)  # symmetric in (i, j), diagonal = relu(0.1)
    expected = (full.sum() - 64 * 200 * 0.1) / 2 / (64 * 200 * 199 / 2)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    "src, inputs",
    [
        ("margin_ranking", {"pos": torch.zeros(3), "neg": torch.zeros(4)}),
        ("triplet", {"anchor": torch.zeros(2, 3), "positive": torch.zeros(2, 3), "negative": torch.zeros(2, 4)}),
    ],
)
def test_mismatched_embedding_inputs_name_the_term(src, inputs):
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(src)(**inputs)
    assert info.value.term == src and src in str(info.value)
