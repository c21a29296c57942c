"""CRSSC: certainty-based reusable sample selection and correction (Sun et al., "Salvage Reusable Samples from
Noisy Data for Robust Learning", ACM MM 2020), with baselines and a cleanlab-shaped label audit.

    from crssc import crssc_loss, PredictionMemory, ls_cross_entropy, find_label_issues, audit_labels, create_model
"""

from .audit import LabelAudit, audit_labels, find_label_issues
from .baselines import confident_joint, coteaching_loss, cot_crssc_loss, forget_rate_schedule, prune_by_noise_rate
from .method import (
    CRSSCStep,
    Partition,
    PredictionMemory,
    certainty_score,
    crssc_loss,
    ls_cross_entropy,
    select_partition,
    smoothed_targets,
)
from .models import BilinearCNN, bilinear_pool, create_model, list_models, signed_sqrt

__all__ = [
    "BilinearCNN",
    "CRSSCStep",
    "LabelAudit",
    "Partition",
    "PredictionMemory",
    "audit_labels",
    "bilinear_pool",
    "certainty_score",
    "confident_joint",
    "cot_crssc_loss",
    "coteaching_loss",
    "create_model",
    "crssc_loss",
    "find_label_issues",
    "forget_rate_schedule",
    "list_models",
    "ls_cross_entropy",
    "prune_by_noise_rate",
    "select_partition",
    "signed_sqrt",
    "smoothed_targets",
]
