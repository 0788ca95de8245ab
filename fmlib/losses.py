"""Conditional flow-matching losses.

For an affine path (see :mod:`fmlib.paths`) and a model f_θ(x, t[, y]) that predicts one of the
parametrizations (velocity, x0 = ε, x1, score), the loss is

    L(θ) = E_{t ~ U[0,1], x0 ~ p, x1 ~ q} [ w(t) · ‖f_θ(x_t, t) − target‖² / D ]

where target is dx_t = α'_t x1 + σ'_t x0 (velocity), x0, x1, or −x0/σ_t (score), D is the number of
coordinates of one sample (so the loss is a mean squared error per coordinate) and w is an optional time
weighting. With the velocity parametrization and w ≡ 1 this is the CFM loss of Lipman et al. (2023) divided by D.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .paths import AffinePath, PathSample

__all__ = ["per_sample_squared_error", "cfm_loss", "conditional_flow_matching_loss", "sample_time"]

TimeWeighting = Callable[[Tensor], Tensor]
"""A function t [B] ↦ w(t) [B] ≥ 0."""


def per_sample_squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """‖pred − target‖² / D for each sample: shape [B] from two [B, ...] tensors of equal shape."""
    raise NotImplementedError


def cfm_loss(
    pred: Tensor,
    sample: PathSample,
    path: AffinePath,
    *,
    parametrization: str = "velocity",
    weighting: TimeWeighting | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The flow-matching loss of a model output ``pred`` [B, ...] against the target of ``parametrization``.

    reduction: ``"mean"`` (scalar, mean over the batch), ``"sum"`` or ``"none"`` ([B]).

    Raises:
        ValueError: shape mismatch, unknown parametrization or reduction, negative weights.
        FloatingPointError: the loss is NaN or infinite.
    """
    raise NotImplementedError


def sample_time(batch: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                t_min: float = 0.0, t_max: float = 1.0) -> Tensor:
    """t ~ U[t_min, t_max], shape [batch]. ``0 ≤ t_min < t_max ≤ 1`` (x1- and score-targets need t_max < 1)."""
    raise NotImplementedError


def conditional_flow_matching_loss(
    model: nn.Module,
    path: AffinePath,
    x1: Tensor,
    *,
    x0: Tensor | None = None,
    t: Tensor | None = None,
    y: Tensor | None = None,
    parametrization: str = "velocity",
    weighting: TimeWeighting | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Draw (t, x0) where not given (t ~ U[0, 1], x0 ~ N(0, I) like x1), form the path sample, call
    ``model(x_t, t)`` (or ``model(x_t, t, y)`` when ``y`` is given) and return :func:`cfm_loss`.

    This is the one training loss every chapter uses.
    """
    raise NotImplementedError
