"""Samplers for a learned flow on arbitrary time grids, with explicit NFE: Runge–Kutta on a grid, the cosine
grid, and exponential integrators in log-SNR time.

Book time: **t = 0 noise, t = 1 data**, x_t = α_t x1 + σ_t ε, λ_t = log(α_t²/σ_t²). The uniform, uniform-λ
and EDM grids live in :mod:`fmlib.solvers` (``time_grid``) and :mod:`fmlib.diffusion`
(``uniform_log_snr_grid``, ``edm_grid``); DDIM(η) and churn in :func:`fmlib.diffusion.sample_ddim`.

**Exponential integrators.** With ε̂ = (x − α x̂1)/σ the flow ODE dx/dt = α' x̂1 + σ' ε̂ is
dx/dt = (σ'/σ) x + (α λ'/2) x̂1: linear in x plus a forcing. Its linear part is solved exactly by the
variable y = x/σ, and with μ = λ/2 = log(α/σ)

    dy/dμ = e^μ x̂1(x, t)     ⇒     x_{k+1} = (σ_{k+1}/σ_k) x_k + σ_{k+1} ∫_{μ_k}^{μ_{k+1}} e^μ x̂1 dμ.

Order 1 (x̂1 frozen at its value at t_k), with h = μ_{k+1} − μ_k:

    x_{k+1} = (σ_{k+1}/σ_k) x_k + α_{k+1} (1 − e^{−h}) x̂1_k        (= DDIM, :func:`fmlib.diffusion.sample_ddim`)

Order 2, multistep (x̂1 linear in μ through the last two predictions, integrated exactly), r = h_{k−1}/h:

    x_{k+1} = [order-1 step] + α_{k+1} (h − 1 + e^{−h}) / (r h) · (x̂1_k − x̂1_{k−1}).

This is the exact integral of the linear interpolant; DPM-Solver++(2M) (Lu et al.) uses (1 − e^{−h})/2 in place
of (h − 1 + e^{−h})/h, equal to first order in h (both rules have order 2). The first step (no history) and a
step to σ = 0 (h = ∞) are taken at order 1; a step from α = 0 (μ = −∞) has σ_{k+1}/σ_k x_k + α_{k+1} x̂1_k,
its limit.

**EDM's sampler** (Karras et al., Algorithms 1–2: Heun's method for dx̄/dρ = ε̂ in the scale-free state
x̄ = x/α against the noise level ρ = σ/α, with churn) is :func:`fmlib.diffusion.sample_edm`, the one
implementation the diffusion and samplers chapters share. It is not Heun in (x, t): the two differ at O(h³)
per step (both are second order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_batched, check_choice, check_positive_int
from .diffusion import grid_from_log_snr, predict_x1_x0
from .paths import PARAMETRIZATIONS, AffinePath, Scheduler
from .solvers import _TABLEAUS, FIXED_STEP_METHODS, NFE_PER_STEP, NFECounter, ODESolution, VelocityField
from .solvers import _check_velocity_output, _require_finite, _rk_step, _time_batch

__all__ = ["ButcherTableau", "butcher_tableau", "check_grid", "solve_on_grid", "cosine_grid", "EXPONENTIAL_ORDERS",
           "sample_exponential"]

EXPONENTIAL_ORDERS: tuple[int, ...] = (1, 2)
"""Orders of :func:`sample_exponential`."""


@dataclass(frozen=True)
class ButcherTableau:
    """c [S] nodes, a [S][<S] stage weights (row i has i entries), b [S] step weights; ``nfe_per_step`` = S."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]

    @property
    def nfe_per_step(self) -> int:
        return len(self.c)


def butcher_tableau(method: str) -> ButcherTableau:
    """The tableau :func:`fmlib.solvers.solve_ode` runs for ``method`` (euler, midpoint, heun, rk4).

    One step from (x, t) with size h: k_i = v(x + h Σ_j a_ij k_j, t + c_i h), x' = x + h Σ_i b_i k_i.
    """
    tab = _TABLEAUS[check_choice(method, FIXED_STEP_METHODS, what="fixed-step method")]
    return ButcherTableau(c=tab.c, a=tab.a, b=tab.b)


def check_grid(times: Tensor | list[float]) -> Tensor:
    """``times`` as a float64 1-D tensor: at least two nodes in [0, 1], strictly monotone.

    Raises:
        ValueError: otherwise (the message says which condition failed).
    """
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu().flatten()
    if times.numel() < 2:
        raise ValueError(f"a time grid needs at least two nodes, got {times.numel()}")
    if not bool(torch.isfinite(times).all()) or times.min() < 0 or times.max() > 1:
        raise ValueError("a time grid must lie in [0, 1]")
    d = times.diff()
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError("a time grid must be strictly increasing or strictly decreasing")
    return times


