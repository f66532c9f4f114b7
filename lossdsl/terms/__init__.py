"""The built-in term catalogue (DESIGN.md §5), grouped by family.

Importing this package registers every term with :data:`lossdsl.registry`:
``regression`` (mse, mae/l1, huber, smooth_l1, adaptive_huber, log_cosh, quantile,
charbonnier), ``sequence`` (temporal_diff, tv), ``classification`` (bce, bce_logits,
cross_entropy, focal, focal_ce, dice), ``distribution`` (kl_div, vae_kl, gaussian_nll,
poisson_nll), ``ranking`` (margin_ranking, pairwise_ranking, triplet, cosine_distance) and
``regularisation`` (out_of_bounds, l2_reg); and the second table: ``keras`` (hinge,
squared_hinge, categorical_hinge, mape, msle), ``overlap`` (tversky, focal_tversky, jaccard),
``boxes`` (giou, diou, ciou), ``contrastive`` (info_nce, nt_xent), ``image`` (ssim,
feature_distance), ``distill`` (distill_kl) and ``ctc``.
"""

from . import (  # noqa: F401  (registration on import)
    classification,
    distribution,
    ranking,
    regression,
    regularisation,
    sequence,
)
from . import boxes  # noqa: F401
from . import contrastive  # noqa: F401
from . import ctc  # noqa: F401
from . import distill  # noqa: F401
from . import image  # noqa: F401
from . import keras  # noqa: F401
from . import overlap  # noqa: F401
