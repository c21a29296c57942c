"""Semantic alignment for facial landmarks (Liu et al., CVPR 2019): latent-GT search + GHCU.

Public API:
    build_model, list_models, build_ghcu        stacked hourglass registry and the GHCU
    SearchConfig, latent_search, chi2_distance  the latent ground-truth search (E-step; Workspace: its buffers)
    gaussian_heatmaps, decode                   heatmap targets and decoding
    AmbiguityConfig, simulate_annotations       the semantic-ambiguity (annotator) simulator
    nme, auc, failure_rate, ced                 metrics (see landmark_ambiguity.metrics)
    read_pts, write_pts, read_300w, read_aflw, read_300vw   dataset readers
    fit                                         training entry (landmark_ambiguity.train)
"""

from .ambiguity import AmbiguityConfig, simulate_annotations, tangents, weak_mask
from .data import read_300vw, read_300w, read_aflw, read_pts, write_pts
from .heatmaps import decode, gaussian_heatmaps, to_heatmap, to_image
from .metrics import auc, ced, failure_rate, nme
from .model import GHCU, StackedHourglass, build_ghcu, build_model, list_models
from .search import SearchConfig, Workspace, chi2_distance, expected_patch, latent_search


def fit(cfg, out_dir):
    from .train import fit as _fit

    return _fit(cfg, out_dir)


__all__ = [name for name in dir() if not name.startswith("_")]
