"""Classifier-free guidance for velocity fields.

A model trained with labels y and, with some probability, the null label ∅ gives both v(x, t, y) and
v(x, t, ∅). The guided field with scale w is

    ṽ(x, t, y) = v(x, t, ∅) + w [v(x, t, y) − v(x, t, ∅)] = (1 − w) v(x, t, ∅) + w v(x, t, y),

w = 1 is the conditional model, w = 0 the unconditional one, w > 1 extrapolates.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from ._checks import as_time, check_batched

__all__ = ["guided_velocity", "GuidedField", "drop_labels"]


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


def _check_null_label(null_label: object) -> int:
    if isinstance(null_label, bool) or not isinstance(null_label, numbers.Integral) or null_label < 0:
        raise ValueError(f"null_label must be a non-negative int (the model's index of ∅), got {null_label!r}")
    return int(null_label)


def _check_labels(y: Tensor, batch: int | None = None) -> Tensor:
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        kind = y.dtype if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"labels y must be an integer tensor, got {kind}")
    if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
        want = f"[{batch}]" if batch is not None else "[B]"
        raise ValueError(f"labels y must have shape {want}, got {tuple(y.shape)}")
    return y.long()


def guided_velocity(model: nn.Module, x: Tensor, t: Tensor, y: Tensor, *, scale: float, null_label: int) -> Tensor:
    """(1 − w) v(x, t, ∅) + w v(x, t, y) with w = ``scale``; ``y`` [B] long, ``null_label`` the index of ∅.

    Shapes: x [B, ...], t a number, 0-d or [B] tensor, y [B] → [B, ...]. For w ∉ {0, 1} the conditional and
    unconditional velocities come from one model call on the doubled batch [x; x] with labels [y; ∅]
    (one network evaluation of batch 2B); w = 1 returns v(x, t, y) and w = 0 returns v(x, t, ∅) exactly,
    with a single call of batch B.

    Raises:
        ValueError: non-finite scale, negative or non-int null_label, y not an integer [B] tensor.
    """
    w = _check_scale(scale)
    null_label = _check_null_label(null_label)
    check_batched(x, name="x", min_dim=1)
    batch = x.shape[0]
    y = _check_labels(y, batch).to(x.device)
    t = as_time(t, batch, like=x)
    null = torch.full_like(y, null_label)
    if w == 1.0:
        return model(x, t, y)
    if w == 0.0:
        return model(x, t, null)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    conditional, unconditional = both[:batch], both[batch:]
    return unconditional + w * (conditional - unconditional)


class GuidedField:
    """A velocity field ``(x, t) -> ṽ`` with fixed labels and scale, for :func:`fmlib.solvers.solve_ode`.

    ṽ(x, t) = (1 − w) v(x, t, ∅) + w v(x, t, y) via :func:`guided_velocity`. ``y`` [B] integer labels (a 0-d
    tensor or an int is used for every sample of the batch); they are moved to x's device on each call.
    """

    def __init__(self, model: nn.Module, y: Tensor | int, *, scale: float, null_label: int) -> None:
        if not torch.is_tensor(y):
            if isinstance(y, bool) or not isinstance(y, numbers.Integral):
                raise ValueError(f"labels y must be an int or an integer tensor, got {type(y).__name__}")
            y = torch.tensor(int(y))
        if y.dim() > 1:
            raise ValueError(f"labels y must be 0-d or have shape [B], got {tuple(y.shape)}")
        self.model = model
        self.y = _check_labels(y.reshape(-1)).reshape(y.shape)
        self.scale = _check_scale(scale)
        self.null_label = _check_null_label(null_label)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.y.expand(x.shape[0]) if self.y.dim() == 0 else self.y
        return guided_velocity(self.model, x, t, y, scale=self.scale, null_label=self.null_label)


def drop_labels(y: Tensor, *, p: float, null_label: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (classifier-free guidance training).

    Returns a new tensor of y's shape and dtype: y_i' = ∅ if U_i < p else y_i, U_i ~ U[0, 1) independent
    (drawn with ``generator`` on its own device, then moved to y's). p = 0 keeps every label, p = 1 drops all.

    Raises:
        ValueError: p not a number in [0, 1], negative or non-int null_label, y not an integer tensor.
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    null_label = _check_null_label(null_label)
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels y must be an integer tensor, got {y.dtype if torch.is_tensor(y) else type(y)}")
    draw_device = generator.device if generator is not None else y.device
    u = torch.rand(y.shape, generator=generator, device=draw_device).to(y.device)
    return torch.where(u < p, torch.full_like(y, null_label), y)
