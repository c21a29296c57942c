"""Conv-Adapter (Chen et al., "Conv-Adapter: Exploring Parameter Efficient Transfer Learning for
ConvNets"): the adapter, its four adaptation schemes, a PEFT-shaped API, and the paper's baselines.

Quick start::

    import torchvision
    from conv_adapter import ConvAdapterConfig, inject_adapters, mark_only_adapters_trainable, trainable_report

    model = torchvision.models.resnet50()                   # load your weights first
    inject_adapters(model, ConvAdapterConfig(r"layer\\d\\.\\d+\\.conv2", scheme="conv_parallel", reduction=8))
    mark_only_adapters_trainable(model, extra=("fc.",))
    print(trainable_report(model))
"""

from .adapter import (
    DEFAULT_REDUCTION,
    INITS,
    SCHEMES,
    ConvAdapter,
    ConvAdapterConfig,
    adapter_modules,
    adapter_state_dict,
    closed_form_count,
    count_adapter_parameters,
    disable_adapters,
    inject_adapters,
    load_adapter_state_dict,
    mark_only_adapters_trainable,
    trainable_report,
)
from .models import (
    LinearHead,
    TinyResNet,
    adapter_config,
    add_pool_norm,
    create_backbone,
    default_targets,
    list_models,
    register_model,
    replace_head,
)
from .tuning import METHODS, PadPrompter, apply_method, set_train_mode

__all__ = [
    "DEFAULT_REDUCTION", "add_pool_norm", "INITS", "METHODS", "SCHEMES", "ConvAdapter", "ConvAdapterConfig", "LinearHead", "PadPrompter", "TinyResNet",
    "adapter_config", "adapter_modules", "adapter_state_dict", "apply_method", "closed_form_count",
    "count_adapter_parameters", "create_backbone", "default_targets", "disable_adapters", "inject_adapters",
    "list_models", "load_adapter_state_dict", "mark_only_adapters_trainable", "register_model", "replace_head",
    "set_train_mode", "trainable_report",
]
