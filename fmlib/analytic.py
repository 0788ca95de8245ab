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

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_batched
from .paths import AffinePath, SchedulerOutput, batch_time

__all__ = ["GaussianMixture", "MarginalField"]

_CHUNK_ELEMENTS = 1 << 22
"""Rows are processed in chunks so that the [rows, K, D] difference tensor stays below this many entries."""

_WEIGHT_SUM_TOLERANCE = 1e-4


def _component_logits(x: Tensor, means: Tensor, scale: Tensor, variances: Tensor,
                      log_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Differences and log-weighted component densities of the mixture Σ_k π_k N(scale_b m_k, v_bk I).

    Shapes: x [B, D], means [K, D], scale [B], variances [B, K] or [1, K] (> 0), log_weights [K] →
    diff = x_b − scale_b m_k [B, K, D] and logits = log π_k + log N(x_b; scale_b m_k, v_bk I) [B, K].
    The squared distances are formed from the differences themselves (not ‖x‖² − 2⟨x, m⟩ + ‖m‖²), which keeps
    them accurate when v is tiny (point masses near σ_t = 0).
    """
    diff = x[:, None, :] - scale[:, None, None] * means[None, :, :]
    sq = diff.square().sum(-1)
    dim = x.shape[1]
    logits = log_weights - 0.5 * (sq / variances + dim * torch.log(2.0 * math.pi * variances))
    return diff, logits


def _chunk_rows(n_rows: int, per_row: int) -> list[slice]:
    """Consecutive row slices covering ``n_rows`` rows with at most ``_CHUNK_ELEMENTS / per_row`` rows each."""
    step = max(1, _CHUNK_ELEMENTS // max(1, per_row))
    return [slice(start, start + step) for start in range(0, n_rows, step)] or [slice(0, 0)]


@dataclass(frozen=True)
class GaussianMixture:
    """q = Σ_k weights_k N(means_k, stds_k² I).

    Shapes: ``means`` [K, D], ``stds`` [K] (≥ 0; 0 gives point masses), ``weights`` [K] (positive, summing to
    1). Use :meth:`from_points` for the empirical distribution of a finite data set.
    All three must be floating-point tensors on one device; computations run in the dtype of their inputs.

    Raises:
        ValueError: wrong shapes, negative or non-finite stds, non-positive weights or weights not summing to 1.
    """

    means: Tensor
    stds: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        for name in ("means", "stds", "weights"):
            value = getattr(self, name)
            if not torch.is_tensor(value) or not value.is_floating_point():
                raise ValueError(f"GaussianMixture.{name} must be a floating-point tensor, got {value!r}")
        if self.means.dim() != 2 or self.means.shape[0] < 1 or self.means.shape[1] < 1:
            raise ValueError(f"means must have shape [K, D] with K, D >= 1, got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        for name in ("stds", "weights"):
            if tuple(getattr(self, name).shape) != (k,):
                raise ValueError(f"{name} must have shape [{k}] (one per component), "
                                 f"got {tuple(getattr(self, name).shape)}")
        if len({self.means.device, self.stds.device, self.weights.device}) > 1:
            raise ValueError("means, stds and weights must be on one device")
        if not bool(torch.isfinite(self.means).all()):
            raise ValueError("means must be finite")
        if not bool((torch.isfinite(self.stds) & (self.stds >= 0)).all()):
            raise ValueError("stds must be finite and >= 0")
        if not bool((torch.isfinite(self.weights) & (self.weights > 0)).all()):
            raise ValueError("weights must be finite and > 0")
        total = float(self.weights.double().sum())
        if abs(total - 1.0) > _WEIGHT_SUM_TOLERANCE:
            raise ValueError(f"weights must sum to 1, got {total:.8g}")

    @staticmethod
    def from_points(points: Tensor) -> "GaussianMixture":
        """The empirical distribution (1/N) Σ_i δ_{x^(i)} of ``points`` [N, D] (stds 0, weights 1/N)."""
        check_batched(points, name="points", min_dim=2)
        if points.dim() != 2 or not points.is_floating_point():
            raise ValueError(f"points must be a floating-point [N, D] tensor, got {points.dtype} {tuple(points.shape)}")
        n = points.shape[0]
        return GaussianMixture(means=points, stds=points.new_zeros(n), weights=points.new_full((n,), 1.0 / n))

    @staticmethod
    def ring(n_components: int, radius: float, std: float, *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> "GaussianMixture":
        """K equal-weight isotropic Gaussians N(m_k, std² I) in 2-D, m_k = radius (cos 2πk/K, sin 2πk/K).

        Raises:
            ValueError: K < 1, radius or std negative or non-finite (std 0 gives point masses).
        """
        if isinstance(n_components, bool) or not isinstance(n_components, numbers.Integral) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        for name, value in (("radius", radius), ("std", std)):
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        k = int(n_components)
        angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = float(radius) * torch.stack([angle.cos(), angle.sin()], dim=1)
        return GaussianMixture(means=means.to(dtype=dtype, device=device),
                               stds=torch.full((k,), float(std), dtype=dtype, device=device),
                               weights=torch.full((k,), 1.0 / k, dtype=dtype, device=device))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "GaussianMixture":
        """The same mixture with its three tensors on ``device`` and/or in the floating ``dtype``.

        A :class:`MarginalField` computes on its mixture's device; sample with a generator of that device.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        return GaussianMixture(means=self.means.to(device=device, dtype=dtype),
                               stds=self.stds.to(device=device, dtype=dtype),
                               weights=self.weights.to(device=device, dtype=dtype))

    @property
    def dim(self) -> int:
        """D, the dimension of one sample."""
        return int(self.means.shape[1])

    @property
    def n_components(self) -> int:
        """K, the number of components."""
        return int(self.means.shape[0])

    def log_weights(self) -> Tensor:
        """log π_k, shape [K], renormalised so that Σ_k π_k = 1 exactly."""
        return torch.log(self.weights) - torch.log(self.weights.sum())

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n samples, shape [n, D]: k ~ Categorical(weights), x = means_k + stds_k ε, ε ~ N(0, I).

        Drawn on the mixture's device (the generator must live there) in the dtype of ``means``.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        idx = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        noise = torch.randn(int(n), self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[idx] + self.stds.to(self.means.dtype)[idx, None] * noise

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) = logsumexp_k [log π_k + log N(x; m_k, s_k² I)] for x [B, D] → [B] (requires all stds > 0).

        Raises:
            ValueError: a point-mass component (std 0), or x not [B, D].
        """
        if not bool((self.stds > 0).all()):
            raise ValueError("GaussianMixture.log_prob needs all stds > 0: point masses have no density")
        x = _check_points(x, self.dim)
        means, log_w = self.means.to(x), self.log_weights().to(x)
        variances = self.stds.to(x).square()[None, :]
        out = []
        for rows in _chunk_rows(x.shape[0], means.numel()):
            ones = x.new_ones(x[rows].shape[0])
            out.append(torch.logsumexp(_component_logits(x[rows], means, ones, variances, log_w)[1], dim=1))
        return torch.cat(out)

    def mean(self) -> Tensor:
        """E[X] = Σ_k π_k m_k, shape [D]."""
        w = self.log_weights().exp().to(self.means.dtype)
        return w @ self.means

    def covariance(self) -> Tensor:
        """Cov[X] = Σ_k π_k (m_k − E X)(m_k − E X)ᵀ + (Σ_k π_k s_k²) I, shape [D, D]."""
        w = self.log_weights().exp().to(self.means.dtype)
        centred = self.means - self.mean()
        within = (w * self.stds.to(self.means.dtype).square()).sum()
        eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
        return (centred * w[:, None]).T @ centred + within * eye


def _check_points(x: Tensor, dim: int) -> Tensor:
    """``x`` checked to be a floating-point [B, dim] tensor."""
    check_batched(x, name="x", min_dim=2)
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape [B, {dim}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    return x


@dataclass(frozen=True)
class _Terms:
    """Per-chunk quantities of the mixture posterior at (x, t): shapes [b, D], [b, K, D], [b, K], [b]."""

    x: Tensor
    diff: Tensor          # x − α_t m_k
    var: Tensor           # v_k = α_t² s_k² + σ_t²
    resp: Tensor          # r_k(x) = P(component k | X_t = x)
    log_p: Tensor         # log p_t(x)
    means: Tensor         # [K, D]
    stds2: Tensor         # [K]
    out: SchedulerOutput  # fields [b]

    def weighted(self, coeff: Tensor) -> Tensor:
        """Σ_k r_k coeff_k (x − α m_k) for coeff [b, K] → [b, D]."""
        return torch.einsum("bk,bkd->bd", self.resp * coeff, self.diff)

    def component_velocity_gain(self) -> Tensor:
        """g_k = Cov(α' X1 + σ' X0, X_t | k) / v_k = (α' α s_k² + σ' σ) / v_k, shape [b, K]."""
        o = self.out
        return (o.d_alpha[:, None] * o.alpha[:, None] * self.stds2 + (o.d_sigma * o.sigma)[:, None]) / self.var


class MarginalField:
    """Exact marginal quantities of an affine path with standard Gaussian source and Gaussian-mixture data.

    All methods take x [B, D] and t (float, 0-d or [B]) and are differentiable in x; they work in x's dtype
    and device (the mixture's tensors are moved there). Per component k the pair (X1, X_t) is jointly Gaussian
    with Var X_t = v_k I, v_k = α_t² s_k² + σ_t², so every posterior quantity is a responsibility-weighted
    sum of Gaussian-conditioning formulas; responsibilities r_k(x) are computed with log-sum-exp.

    Where a quantity is undefined a ``ValueError`` says so: any method at a t where some v_k = 0 (a point-mass
    component at σ_t = 0, where p_t has atoms), and the velocity-based methods where α'_t or σ'_t is infinite
    (VP at t = 1). Everything else, including α_t = 0 and σ_t = 0 for data with a density, is finite.
    """

    def __init__(self, path: AffinePath, data: GaussianMixture) -> None:
        if not isinstance(path, AffinePath):
            raise TypeError(f"path must be a fmlib.paths.AffinePath, got {type(path).__name__}")
        if not isinstance(data, GaussianMixture):
            raise TypeError(f"data must be a GaussianMixture, got {type(data).__name__}")
        self.path = path
        self.data = data

    def __repr__(self) -> str:
        return f"MarginalField({self.path!r}, GaussianMixture(K={self.data.n_components}, D={self.data.dim}))"

    def _map(self, x: Tensor, t: float | Tensor, compute: Callable[[_Terms], Tensor], *,
             what: str, needs_derivatives: bool = False) -> Tensor:
        """Validate (x, t), then evaluate ``compute`` on the posterior terms of row chunks and concatenate."""
        x = _check_points(x, self.data.dim)
        t = batch_time(t, x.shape[0], like=x)
        o = self.path.scheduler(t)
        means, stds2 = self.data.means.to(x), self.data.stds.to(x).square()
        log_w = self.data.log_weights().to(x)
        var = o.alpha[:, None].square() * stds2 + o.sigma[:, None].square()
        undefined = ~(var > 0).all(dim=1)
        if bool(undefined.any()):
            bad = ", ".join(f"{v:.6g}" for v in torch.unique(t[undefined].detach())[:5].tolist())
            raise ValueError(f"{what} is undefined at t = {bad}: σ_t = 0 there and the data has point masses "
                             "(std 0), so p_t has atoms and no density")
        if needs_derivatives:
            infinite = ~(torch.isfinite(o.d_alpha) & torch.isfinite(o.d_sigma))
            if bool(infinite.any()):
                bad = ", ".join(f"{v:.6g}" for v in torch.unique(t[infinite].detach())[:5].tolist())
                raise ValueError(f"{what} is undefined for {self.path.scheduler!r} at t = {bad}: "
                                 "α'_t or σ'_t is infinite there")
        outputs = []
        for rows in _chunk_rows(x.shape[0], means.numel()):
            o_rows = SchedulerOutput(o.alpha[rows], o.sigma[rows], o.d_alpha[rows], o.d_sigma[rows])
            diff, logits = _component_logits(x[rows], means, o_rows.alpha, var[rows], log_w)
            log_p = torch.logsumexp(logits, dim=1)
            resp = torch.exp(logits - log_p[:, None])
            outputs.append(compute(_Terms(x=x[rows], diff=diff, var=var[rows], resp=resp, log_p=log_p,
                                          means=means, stds2=stds2, out=o_rows)))
        return torch.cat(outputs)

    def log_prob(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(x) = logsumexp_k [log π_k + log N(x; α_t m_k, v_k I)], v_k = α_t² s_k² + σ_t², shape [B].

        At t = 0 the standard normal (for a scheduler with α_0 = 0, σ_0 = 1).
        """
        return self._map(x, t, lambda z: z.log_p, what="log p_t(x)")

    def posterior_x1(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[X1 | X_t = x] = Σ_k r_k(x) [m_k + (α_t s_k² / v_k)(x − α_t m_k)], shape [B, D]."""
        def compute(z: _Terms) -> Tensor:
            return z.resp @ z.means + z.weighted(z.out.alpha[:, None] * z.stds2 / z.var)

        return self._map(x, t, compute, what="E[X1 | X_t = x]")

    def posterior_x0(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[X0 | X_t = x] = (x − α_t E[X1 | X_t = x]) / σ_t, shape [B, D].

        Evaluated as Σ_k r_k(x) (σ_t / v_k)(x − α_t m_k), which stays finite at σ_t = 0 (it is 0 there).
        """
        return self._map(x, t, lambda z: z.weighted(z.out.sigma[:, None] / z.var), what="E[X0 | X_t = x]")

    def velocity(self, x: Tensor, t: float | Tensor) -> Tensor:
        """u_t(x) = α'_t E[X1 | x] + σ'_t E[X0 | x], shape [B, D]. Usable directly as a velocity field
        ``v(x, t)`` in :func:`fmlib.solvers.solve_ode`.

        Evaluated as Σ_k r_k(x) [α'_t m_k + g_k (x − α_t m_k)], g_k = (α'_t α_t s_k² + σ'_t σ_t) / v_k.
        """
        def compute(z: _Terms) -> Tensor:
            return z.out.d_alpha[:, None] * (z.resp @ z.means) + z.weighted(z.component_velocity_gain())

        return self._map(x, t, compute, what="the marginal velocity u_t(x)", needs_derivatives=True)

    def score(self, x: Tensor, t: float | Tensor) -> Tensor:
        """∇_x log p_t(x) = −Σ_k r_k(x) (x − α_t m_k) / v_k, shape [B, D]."""
        return self._map(x, t, lambda z: -z.weighted(1.0 / z.var), what="the score ∇log p_t(x)")

    def conditional_velocity_variance(self, x: Tensor, t: float | Tensor) -> Tensor:
        """E[‖u_t(x | X1, X0) − u_t(x)‖² | X_t = x] = tr Cov[α' X1 + σ' X0 | X_t = x], shape [B]
        (the irreducible part of the CFM loss at (x, t)).

        Law of total variance over the component k: with μ_k = α' m_k + g_k (x − α m_k) the conditional mean
        in component k and D s_k² (α'σ − σ'α)² / v_k its conditional trace-variance,
        Var = Σ_k r_k [D s_k² (α'σ − σ'α)² / v_k + ‖μ_k − u_t(x)‖²] ≥ 0 (each term computed non-negative).
        """
        def compute(z: _Terms) -> Tensor:
            o = z.out
            mu = o.d_alpha[:, None, None] * z.means[None] + z.component_velocity_gain()[:, :, None] * z.diff
            u = torch.einsum("bk,bkd->bd", z.resp, mu)
            between = (z.resp * (mu - u[:, None, :]).square().sum(-1)).sum(1)
            det2 = (o.d_alpha * o.sigma - o.d_sigma * o.alpha).square()
            within = z.x.shape[1] * det2 * (z.resp * z.stds2 / z.var).sum(1)
            return between + within

        return self._map(x, t, compute, what="Var[u_t(x | X1) | X_t = x]", needs_derivatives=True)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Alias of :meth:`velocity`, so the field can be passed where a model is expected."""
        return self.velocity(x, t)
