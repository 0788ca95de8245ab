"""Closed forms used as oracles: Gaussian-mixture data under affine Gaussian paths.

For data q = Σ_k π_k N(m_k, s_k² I) (isotropic components) and an independent standard Gaussian source, the
affine path x_t = α_t x1 + σ_t x0 has the closed-form marginal

    p_t(x) = Σ_k π_k N(x; α_t m_k, (α_t² s_k² + σ_t²) I),

posterior means E[X1 | X_t = x], E[X0 | X_t = x] (mixtures of Gaussian-conditioning formulas with
responsibilities r_k(x) ∝ π_k N(x; α_t m_k, (α_t² s_k² + σ_t²) I)) and marginal velocity

    u_t(x) = α'_t E[X1 | X_t = x] + σ'_t E[X0 | X_t = x],

and score ∇ log p_t(x). A finite training set {x^(i)} is the special case s_k = 0 with equal weights, whose
marginal velocity moves every point to one of the training points (memorisation). The conditional-target
variance Var[u_t(x | X1) | X_t = x] = tr Cov[α' X1 + σ' X0 | X_t = x] is available too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .paths import AffinePath

__all__ = ["GaussianMixture", "MarginalField"]


@dataclass(frozen=True)
class GaussianMixture:
    """q = Σ_k weights_k N(means_k, stds_k² I).

    Shapes: ``means`` [K, D], ``stds`` [K] (≥ 0; 0 gives point masses), ``weights`` [K] (positive, summing to
    1). Use :meth:`from_points` for the empirical distribution of a finite data set.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    @staticmethod
    def from_points(points: Tensor) -> "GaussianMixture":
        """The empirical distribution (1/N) Σ_i δ_{x^(i)} of ``points`` [N, D]."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n samples, shape [n, D]."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) for x [B, D] (requires all stds > 0)."""
        raise NotImplementedError

    def mean(self) -> Tensor:
        """E[X], shape [D]."""
        raise NotImplementedError

    def covariance(self) -> Tensor:
        """Cov[X], shape [D, D]."""
        raise NotImplementedError


class MarginalField:
    """Exact marginal quantities of an affine path with standard Gaussian source and Gaussian-mixture data.

    All methods take x [B, D] and t (float or [B]) and are differentiable in x.
    """

    def __init__(self, path: AffinePath, data: GaussianMixture) -> None:
        raise NotImplementedError

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x), shape [B]. At t = 0 the standard normal (for a scheduler with α_0 = 0, σ_0 = 1)."""
        raise NotImplementedError

    def posterior_x1(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[X1 | X_t = x], shape [B, D]."""
        raise NotImplementedError

    def posterior_x0(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[X0 | X_t = x] = (x − α_t E[X1 | X_t = x]) / σ_t, shape [B, D]."""
        raise NotImplementedError

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """u_t(x) = α'_t E[X1 | x] + σ'_t E[X0 | x], shape [B, D]. Usable directly as a velocity field
        ``v(x, t)`` in :func:`fmlib.solvers.solve_ode`."""
        raise NotImplementedError

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """∇_x log p_t(x), shape [B, D]."""
        raise NotImplementedError

    def conditional_velocity_variance(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[‖u_t(x | X1, X0) − u_t(x)‖² | X_t = x] = tr Cov[α' X1 + σ' X0 | X_t = x], shape [B]
        (the irreducible part of the CFM loss at (x, t))."""
        raise NotImplementedError

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Alias of :meth:`velocity`, so the field can be passed where a model is expected."""
        return self.velocity(x, t)
