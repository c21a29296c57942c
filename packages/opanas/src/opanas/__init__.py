"""OPANAS: one-shot path-aggregation network architecture search (Liang et al., CVPR 2021).

Public API:

* architecture codes: :data:`OPS`, :data:`OFFICIAL_ARCH`, :func:`parse_arch`, :func:`arch_to_str`,
  :func:`random_arch`, :func:`is_degenerate`, :data:`SEARCH_SPACE_SIZE`;
* the neck: :class:`OPANASNeck` (super-net with ``arch=None``, sub-net otherwise), :func:`extract_subnet`,
  the six paths, :class:`PAFPN`, :func:`build_neck` (``opanas`` | ``fpn`` | ``pafpn``);
* deformable conv: :func:`deform_conv2d` (fastest correct path per device), :class:`DeformConv`;
* detectors: :func:`build_detector` (torchvision Faster R-CNN / RetinaNet), :func:`list_models`;
* search: :func:`evolution_search`, :class:`EvolutionConfig`;
* training: :func:`opanas.train.fit`.
"""

from opanas.arch import (
    NUM_EDGES,
    NUM_NODES,
    OFFICIAL_ARCH,
    OFFICIAL_ARCH_STR,
    OPS,
    SEARCH_SPACE_SIZE,
    arch_to_str,
    is_degenerate,
    parse_arch,
    random_arch,
)
from opanas.dcn import DeformConv, deform_conv2d, deform_conv2d_grid_sample
from opanas.detector import BackboneWithNeck, TinyBackbone, build_detector, list_models, supernet_of
from opanas.neck import (
    PAFPN,
    BottomUp,
    FusingSplitting,
    NoneOp,
    OPANASNeck,
    ScaleEqualizing,
    Skip,
    TopDown,
    build_neck,
    extract_subnet,
)
from opanas.search import EvolutionConfig, SearchResult, evolution_search

__all__ = [n for n in dir() if not n.startswith("_")]
