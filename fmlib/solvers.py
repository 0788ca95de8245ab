"""ODE and SDE samplers with explicit step counts.

A velocity field is any callable ``v(x, t) -> Tensor`` with x of shape [B, ...] and t of shape [B]
(a model, :class:`fmlib.analytic.MarginalField`, or a lambda). Fixed-step methods on the uniform grid
t_k = t_start + k h, h = (t_end − t_start)/steps:

    euler     x_{k+1} = x_k + h v(x_k, t_k)                                           (order 1, 1 NFE/step)
    midpoint  x_{k+1} = x_k + h v(x_k + h/2 v(x_k, t_k), t_k + h/2)                     (order 2, 2 NFE/step)
    heun      x̃ = x_k + h v(x_k, t_k);  x_{k+1} = x_k + h/2 [v(x_k, t_k) + v(x̃, t_{k+1})]  (order 2, 2 NFE/step)
    rk4       classic Runge–Kutta                                                      (order 4, 4 NFE/step)
    dopri5    adaptive Dormand–Prince via torchdiffeq (atol, rtol), NFE counted

Integration runs forward (t_end > t_start, noise → data) or backward (t_end < t_start, data → noise).
The solvers do not change torch's grad mode: wrap in ``torch.no_grad()`` to sample, leave it on to
backpropagate through the solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VelocityField", "ODE_METHODS", "ODESolution", "NFECounter", "solve_ode", "time_grid", "solve_sde"]

VelocityField = Callable[[Tensor, Tensor], Tensor]
"""v(x [B, ...], t [B]) -> [B, ...]."""

ODE_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4", "dopri5")
"""Known ``method`` names of :func:`solve_ode`."""


@dataclass
class ODESolution:
    """Result of :func:`solve_ode`.

    ``x`` [B, ...] is the state at t_end; ``nfe`` the number of velocity evaluations; with ``record=True``,
    ``times`` [S+1] and ``trajectory`` [S+1, B, ...] hold the states on the grid (for dopri5: the
    ``record_times`` requested or the two endpoints), otherwise both are None.
    """

    x: Tensor
    nfe: int
    times: Tensor | None = None
    trajectory: Tensor | None = None


class NFECounter:
    """Wrap a velocity field and count its calls (``.nfe``); ``reset()`` sets the count to zero."""

    def __init__(self, velocity: VelocityField) -> None:
        raise NotImplementedError

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


def time_grid(steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
    """The uniform grid of ``steps + 1`` times from t_start to t_end (float64 for exact endpoints)."""
    raise NotImplementedError


def solve_ode(
    velocity: VelocityField,
    x_init: Tensor,
    *,
    steps: int | None,
    method: str = "euler",
    t_start: float = 0.0,
    t_end: float = 1.0,
    record: bool = False,
    record_times: Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> ODESolution:
    """Integrate dx/dt = v(x, t) from x(t_start) = x_init to t_end.

    ``steps`` is required (a positive int) for the fixed-step methods and must be None for ``dopri5``:
    there is no silent default grid. t_start and t_end must lie in [0, 1] and differ.

    Raises:
        ValueError: unknown method (lists :data:`ODE_METHODS`), missing/invalid steps, bad times, or a
            velocity whose output shape differs from x's.
        FloatingPointError: the state becomes NaN or infinite (the message gives the step and time).
    """
    raise NotImplementedError


def solve_sde(
    drift: VelocityField,
    diffusion: Callable[[Tensor], Tensor],
    x_init: Tensor,
    *,
    steps: int,
    t_start: float = 0.0,
    t_end: float = 1.0,
    generator: torch.Generator | None = None,
    record: bool = False,
) -> ODESolution:
    """Euler–Maruyama for dX = f(X, t) dt + g(t) dW on the uniform grid:
    x_{k+1} = x_k + h f(x_k, t_k) + g(t_k) sqrt(|h|) ξ_k, ξ_k ~ N(0, I).

    ``diffusion`` maps t [B] to g(t) [B]. Returns an :class:`ODESolution` (``nfe`` counts drift calls).
    """
    raise NotImplementedError
