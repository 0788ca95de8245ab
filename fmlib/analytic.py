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

Class-conditional data (:class:`LabelledMixture`): each component k carries a class label l_k, so
q(x | c) = Σ_{k: l_k = c} π_k N(m_k, s_k² I) / P(c) with P(c) = Σ_{k: l_k = c} π_k, and every quantity above
exists per class. :class:`ConditionalField` gives u_t(x | c), the scores, the noisy-point class posterior
p_t(c | x) = Σ_{k: l_k = c} r_k(x) and the tilted densities p_t(x) p_t(c | x)^w of guidance; it is callable as a
class-conditional model ``field(x, t, y)`` with a null label (``y = C`` gives the unconditional field), so
:func:`fmlib.guidance.guided_velocity` applied to it is the exact guided field.
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

__all__ = ["GaussianMixture", "MarginalField", "LabelledMixture", "ConditionalField"]

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
        return self.sample_with_components(n, generator=generator)[0]

    def sample_with_components(self, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Like :meth:`sample`, also returning the component index k [n] (long) of each sample."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        idx = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        noise = torch.randn(int(n), self.dim, generator=generator, dtype=self.means.dtype, device=self.means.device)
        return self.means[idx] + self.stds.to(self.means.dtype)[idx, None] * noise, idx

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
    log_resp: Tensor      # log r_k(x), finite where r_k underflows
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
            log_resp = logits - log_p[:, None]
            outputs.append(compute(_Terms(x=x[rows], diff=diff, var=var[rows], resp=log_resp.exp(),
                                          log_resp=log_resp, log_p=log_p,
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


# ------------------------------------------------------------------------------- class-conditional data

def _class_log_posterior(log_resp: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """log P(c | x) = logsumexp_{k: l_k = c} log r_k(x) for log_resp [B, K], labels [K] → [B, C]."""
    member = labels[None, :] == torch.arange(num_classes, device=labels.device)[:, None]         # [C, K]
    masked = log_resp[:, None, :].masked_fill(~member.to(log_resp.device)[None], float("-inf"))  # [B, C, K]
    return torch.logsumexp(masked, dim=2)


def _class_index(y: object, num_classes: int, *, allow_null: bool) -> int:
    """``y`` checked to be a class index 0..C − 1 (or the null label C when ``allow_null``)."""
    top = num_classes if allow_null else num_classes - 1
    if isinstance(y, bool) or not isinstance(y, numbers.Integral) or not 0 <= y <= top:
        what = f"a class 0..{num_classes - 1}" + (f" or the null label {num_classes}" if allow_null else "")
        raise ValueError(f"label must be {what}, got {y!r}")
    return int(y)


@dataclass(frozen=True)
class LabelledMixture:
    """Class-conditional Gaussian-mixture data: component k of ``mixture`` belongs to class ``labels[k]``.

    q(x | c) = Σ_{k: l_k = c} π_k N(x; m_k, s_k² I) / P(c), P(c) = Σ_{k: l_k = c} π_k, q(x) = Σ_c P(c) q(x | c).
    ``labels`` [K] integer, every class 0..C − 1 present; C = :attr:`num_classes` and the null label ∅ = C.

    Raises:
        ValueError: labels not an integer [K] tensor, or some class 0..max(labels) has no component.
    """

    mixture: GaussianMixture
    labels: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.mixture, GaussianMixture):
            raise ValueError(f"mixture must be a GaussianMixture, got {type(self.mixture).__name__}")
        k = self.mixture.n_components
        lab = self.labels
        if not torch.is_tensor(lab) or lab.dtype.is_floating_point or lab.dtype.is_complex or lab.dtype == torch.bool \
                or tuple(lab.shape) != (k,):
            raise ValueError(f"labels must be an integer tensor of shape [{k}] (one per component), got {lab!r}")
        if int(lab.min()) < 0:
            raise ValueError("labels must be non-negative")
        missing = sorted(set(range(int(lab.max()) + 1)) - set(lab.tolist()))
        if missing:
            raise ValueError(f"every class 0..{int(lab.max())} needs a component; none for {missing}")
        object.__setattr__(self, "labels", lab.long().to(self.mixture.means.device))

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return int(self.labels.max()) + 1

    @property
    def null_label(self) -> int:
        """The index C of the null label ∅ (no class: the unconditional distribution)."""
        return self.num_classes

    def class_prior(self) -> Tensor:
        """P(c) = Σ_{k: l_k = c} π_k, shape [C]."""
        w = self.mixture.log_weights().exp()
        return torch.zeros(self.num_classes, dtype=w.dtype, device=w.device).index_add_(0, self.labels, w)

    def given(self, c: int) -> GaussianMixture:
        """q(x | c) as a :class:`GaussianMixture` (the class's components, weights renormalised); ``c`` = ∅
        gives q itself."""
        c = _class_index(c, self.num_classes, allow_null=True)
        if c == self.null_label:
            return self.mixture
        keep = self.labels == c
        w = self.mixture.weights[keep]
        return GaussianMixture(means=self.mixture.means[keep], stds=self.mixture.stds[keep], weights=w / w.sum())

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n labelled samples (x [n, D], y [n] long) of the joint q(x, c)."""
        x, idx = self.mixture.sample_with_components(n, generator=generator)
        return x, self.labels[idx]

    def class_log_posterior(self, x: Tensor) -> Tensor:
        """log q(c | x) for x [B, D] → [B, C] (the Bayes classifier of the data; needs all stds > 0)."""
        if not bool((self.mixture.stds > 0).all()):
            raise ValueError("class_log_posterior needs all stds > 0: point masses have no density")
        x = _check_points(x, self.mixture.dim)
        means, log_w = self.mixture.means.to(x), self.mixture.log_weights().to(x)
        variances = self.mixture.stds.to(x).square()[None, :]
        out = []
        for rows in _chunk_rows(x.shape[0], means.numel()):
            logits = _component_logits(x[rows], means, x.new_ones(x[rows].shape[0]), variances, log_w)[1]
            out.append(_class_log_posterior(logits - torch.logsumexp(logits, 1, keepdim=True), self.labels,
                                            self.num_classes))
        return torch.cat(out)

    def tilted_log_density(self, x: Tensor, c: int, scale: float) -> Tensor:
        """log q(x) + w log q(c | x) = log [q(x | c) q(c | x)^{w − 1}] + log P(c), unnormalised, x [B, D] → [B].

        The density CFG with weight w is often said to sample; w = 1 gives q(x | c) P(c), w = 0 gives q(x).
        """
        c = _class_index(c, self.num_classes, allow_null=False)
        w = _finite(scale, "scale")
        return self.mixture.log_prob(x) + w * self.class_log_posterior(x)[:, c]

    def sample_tilted(self, n: int, c: int, scale: float, *, generator: torch.Generator | None = None,
                      max_draws: int = 10_000_000) -> Tensor:
        """n exact samples [n, D] of the tilted density q̃(x) ∝ q(x) q(c | x)^w (:meth:`tilted_log_density`),
        w ≥ 0, by rejection from q: a draw x ~ q is kept with probability q(c | x)^w ≤ 1.

        Raises:
            ValueError: w < 0 or not finite, a bad class, or more than ``max_draws`` proposals needed.
        """
        c = _class_index(c, self.num_classes, allow_null=False)
        w = _finite(scale, "scale")
        if w < 0:
            raise ValueError(f"sample_tilted needs scale ≥ 0 (acceptance q(c|x)^w ≤ 1), got {w}")
        kept, total, draws = [], 0, 0
        while total < n:
            if draws >= max_draws:
                raise ValueError(f"sample_tilted: acceptance too low ({total} of {draws} proposals kept)")
            x = self.mixture.sample(max(1024, 2 * n), generator=generator)
            u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
            keep = u.log() < w * self.class_log_posterior(x)[:, c]
            kept.append(x[keep])
            total += int(keep.sum())
            draws += x.shape[0]
        return torch.cat(kept)[:n]


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class ConditionalField:
    """Exact class-conditional quantities of an affine path (standard Gaussian source) and labelled mixture data.

    Per class c, p_t(x | c) is the marginal path of q(x | c), so u_t(x | c) and ∇log p_t(x | c) are
    :class:`MarginalField` quantities of ``data.given(c)``; label C (the null label ∅) gives the unconditional
    ones. ``field(x, t, y)`` is :meth:`velocity`: the exact counterpart of a class-conditional model with
    ``null_label`` = C, so ``fmlib.guidance.guided_velocity(field, x, t, y, scale=w)`` is the exact guided field.
    Shapes: x [B, D], t a number, 0-d or [B], y [B] integer labels in 0..C (or one int for all).
    """

    def __init__(self, path: AffinePath, data: LabelledMixture) -> None:
        if not isinstance(data, LabelledMixture):
            raise TypeError(f"data must be a LabelledMixture, got {type(data).__name__}")
        self.path, self.data = path, data
        self.fields = [MarginalField(path, data.given(c)) for c in range(data.num_classes + 1)]

    @property
    def null_label(self) -> int:
        """C, the label of the unconditional field."""
        return self.data.null_label

    def _per_label(self, method: str, x: Tensor, t: float | Tensor, y: Tensor | int) -> Tensor:
        x = _check_points(x, self.data.mixture.dim)
        t = batch_time(t, x.shape[0], like=x)
        if not torch.is_tensor(y):
            y = torch.full((x.shape[0],), _class_index(y, self.data.num_classes, allow_null=True))
        if y.dtype.is_floating_point or y.dtype == torch.bool or tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"labels y must be an integer tensor of shape [{x.shape[0]}], got {y.dtype} "
                             f"{tuple(y.shape)}")
        y = y.to(x.device)
        out = torch.empty_like(x)
        for c in torch.unique(y).tolist():
            rows = y == c
            field = self.fields[_class_index(c, self.data.num_classes, allow_null=True)]
            out[rows] = getattr(field, method)(x[rows], t[rows])
        return out

    def velocity(self, x: Tensor, t: float | Tensor, y: Tensor | int) -> Tensor:
        """u_t(x | y) (u_t(x) for y = ∅), shape [B, D]."""
        return self._per_label("velocity", x, t, y)

    def score(self, x: Tensor, t: float | Tensor, y: Tensor | int) -> Tensor:
        """∇_x log p_t(x | y) (the unconditional score for y = ∅), shape [B, D]."""
        return self._per_label("score", x, t, y)

    def class_log_posterior(self, x: Tensor, t: float | Tensor) -> Tensor:
        """log p_t(c | x) = logsumexp_{k: l_k = c} log r_k(x), shape [B, C]: the exact noisy-point classifier,
        usable as ``classifier(x, t)`` in :class:`fmlib.guidance.ClassifierGuidedField`."""
        labels, n = self.data.labels, self.data.num_classes
        return self.fields[-1]._map(x, t, lambda z: _class_log_posterior(z.log_resp, labels.to(z.x.device), n),
                                    what="the class posterior p_t(c | x)")

    def classifier_score(self, x: Tensor, t: float | Tensor, y: Tensor | int) -> Tensor:
        """∇_x log p_t(y | x) = ∇log p_t(x | y) − ∇log p_t(x) (Bayes' rule), shape [B, D]."""
        null = torch.full((x.shape[0],), self.null_label, device=x.device)
        return self.score(x, t, y) - self.score(x, t, null)

    def tilted_log_density(self, x: Tensor, t: float | Tensor, c: int, scale: float) -> Tensor:
        """log p_t(x) + w log p_t(c | x) (unnormalised), shape [B]: the density whose velocity-from-score is
        the CFG field at time t."""
        c = _class_index(c, self.data.num_classes, allow_null=False)
        w = _finite(scale, "scale")
        return self.fields[-1].log_prob(x, t) + w * self.class_log_posterior(x, t)[:, c]

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """:meth:`velocity`, with y = None meaning ∅ (as the book's models do)."""
        return self.velocity(x, t, self.null_label if y is None else y)
