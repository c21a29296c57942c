"""Training-step factories for benchmarks (importable, so ``shared.bench.peak_memory`` can build them in a
fresh spawned process): each returns a zero-argument callable that runs one optimiser step."""

from __future__ import annotations

import torch

__all__ = ["full_step", "head_step"]


def full_step(head: str, batch: int = 64, classes: int = 40, size: int = 32, seed: int = 0):
    """One SGD step of the embedded default's model (small CNN + head) on a fixed random batch."""
    from ir_softmax.heads import build_head
    from ir_softmax.models import create_backbone
    from ir_softmax.train import EmbeddingModel, head_options

    torch.manual_seed(seed)
    backbone = create_backbone("small_cnn", embedding_size=64, widths=(16, 32, 64))
    hcfg = {"blend": True} if "asoftmax" in head else {}
    model = EmbeddingModel(backbone, build_head(head, classes, 64, **head_options(hcfg, 1000)), head)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, classes, (batch,))

    def step():
        loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def head_step(head: str, batch: int = 256, dim: int = 512, classes: int = 10575, seed: int = 0):
    """The head alone at CASIA-WebFace scale: loss on fixed features, backward into them, the head's update."""
    from ir_softmax.heads import build_head

    torch.manual_seed(seed)
    h = build_head(head, classes, dim)
    params = list(h.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4) if params else None
    feats = torch.randn(batch, dim, requires_grad=True)
    y = torch.randint(0, classes, (batch,))

    def step():
        loss = h(feats, y)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        feats.grad = None
        loss.backward()
        if opt is not None:
            opt.step()

    return step
