"""Classifier-free guidance for velocity fields.

A model trained with labels y and, with some probability, the null label ∅ gives both v(x, t, y) and
v(x, t, ∅). The guided field with scale w is

    ṽ(x, t, y) = v(x, t, ∅) + w [v(x, t, y) − v(x, t, ∅)] = (1 − w) v(x, t, ∅) + w v(x, t, y),

w = 1 is the conditional model, w = 0 the unconditional one, w > 1 extrapolates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["guided_velocity", "GuidedField", "drop_labels"]


def guided_velocity(model: nn.Module, x: Tensor, t: Tensor, y: Tensor, *, scale: float, null_label: int) -> Tensor:
    """(1 − w) v(x, t, ∅) + w v(x, t, y) with w = ``scale``; ``y`` [B] long, ``null_label`` the index of ∅."""
    raise NotImplementedError


class GuidedField:
    """A velocity field ``(x, t) -> ṽ`` with fixed labels and scale, for :func:`fmlib.solvers.solve_ode`."""

    def __init__(self, model: nn.Module, y: Tensor, *, scale: float, null_label: int) -> None:
        raise NotImplementedError

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError


def drop_labels(y: Tensor, *, p: float, null_label: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (classifier-free guidance training)."""
    raise NotImplementedError
