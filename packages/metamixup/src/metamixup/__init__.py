"""MetaMixUp (Mai et al., arXiv 1908.10059 / TNNLS 2021): mixup whose interpolation ratio is meta-learned
online, for supervised and semi-supervised training, with its baselines. Reconstructed (no official code)."""

from .data import build_data, intrusion_rate, make_rings
from .meta import MetaConfig, MetaMixUp, hypergradient
from .mixing import (
    cutmix,
    mix,
    mixed_cross_entropy,
    one_hot,
    pair_index,
    sample_lam,
    soft_cross_entropy,
    torchvision_batch_mix,
)
from .models import MixAt, create_model, list_models, num_stages, register_model
from .ssl import consistency_loss, ema_update, refine_pseudo_labels, sharpen, sigmoid_rampup

__all__ = [
    "MetaConfig", "MetaMixUp", "MixAt", "build_data", "consistency_loss", "create_model", "cutmix", "ema_update",
    "hypergradient", "intrusion_rate", "list_models", "make_rings", "mix", "mixed_cross_entropy", "num_stages",
    "one_hot", "pair_index", "refine_pseudo_labels", "register_model", "sample_lam", "sharpen", "sigmoid_rampup",
    "soft_cross_entropy", "torchvision_batch_mix",
]
