"""Training set-ups that several experiments repeat: an MLP trained on a custom loss, in full float32.

:func:`fmlib.zoo.toy_flow` is *the* standard 2-D model of the book (CFM on a toy data set); the recipe here is
for the experiments that compare losses or couplings on the same network, so that a chapter states only what
differs between its runs (the loss and the size) and not the seeding, model construction and configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import models, runtime
from .train import TrainConfig, TrainResult, train

__all__ = ["MLPSize", "train_mlp"]


@dataclass(frozen=True)
class MLPSize:
    """Size and optimizer settings of an MLP run: width ``hidden``, ``depth``, ``steps``, ``batch_size``,
    ``lr``."""

    hidden: int
    depth: int
    steps: int
    batch_size: int
    lr: float


def train_mlp(loss_fn: Callable[[nn.Module, int, torch.Generator], Tensor], *, dim: int, size: MLPSize,
              name: str, key: Mapping[str, Any], steps: int | None = None, seed: int = 0,
              cache: bool = True, progress: bool = True) -> TrainResult:
    """Train (or load) an :class:`fmlib.models.MLP` on ``dim`` coordinates by minimising ``loss_fn``.

    The weights are initialised after ``runtime.seed_everything(seed)`` and the batches drawn from a generator
    seeded by ``seed`` (so two calls that differ only in ``loss_fn`` start from the same network and see the
    same random stream). Training runs in float32 on every device (``amp=False``): the experiments compare
    losses with closed forms, which bf16 autocast would round. ``steps`` overrides ``size.steps``. ``key`` must
    describe what ``loss_fn`` depends on (see :func:`fmlib.train.train`); ``name`` names the cache file.

    Raises:
        ValueError: ``dim`` < 1 (and the errors of :class:`fmlib.train.TrainConfig`).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    runtime.seed_everything(seed)
    net = models.MLP(dim=dim, hidden=size.hidden, depth=size.depth)
    config = TrainConfig(steps=size.steps if steps is None else steps, batch_size=size.batch_size, lr=size.lr,
                         seed=seed, amp=False)
    return train(net, loss_fn, config, name=name, key=dict(key), cache=cache, progress=progress)
