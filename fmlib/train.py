"""One trainer for every chapter: seeded, AdamW, EMA, gradient clipping, tqdm progress, mixed precision on
GPU, and a checkpoint cache.

The cache key is a hash of: the run's ``name``, the model's class and constructor-relevant structure
(``repr(model)`` and parameter shapes), the :class:`TrainConfig`, the caller's ``key`` dict (data set, path,
parametrization, …), the fmlib version and a digest of fmlib's source files. A later chapter asking for
the same run gets the stored weights instead of training again. The cache folder is ``FMLIB_CACHE_DIR``
(default ``~/.cache/fmlib``); ``FMLIB_CACHE=0`` turns it off. A corrupt cache file is retrained, not fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["TrainConfig", "TrainResult", "EMA", "train", "cache_dir", "cache_key"]

LossFn = Callable[[nn.Module, int, torch.Generator], Tensor]
"""loss_fn(model, batch_size, generator) -> scalar loss: draws its own batch (on the model's device) and
returns the loss, e.g. a closure over :func:`fmlib.losses.conditional_flow_matching_loss`."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all part of the cache key)."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine"
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA only; ignored on CPU


@dataclass
class TrainResult:
    """``model``: the EMA model (eval mode, on the training device); ``raw_model``: the last iterate;
    ``losses`` [steps]: the per-step training loss; ``seconds``: wall-clock of training (0 when cached);
    ``from_cache``; ``key``: the cache key; ``path``: the checkpoint file (None without cache)."""

    model: nn.Module
    raw_model: nn.Module
    losses: np.ndarray
    seconds: float
    from_cache: bool
    key: str
    path: Path | None

    @property
    def steps_per_second(self) -> float:
        raise NotImplementedError


class EMA:
    """Exponential moving average of parameters: θ̄ ← d θ̄ + (1 − d) θ, with warm-up d_k = min(d, (1 + k)/(10 + k))."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        raise NotImplementedError

    def update(self, model: nn.Module) -> None:
        raise NotImplementedError

    def copy_to(self, model: nn.Module) -> None:
        raise NotImplementedError


def cache_dir() -> Path:
    """The checkpoint-cache folder (``FMLIB_CACHE_DIR`` or ``~/.cache/fmlib``), created if missing."""
    raise NotImplementedError


def cache_key(name: str, model: nn.Module, config: TrainConfig, key: Mapping[str, Any] | None = None) -> str:
    """A hex digest identifying a run (see the module docstring)."""
    raise NotImplementedError


def train(
    model: nn.Module,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    name: str,
    key: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cache: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn`` for ``config.steps`` AdamW steps, or load the cached result.

    ``model`` is moved to ``device`` (default :func:`fmlib.runtime.get_device`) and its initial weights are
    drawn from ``config.seed`` is the caller's job (build it after :func:`fmlib.runtime.seed_everything`);
    the batch generator is seeded from ``config.seed``. ``key`` must describe everything ``loss_fn`` depends
    on (data, path, parametrization), since functions cannot be hashed.

    Raises:
        FloatingPointError: the loss becomes NaN or infinite (the message gives the step).
        ValueError: non-positive steps or batch size, unknown lr_schedule.
    """
    raise NotImplementedError
