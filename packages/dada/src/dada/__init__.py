"""DADA: Differentiable Automatic Data Augmentation (Li, Hu, Wang, Hospedales, Robertson, Yang;
ECCV 2020), reimplemented: the 15 operations as batched tensor ops, the Gumbel-softmax / RELAX
policy search with a one-step unrolled bi-level update, and the found (or a published) policy
as a torchvision v2 transform."""

from .models import count_parameters, create_model, list_models
from .ops import IDENTITY_AT_HALF, OPS, RANGES, apply_op, level_to_value
from .policy import SUBPOLICIES, DADAAugment, DADAPolicy, Policy, apply_policy, apply_slots, preset, random_policy
from .search import AugmentParameters, RelaxTerms, SearchConfig, SearchStep, draw_noise, relax, straight_through

__all__ = [
    "IDENTITY_AT_HALF", "OPS", "RANGES", "SUBPOLICIES", "AugmentParameters", "DADAAugment", "DADAPolicy", "Policy",
    "RelaxTerms", "SearchConfig", "SearchStep", "apply_op", "apply_policy", "apply_slots", "count_parameters",
    "create_model", "draw_noise", "level_to_value", "list_models", "preset", "random_policy", "relax",
    "straight_through",
]
