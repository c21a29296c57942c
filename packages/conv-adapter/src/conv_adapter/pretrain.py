"""Source-domain pre-training for the embedded default, cached and keyed by its config.

The embedded default needs a *pretrained* ConvNet without downloads: :func:`pretrained_state` trains
the backbone on one synthetic domain (``shapes-a`` by default) and stores the weights in
``<cache_dir>/conv-adapter/<hash of the pre-training config>.pt`` (written atomically with
:func:`shared.runtime.save_checkpoint`). Any later run with the same config reuses the file; changing
any field (domain, size, epochs, ...) gives a new key. The transfer run then adapts this backbone to a
*different* synthetic domain (other classes, appearance).

Pre-training runs inside ``torch.random.fork_rng`` so that a cache hit and a cache miss leave the
caller's random state identical (the transfer run is reproducible either way). The key also holds
:data:`PRETRAIN_VERSION`, raised whenever :func:`train_source` changes, so that a cache written by other
pre-training code is never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.data import MAX_CLASSES, generate
from shared.errors import CheckpointError, check_choice, check_range
from shared.runtime import barrier, is_main_process, load_checkpoint, make_generator, save_checkpoint, versions

from .data import list_synthetic_domains, synthetic_domain
from .models import create_backbone

log = logging.getLogger("conv_adapter")
KEYS = ("arch", "domain", "num_classes", "n_train", "n_test", "image_size", "epochs", "batch_size", "lr",
        "weight_decay", "seed")
PRETRAIN_VERSION = 2  # raise when train_source changes: older cache files then miss


def check_pretrain(p: Any) -> None:
    """Validate a ``model.pretrain`` block (one-line :class:`~shared.errors.ConfigError`)."""
    check_choice("model.pretrain.domain", p.domain, list_synthetic_domains())
    check_range("model.pretrain.num_classes", p.num_classes, 2, MAX_CLASSES, integer=True)
    check_range("model.pretrain.n_train", p.n_train, p.num_classes, integer=True)
    check_range("model.pretrain.n_test", p.n_test, 1, integer=True)
    check_range("model.pretrain.image_size", p.image_size, 8, integer=True)
    check_range("model.pretrain.epochs", p.epochs, 1, integer=True)
    check_range("model.pretrain.batch_size", p.batch_size, 1, integer=True)
    check_range("model.pretrain.lr", p.lr, 0, lo_inclusive=False)
    check_range("model.pretrain.weight_decay", p.weight_decay, 0)
    check_range("model.pretrain.seed", p.seed, 0, integer=True)


def pretrain_key(pcfg: dict[str, Any]) -> str:
    canonical = json.dumps({"version": PRETRAIN_VERSION, **{k: pcfg[k] for k in KEYS}}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def cache_path(pcfg: dict[str, Any], cache_dir: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(cache_dir))) / "conv-adapter" / f"{pretrain_key(pcfg)}.pt"


def _tensors(domain: str, num_classes: int, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = generate(n, num_classes, size, synthetic_domain(domain), seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255), torch.from_numpy(labels)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return 100.0 * correct / len(x)


def train_source(pcfg: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Full training on the source domain: AdamW + per-step cosine schedule, random horizontal flips."""
    torch.manual_seed(pcfg["seed"])
    x, y = _tensors(pcfg["domain"], pcfg["num_classes"], pcfg["n_train"], pcfg["image_size"], pcfg["seed"])
    xt, yt = _tensors(pcfg["domain"], pcfg["num_classes"], pcfg["n_test"], pcfg["image_size"], pcfg["seed"] + 1)
    model = create_backbone(pcfg["arch"], num_classes=pcfg["num_classes"])
    opt = torch.optim.AdamW(model.parameters(), lr=pcfg["lr"], weight_decay=pcfg["weight_decay"])
    bs = pcfg["batch_size"]
    total = pcfg["epochs"] * math.ceil(len(x) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = make_generator(pcfg["seed"])
    t0 = time.perf_counter()
    for epoch in range(pcfg["epochs"]):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("source pre-training epoch %d/%d loss %.3f (%.0fs)", epoch + 1, pcfg["epochs"], loss.item(),
                 time.perf_counter() - t0)
    metrics = {"source_test_acc": accuracy(model, xt, yt), "seconds": time.perf_counter() - t0}
    return model.state_dict(), metrics


def pretrained_state(pcfg: dict[str, Any], cache_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The source-domain weights for ``pcfg``: from the cache, or trained now and cached. Under DDP rank 0
    trains and writes while the other ranks wait, then every rank reads the file."""
    path = cache_path(pcfg, cache_dir)
    if not path.is_file() and is_main_process():
        log.info("pre-training %s on synthetic domain %s (cache miss: %s)", pcfg["arch"], pcfg["domain"], path)
        with torch.random.fork_rng(devices=[]):
            state, metrics = train_source(pcfg)
        save_checkpoint({"model": state, "config": {k: pcfg[k] for k in KEYS}, "metrics": metrics,
                         "version": PRETRAIN_VERSION, "versions": versions()}, path)
        log.info("source-domain test accuracy %.2f%% after %.0fs; cached at %s", metrics["source_test_acc"],
                 metrics["seconds"], path)
    barrier()
    ckpt = load_checkpoint(path)
    if any(ckpt["config"].get(k) != pcfg[k] for k in KEYS) or ckpt.get("version") != PRETRAIN_VERSION:
        raise CheckpointError(f"cached pre-training {path} was made with another config or code version; delete it")
    return ckpt["model"], ckpt["metrics"]
