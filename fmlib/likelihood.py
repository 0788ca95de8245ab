"""Exact log-likelihood of a continuous normalizing flow, and divergence estimators.

For a flow dψ_t/dt = u_t(ψ_t) with density p_t = [ψ_t]_# p_0, the instantaneous change of variables gives

    d/dt log p_t(ψ_t(x)) = −div u_t(ψ_t(x)),   so   log p_1(x1) = log p_0(x0) − ∫_0^1 div u_t(x_t) dt,

where x_t solves the ODE backwards from x_1 = x1 to x_0. fmlib integrates the augmented state
(x_t, ∫_t^1 div u_s(x_s) ds) from t = 1 down to t = 0 with a chosen solver.

Divergences:
    exact        div u(x) = Σ_i ∂u_i/∂x_i, one autograd pass per coordinate (cost grows with D);
    hutchinson   div u(x) ≈ (1/K) Σ_k ε_kᵀ (∂u/∂x) ε_k with E[ε εᵀ] = I (Rademacher or Gaussian probes),
                 one vector–Jacobian product per probe; unbiased, variance 2‖J‖_F² − 2 Σ J_ii² (Rademacher)
                 or 2‖(J+Jᵀ)/2‖_F² (Gaussian) per probe. Probes are drawn once per solve and held fixed in t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .solvers import VelocityField

__all__ = [
    "standard_normal_log_prob",
    "divergence_exact",
    "divergence_hutchinson",
    "make_probes",
    "LikelihoodResult",
    "log_likelihood",
]


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) summed over all non-batch coordinates: shape [B] from x [B, ...]."""
    raise NotImplementedError


def divergence_exact(velocity: VelocityField, x: Tensor, t: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return (v, div v) at (x, t): v [B, ...] and the exact divergence [B], via D autograd passes.

    ``create_graph=True`` keeps the graph so the divergence can be differentiated w.r.t. parameters
    (maximum-likelihood training).
    """
    raise NotImplementedError


def make_probes(shape: tuple[int, ...], n_probes: int, *, kind: str = "rademacher",
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``n_probes`` probe vectors with E[ε εᵀ] = I: shape [n_probes, *shape]. kind: ``rademacher`` | ``gaussian``."""
    raise NotImplementedError


def divergence_hutchinson(velocity: VelocityField, x: Tensor, t: Tensor, probes: Tensor, *,
                          create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return (v, estimate) with estimate [B] = mean over probes ε [K, B, ...] of εᵀ (∂v/∂x) ε."""
    raise NotImplementedError


@dataclass
class LikelihoodResult:
    """``log_prob`` [B] = log p_1(x1); ``x0`` [B, ...] the point the flow maps to x1; ``source_log_prob`` [B]
    = log p_0(x0); ``delta_log_prob`` [B] = −∫_0^1 div u_t dt; ``nfe`` velocity evaluations."""

    log_prob: Tensor
    x0: Tensor
    source_log_prob: Tensor
    delta_log_prob: Tensor
    nfe: int


def log_likelihood(
    velocity: VelocityField,
    x1: Tensor,
    *,
    steps: int | None,
    method: str = "rk4",
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    source_log_prob: Callable[[Tensor], Tensor] = standard_normal_log_prob,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> LikelihoodResult:
    """log p_1(x1) of the flow of ``velocity`` with source density ``source_log_prob``.

    ``steps`` as in :func:`fmlib.solvers.solve_ode` (None for dopri5). ``divergence``: ``exact`` |
    ``hutchinson`` (with ``n_probes`` probes of kind ``probe``). With ``create_graph=True`` the result is
    differentiable w.r.t. the velocity's parameters (maximum-likelihood training of a CNF).

    Raises:
        ValueError: unknown divergence/probe/method names, bad step counts, n_probes < 1.
    """
    raise NotImplementedError