def solve_on_grid(velocity: VelocityField, x_init: Tensor, times: Tensor | list[float], *,
                  method: str = "euler") -> ODESolution:
    """Integrate dx/dt = v(x, t) with the explicit Runge–Kutta ``method`` on the given grid (any spacing).

    Step k goes from times[k] to times[k+1] with its own h_k; ``nfe`` = steps × (1, 2, 2, 4) for euler,
    midpoint, heun, rk4. On the uniform grid this is :func:`fmlib.solvers.solve_ode` exactly. Returns an
    :class:`fmlib.solvers.ODESolution` with ``times`` (the grid) and no trajectory.

    Raises:
        ValueError: an unknown method, a bad grid (:func:`check_grid`), x_init not a floating [B, ...] tensor,
            a velocity output of the wrong shape.
        FloatingPointError: the state becomes NaN or infinite.
    """
    tab = _TABLEAUS[check_choice(method, FIXED_STEP_METHODS, what="fixed-step method")]
    grid = check_grid(times)
    check_batched(x_init, name="x_init", min_dim=1)
    if not x_init.is_floating_point():
        raise ValueError(f"x_init must be a floating-point tensor, got {x_init.dtype}")
    counter = NFECounter(velocity)
    lo, hi = float(grid.min()), float(grid.max())

    def field(state: tuple[Tensor, ...], t: float) -> tuple[Tensor, ...]:
        (x,) = state
        return (_check_velocity_output(counter(x, _time_batch(t, x, lo, hi)), x),)

    state = (x_init,)
    nodes = grid.tolist()
    for k in range(len(nodes) - 1):
        state = _rk_step(field, tab, state, nodes[k], nodes[k + 1])
        _require_finite(state, f"at step {k + 1}/{len(nodes) - 1} of {method} (t = {nodes[k + 1]:.6g})")
    assert counter.nfe == NFE_PER_STEP[method] * (len(nodes) - 1)
    return ODESolution(x=state[0], nfe=counter.nfe, times=grid)


def cosine_grid(scheduler: Scheduler, steps: int) -> Tensor:
    """The grid of the cosine schedule carried to ``scheduler`` by equal log-SNR: the nodes s_k = k/steps are
    uniform in the cosine path's time (α = sin(πs/2), σ = cos(πs/2), so λ = 2 log tan(πs/2)) and node k is the
    time t_k of ``scheduler`` with λ_{t_k} = 2 log tan(π k / (2 steps)); t_0 = 0, t_steps = 1. For the linear
    path t_k = sin(πs_k/2) / (sin(πs_k/2) + cos(πs_k/2)). Shape [steps + 1], float64."""
    steps = check_positive_int(steps, "steps")
    if steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.arange(1, steps, dtype=torch.float64) / steps
    lam = 2.0 * torch.log(torch.tan(0.5 * math.pi * s))
    return grid_from_log_snr(scheduler, lam, 0.0, 1.0)


def _check_noise_to_data(x_init: Tensor, prediction: str, times: Tensor, sampler: str) -> Tensor:
    """Check the inputs shared by the noise → data samplers; return the grid (float64, increasing)."""
    check_batched(x_init, name="x_init", min_dim=1)
    check_choice(prediction, PARAMETRIZATIONS, what="prediction")
    grid = check_grid(times)
    if not bool((grid.diff() > 0).all()):
        raise ValueError(f"{sampler} integrates noise → data: times must be increasing")
    return grid


def sample_exponential(field: VelocityField, path: AffinePath, x_init: Tensor, *, times: Tensor,
                       order: int = 1, prediction: str = "velocity") -> ODESolution:
    """The exponential integrator of ``order`` 1 or 2 (see the module docstring) on the increasing grid
    ``times``, one NFE per step. ``field(x, t)`` returns ``prediction`` (converted to x̂1 by the path).

    Order 1 is DDIM (η = 0). Order 2 is the multistep rule with x̂1 linear in μ = λ/2; its first step and any
    step to σ = 0 are order 1. Returns an :class:`fmlib.solvers.ODESolution` (x, nfe, times).

    Raises:
        ValueError: order not 1 or 2, a grid that is not increasing in [0, 1], an unknown prediction.
    """
    if order not in EXPONENTIAL_ORDERS:
        raise ValueError(f"order must be one of {EXPONENTIAL_ORDERS}, got {order!r}")
    grid = _check_noise_to_data(x_init, prediction, times, "sample_exponential")
    sched = path.scheduler
    out = sched(grid)
    alpha, sigma = out.alpha.tolist(), out.sigma.tolist()
    mu = [0.5 * v for v in sched.log_snr(grid).tolist()]
    x, nfe = x_init, 0
    prev_x1, prev_h = None, None
    for k in range(grid.numel() - 1):
        x1, _ = predict_x1_x0(path, field, x, float(grid[k]), prediction)
        nfe += 1
        h = mu[k + 1] - mu[k]
        one_minus_decay = 1.0 if math.isinf(h) else -math.expm1(-h)   # 1 − e^{−h}, e^{−h} = ρ_{k+1}/ρ_k
        x_new = (sigma[k + 1] / sigma[k]) * x + alpha[k + 1] * one_minus_decay * x1
        if order == 2 and prev_x1 is not None and math.isfinite(h) and math.isfinite(prev_h):
            r = prev_h / h
            x_new = x_new + alpha[k + 1] * (h - one_minus_decay) / (r * h) * (x1 - prev_x1)
        _require_finite((x_new,), f"at step {k + 1} of the exponential integrator (t = {float(grid[k + 1]):.6g})")
        x, prev_x1, prev_h = x_new, x1, h
    return ODESolution(x=x, nfe=nfe, times=grid)
