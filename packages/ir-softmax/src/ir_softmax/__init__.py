"""IR-Softmax (Zhu et al., ACCV 2020): class centres of normalised features as classifier weights.

Heads (``loss = head(embeddings, labels)``): softmax, NormFace, A-Softmax, AM-Softmax, ArcFace, combined margin,
and their IR variants (``ir_*``) whose class vectors are centres updated by the paper's rule or its
alternatives. Backbones, evaluation protocols (LFW 10-fold, TAR@FAR, ROC, Market-1501 CMC/mAP, MegaFace-style
identification with distractors) and readers (CASIA-WebFace, LFW pairs.txt, Market-1501, MNIST idx).
"""

from .evaluation import (
    best_threshold,
    identification_with_distractors,
    pool_queries,
    reid_cmc_map,
    roc_curve,
    tar_at_far,
    verification_10fold,
)
from .heads import (
    CENTER_UPDATES,
    CombinedMargin,
    CosineMargin,
    MarginHead,
    SoftmaxHead,
    SphereMargin,
    build_head,
    centre_term,
    class_centres,
    list_heads,
    update_centres,
)
from .models import create_backbone, list_backbones

__all__ = [
    "CENTER_UPDATES",
    "CombinedMargin",
    "CosineMargin",
    "MarginHead",
    "SoftmaxHead",
    "SphereMargin",
    "best_threshold",
    "build_head",
    "centre_term",
    "class_centres",
    "create_backbone",
    "identification_with_distractors",
    "list_backbones",
    "list_heads",
    "pool_queries",
    "reid_cmc_map",
    "roc_curve",
    "tar_at_far",
    "update_centres",
    "verification_10fold",
]
