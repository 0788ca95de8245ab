"""Plotting helpers shared by the chapters (matplotlib). Every function draws on a given ``Axes`` and
returns it, labels its axes and never calls ``plt.show``."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from torch import Tensor

__all__ = ["plot_samples", "plot_density", "plot_trajectories", "plot_vector_field", "show_images", "DEFAULT_LIMITS"]

DEFAULT_LIMITS: tuple[float, float] = (-4.5, 4.5)


def plot_samples(ax: Axes, x: Tensor, *, title: str | None = None, lims: tuple[float, float] = DEFAULT_LIMITS,
                 color: str = "C0", s: float = 2.0, alpha: float = 0.5, label: str | None = None) -> Axes:
    """Scatter of 2-D samples x [N, 2] with equal aspect and fixed limits."""
    raise NotImplementedError


def plot_density(ax: Axes, log_density: Callable[[Tensor], Tensor], *, lims: tuple[float, float] = DEFAULT_LIMITS,
                 n: int = 100, title: str | None = None, log_scale: bool = False, cmap: str = "viridis") -> Axes:
    """Heat map of exp(log_density) (or of log_density itself with ``log_scale=True``) on an n×n grid;
    ``log_density`` maps [M, 2] points to [M]."""
    raise NotImplementedError


def plot_trajectories(ax: Axes, trajectory: Tensor, *, n_show: int = 200, title: str | None = None,
                      lims: tuple[float, float] = DEFAULT_LIMITS, color: str = "C1") -> Axes:
    """Paths of a [T, B, 2] trajectory (first ``n_show``), start points grey, end points coloured."""
    raise NotImplementedError


def plot_vector_field(ax: Axes, velocity: Callable[[Tensor, Tensor], Tensor], t: float, *,
                      lims: tuple[float, float] = DEFAULT_LIMITS, n: int = 25, stream: bool = True,
                      title: str | None = None) -> Axes:
    """Stream (or quiver) plot of a velocity field v(x [M, 2], t [M]) at time t, coloured by speed."""
    raise NotImplementedError


def show_images(ax: Axes, images: Tensor, *, nrow: int = 8, title: str | None = None) -> Axes:
    """Grid of images [N, C, H, W] in [−1, 1] (grayscale for C = 1), no ticks."""
    raise NotImplementedError
