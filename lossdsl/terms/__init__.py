"""The built-in term catalogue (DESIGN.md §5): plain torch functions, grouped by family.

``regression`` (mse, mae/l1, huber, smooth_l1, adaptive_huber, log_cosh, quantile,
charbonnier), ``sequence`` (temporal_diff, tv; ctc), ``classification`` (bce, bce_logits,
cross_entropy, focal, focal_ce, dice; tversky, focal_tversky, jaccard), ``distribution``
(kl_div, vae_kl, gaussian_nll, poisson_nll; distill_kl), ``ranking`` (margin_ranking,
pairwise_ranking, triplet, cosine_distance), ``regularisation`` (out_of_bounds, l2_reg),
``keras`` (hinge, squared_hinge, categorical_hinge, mape, msle), ``boxes`` (giou, diou,
ciou), ``contrastive`` (info_nce, nt_xent) and ``image`` (ssim, feature_distance); the names
after a semicolon are of the second table. This package imports only torch, the
error types and its own modules; the language's registry reads :data:`CATALOGUE`.

>>> CATALOGUE["l1"] is CATALOGUE["mae"]
True
"""

from . import boxes, classification, contrastive, distribution, image, keras, ranking, regression, regularisation, sequence

__all__ = ["CATALOGUE"]

_FAMILIES = (regression, sequence, classification, distribution, ranking, regularisation, keras, boxes, contrastive, image)

# name -> function; a second name for one function is an alias (`l1` for `mae`)
CATALOGUE = {name: getattr(module, name) for module in _FAMILIES for name in module.__all__}
CATALOGUE["l1"] = regression.mae
