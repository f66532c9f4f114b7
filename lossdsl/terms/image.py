"""Image terms (DESIGN.md §5, second table): ssim and feature_distance.

``ssim`` is 1 - SSIM (Wang et al. 2004) with a gaussian window and valid convolution, as
pytorch-msssim computes it. ``feature_distance`` compares pred and target through a network
the caller passes in (``net``): the perceptual losses of image restoration, with whatever
network and layers the user picks.
"""

from __future__ import annotations

import math
from typing import Annotated, Mapping

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le
from pydantic import AfterValidator
from torch import Tensor

from ..errors import LossInputError
from ._common import Stabiliser, as_tensor_param, autocast_off, check_same_shape, reduce, safe_pow, upcast

__all__ = ["ssim", "feature_distance"]

MAX_WINDOW = 255  # a window is a few hundred numbers; a larger one is a typo, not a setting


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"window must be odd, so the gaussian has a centre pixel; got {value}")
    return value


Window = Annotated[int, Ge(1), Le(MAX_WINDOW), AfterValidator(_odd)]
Positive = Annotated[float, Gt(0)]


def _gaussian(window: int, sigma: float) -> tuple[float, ...]:
    """The normalised 1-d gaussian window, computed once on the host in double precision."""
    half = window // 2
    # (x / sigma) squared by a product: ** would raise OverflowError for a tiny sigma
    g = [math.exp(-0.5 * (x / sigma) * (x / sigma)) for x in range(-half, half + 1)]
    total = math.fsum(g)
    return tuple(v / total for v in g)


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Valid (unpadded) separable gaussian filter of every channel of ``x`` (N, K, H, W)."""
    k, n = x.shape[1], g.numel()
    x = F.conv2d(x, g.view(1, 1, n, 1).expand(k, 1, n, 1), groups=k)
    return F.conv2d(x, g.view(1, 1, 1, n).expand(k, 1, 1, n), groups=k)


def _ssim_map(x: Tensor, y: Tensor, g: Tensor, c1: float, c2: float) -> Tensor:
    # SSIM's variances are E[x^2] - E[x]^2, a difference that loses float32 digits when the
    # image sits far from 0; subtracting a per-channel constant first changes no statistic
    # but the means, which are restored
    shift = (0.5 * (x.mean((2, 3), keepdim=True) + y.mean((2, 3), keepdim=True))).detach()
    xs, ys = x - shift, y - shift
    channels = x.shape[1]
    if channels == 0:  # nothing to compare (and a grouped convolution refuses 0 groups)
        n = g.numel()
        return (x + y)[:, :, n - 1 :, n - 1 :]
    blurred = _blur(torch.cat([xs, ys, xs * xs, ys * ys, xs * ys], dim=1), g)
    mx, my, exx, eyy, exy = blurred.split(channels, dim=1)
    # variances are >= 0; rounding can leave -1e-9, which must not cancel c2 in a denominator
    var_x = (exx - mx * mx).clamp_min(0.0)
    var_y = (eyy - my * my).clamp_min(0.0)
    cov = exy - mx * my
    mx, my = mx + shift, my + shift
    luminance = (2.0 * mx * my + c1) / (mx * mx + my * my + c1)
    structure = (2.0 * cov + c2) / (var_x + var_y + c2)
    return luminance * structure


def ssim(
    pred: Tensor, target: Tensor,
    *, window: Window = 11, sigma: Positive = 1.5, data_range: Positive = 1.0,
    k1: Stabiliser = 0.01, k2: Stabiliser = 0.03,
) -> Tensor:
    """SSIM loss: 1 - SSIM of images (N, C, H, W), gaussian window, valid convolution.

    SSIM = (2 mu_p mu_t + C1)(2 cov + C2) / ((mu_p^2 + mu_t^2 + C1)(var_p + var_t + C2)),
    C1 = (k1 data_range)^2, C2 = (k2 data_range)^2, the local statistics taken with a gaussian
    window (``window`` pixels, odd, ``sigma``) without padding, and averaged over the map, the
    channels and the batch (Wang et al. 2004; pytorch-msssim's ``ssim``). ``data_range`` is
    the span of the pixel values (1 for [0, 1], 255 for 8-bit). H and W must be at least
    ``window``. An empty batch (N = 0) gives 0, the mean of 1 - SSIM over no pixels, as
    every term's empty batch does. Example: ``0.84*ssim + 0.16*l1`` (Zhao et al. 2017).
    """
    check_same_shape(pred, target)
    if pred.dim() != 4:
        raise LossInputError(
            f"ssim needs images of shape (N, C, H, W), got {tuple(pred.shape)}",
            hint="add the missing axes, e.g. pred[:, None] for one-channel images",
        )
    if min(pred.shape[2], pred.shape[3]) < window:
        raise LossInputError(
            f"ssim's window is {window} pixels, larger than the images {tuple(pred.shape[2:])}",
            hint="use a smaller window= (odd), or larger images",
        )
    x, y = upcast(pred, target)
    y = y.to(x.dtype)
    g = as_tensor_param(_gaussian(window, sigma), x, "window")
    with autocast_off(x):  # the window sums of squares need float32, not autocast's bfloat16
        value = _ssim_map(x, y, g, (k1 * data_range) ** 2, (k2 * data_range) ** 2)
    if value.numel() == 0:  # shape metadata, no device work; 1 - (mean of nothing) would be 1 or NaN
        return value.sum().to(pred.dtype)
    return (1.0 - value.mean()).to(pred.dtype)


def _features(out, which: str) -> list[Tensor]:
    if isinstance(out, Tensor):
        out = [out]
    if isinstance(out, Mapping):  # torchvision's feature extractors return {name: tensor}
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out and all(isinstance(o, Tensor) for o in out):
        out = list(out)
        wrong = next((o.dtype for o in out if not o.is_floating_point()), None)
        if wrong is None:
            return out
        raise LossInputError(
            f"net({which}) returned {wrong} features; a distance needs floating-point ones",
            hint="net must give floating-point features (a rounding or an argmax inside it has no gradient)",
        )
    raise LossInputError(
        f"net({which}) returned {type(out).__name__}, not a tensor or a list of tensors",
        hint="net must map an input to one feature tensor, or a list (or dict) of them",
    )


def feature_distance(pred: Tensor, target: Tensor, net, *, p: Positive = 1.0) -> Tensor:
    """Feature distance: mean over the outputs k of net of mean(abs(f_k(pred) - f_k(target))^p).

    ``net`` is any module (or function) the call passes in, returning one tensor or a list
    (or dict) of tensors: the layers of a perceptual loss. net(target) runs without
    gradient; net(pred) is differentiated, so freeze the network's parameters
    (``net.requires_grad_(False)``) unless it should learn from this term. The network runs
    in the inputs' dtype; the differences are taken in float32 for half inputs. An empty
    batch gives 0.
    Example: ``l1 + 0.1*feature_distance(p=1)``, called as ``crit(pred, target, net=vgg)``.
    """
    check_same_shape(pred, target)
    if not callable(net):
        raise LossInputError(
            f"input 'net' must be a module or a function, got {type(net).__name__}",
            hint="pass the feature network: crit(pred, target, net=features)",
        )
    from_pred = _features(net(pred), "pred")
    with torch.no_grad():
        from_target = _features(net(target), "target")
    shapes = [tuple(f.shape) for f in from_pred], [tuple(f.shape) for f in from_target]
    if shapes[0] != shapes[1]:
        raise LossInputError(
            f"net gave features of shapes {shapes[0]} for pred but {shapes[1]} for target",
            hint="net must give the same outputs for inputs of one shape",
        )
    total = 0.0
    for a, b in zip(from_pred, from_target):
        fa, fb = upcast(a, b)
        total = total + reduce(safe_pow((fa - fb.to(fa.dtype)).abs(), p))
    return (total / len(from_pred)).to(pred.dtype)
