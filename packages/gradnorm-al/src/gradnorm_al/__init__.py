"""gradnorm-al: active learning by gradient norm (Wang et al., "Boosting Active Learning via Improving
Test Performance", AAAI 2022), with vectorised per-sample gradient norms and the usual baselines.

>>> from gradnorm_al import select, per_sample_grad_norms
>>> idx = select(model, unlabelled_images, budget=100, strategy="entropy_gradnorm")   # doctest: +SKIP
"""

from .data import ArrayData, augment, load_dataset
from .gradnorm import (
    AGGREGATES,
    IMPLS,
    SCORES,
    aggregate_norms,
    entropy_logit_gradient,
    entropy_loss,
    expected_loss,
    ghost_unsupported,
    per_sample_grad_norms,
)
from .models import build_model, list_models, register_model
from .strategies import (
    SelectionContext,
    Strategy,
    embed,
    get_strategy,
    k_center_greedy,
    list_strategies,
    predict_probs,
    register_strategy,
    select,
)

__all__ = [
    "AGGREGATES", "IMPLS", "SCORES", "ArrayData", "SelectionContext", "Strategy", "aggregate_norms", "augment",
    "build_model", "embed", "entropy_logit_gradient", "entropy_loss", "expected_loss", "get_strategy",
    "ghost_unsupported", "k_center_greedy", "list_models", "list_strategies", "load_dataset",
    "per_sample_grad_norms", "predict_probs", "register_model", "register_strategy", "select",
]
