"""A Hydra config instantiates a loss with the real hydra-core: ``_target_: lossdsl.compile``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

hydra_utils = pytest.importorskip("hydra.utils")
omegaconf = pytest.importorskip("omegaconf")

import lossdsl  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "configs" / "hydra_loss.yaml"


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 6, 3, generator=g) * 2, torch.randn(2, 6, 3, generator=g)


def temporal_diff(pred, target):
    e = pred - target
    return (e[:, 1:] - e[:, :-1]).abs().mean()


def test_instantiate_compile_from_an_omegaconf_config(inputs):
    cfg = omegaconf.OmegaConf.create(
        {"_target_": "lossdsl.compile", "source": "0.7*huber(delta=1) + 0.3*mae", "nonfinite": "warn"}
    )
    crit = hydra_utils.instantiate(cfg)
    assert isinstance(crit, lossdsl.Loss) and crit.nonfinite == "warn"
    pred, target = inputs
    expected = 0.7 * F.huber_loss(pred, target, delta=1.0) + 0.3 * F.l1_loss(pred, target)
    torch.testing.assert_close(crit(pred, target), expected)


def test_the_example_hydra_file(inputs):
    cfg = omegaconf.OmegaConf.load(EXAMPLE)
    pred, target = inputs
    crit = hydra_utils.instantiate(cfg.loss)
    assert crit.term_names == ["recon", "smooth", "mse"]
    expected = 0.7 * F.huber_loss(pred, target, delta=1.0) + 0.3 * temporal_diff(pred, target)
    torch.testing.assert_close(crit(pred, target), expected)
    # from_config receives the nested DictConfig as it is
    crit = hydra_utils.instantiate(cfg.loss_from_config)
    assert crit.strict is False
    torch.testing.assert_close(crit(pred, target, unused=1), expected)


def test_an_error_keeps_its_caret_through_instantiate():
    cfg = omegaconf.OmegaConf.create({"_target_": "lossdsl.compile", "source": "0.7*hubr + mae"})
    with pytest.raises(Exception) as info:
        hydra_utils.instantiate(cfg)
    text = str(info.value)
    assert "unknown loss term 'hubr'" in text and "did you mean 'huber'?" in text
    assert "      ^^^^" in text
