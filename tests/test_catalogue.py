"""The README's table of terms is lossdsl.tools.catalogue.markdown_table(), and that table lists
every term of DESIGN.md §5 with its inputs, hyperparameters and summary."""

import re
from pathlib import Path

import pytest

import lossdsl
from lossdsl.tools.catalogue import fill_readme, markdown_table, readme_block

README = Path(__file__).resolve().parent.parent / "README.md"

SECTION_5 = [
    "mse", "mae", "huber", "smooth_l1", "adaptive_huber", "log_cosh", "quantile", "charbonnier",
    "out_of_bounds", "temporal_diff", "tv", "bce", "bce_logits", "cross_entropy", "focal",
    "focal_ce", "dice", "kl_div", "vae_kl", "gaussian_nll", "poisson_nll", "margin_ranking",
    "pairwise_ranking", "triplet", "cosine_distance", "l2_reg",
    # the second table
    "hinge", "squared_hinge", "categorical_hinge", "mape", "msle", "tversky", "focal_tversky",
    "jaccard", "giou", "diou", "ciou", "info_nce", "nt_xent", "ssim", "distill_kl", "ctc",
    "feature_distance",
]


def _rows(table):
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
        assert cells[0] == "" and cells[-1] == "" and len(cells) == 6, line  # four cells
        names = tuple(re.findall(r"`(\w+)`", cells[1]))
        rows[names] = cells[2:5]
    return rows


def test_readme_block_is_the_generated_table():
    text = README.read_text(encoding="utf-8")
    assert readme_block(text) == markdown_table(), (
        "README.md's terms table is out of date: run `python -m lossdsl.tools.catalogue README.md`"
    )


def test_table_lists_every_catalogue_term_once_with_its_alias():
    table = markdown_table()
    assert table.splitlines()[:2] == ["| term | inputs | hyperparameters | summary |", "|---|---|---|---|"]
    rows = _rows(table)
    assert ("mae", "l1") in rows
    listed = [name for names in rows for name in names]
    assert sorted(listed) == sorted(SECTION_5 + ["l1"])


def test_rows_show_inputs_ranges_defaults_and_summary():
    rows = _rows(markdown_table())
    inputs, hyper, summary = rows[("huber",)]
    assert inputs == "pred, target, weight?, mask?"
    assert "`delta: float > 0 = 1.0`" in hyper
    assert summary == lossdsl.registry["huber"].summary
    inputs, hyper, _ = rows[("vae_kl",)]
    assert (inputs, hyper) == ("mu, logvar", r"`reduction: 'mean' \| 'sum' \| 'none' = 'mean'`")
    assert rows[("triplet",)][0] == "anchor, positive, negative"
    assert rows[("l2_reg",)][0] == "model"
    # a '|' inside a cell is escaped so the row keeps four cells
    assert r"`reduction: 'mean' \| 'sum' \| 'none' = 'mean'`" in rows[("mse",)][1]


def test_terms_registered_by_users_stay_out_of_the_builtin_table():
    @lossdsl.term(name="catalogue_probe_term", replace=True)
    def probe(pred, *, k: int = 2):
        """A probe term."""
        return pred.sum()

    try:
        assert "catalogue_probe_term" not in markdown_table()
        only = markdown_table([lossdsl.registry["catalogue_probe_term"]])
        assert only.splitlines()[2] == "| `catalogue_probe_term` | pred | `k: int = 2` | A probe term. |"
    finally:
        lossdsl.registry.unregister("catalogue_probe_term")


def test_fill_readme_replaces_only_the_block():
    text = "# title\n\n<!-- terms:start -->\nold table\n<!-- terms:end -->\n\nafter\n"
    filled = fill_readme(text)
    assert filled.startswith("# title\n\n<!-- terms:start -->\n| term |")
    assert filled.endswith("<!-- terms:end -->\n\nafter\n")
    assert readme_block(filled) == markdown_table()
    with pytest.raises(ValueError):
        readme_block("no markers here")
