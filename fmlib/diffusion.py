"""Diffusion models as flow matching: SDE coefficients, log-SNR, samplers (DDIM/η, churn), loss weightings.

Book time throughout: **t = 0 noise, t = 1 data**, x_t = α_t x1 + σ_t x0 with x0 = ε ~ N(0, I). Diffusion
papers use s = 1 − t (s = 0 data, s = 1 noise), z_s = a_s x + b_s ε, a_s = α_{1−s}, b_s = σ_{1−s}.

**Log-SNR.** λ_t = log(α_t² / σ_t²), increasing in t; ρ_t = σ_t / α_t = e^{−λ_t / 2} is the noise level of
the scale-free state x̄ = x / α (EDM's σ).

**SDE coefficients.** The forward (noising) SDE dz = f(s) z ds + g(s) dw has the Gaussian law
z_s | x ~ N(a_s x, b_s² I) iff f = d log a / ds and g² = d b² / ds − 2 f b². In book time (d/ds = −d/dt)

    f = −α'_t / α_t,        g² = 2 σ_t (α'_t σ_t − σ'_t α_t) / α_t = σ_t² λ'_t.

**Marginal-preserving SDEs.** For any η ≥ 0 the SDE in book time

    dx = [u_t(x) + (η² g² / 2) ∇log p_t(x)] dt + η g dW_t

has the marginals p_t of the flow-matching ODE dx/dt = u_t(x) (its Fokker–Planck equation reduces to the
continuity equation). η = 0 is the ODE, η = 1 the time reversal of the forward SDE (drift −f x + g² ∇log p_t
in t; in diffusion time the reverse SDE runs s: 1 → 0 with drift f z − g² ∇log p_s). For a Gaussian source
the score follows from the velocity (``AffinePath.score_from_velocity``).

**DDIM(η).** One step t → t' (t < t') from predictions (x̂1, ε̂) at (x_t, t):

    x_{t'} = α_{t'} x̂1 + sqrt(σ_{t'}² − c²) ε̂ + c ξ,   c² = η² σ_{t'}² (1 − e^{λ_t − λ_{t'}}),   ξ ~ N(0, I).

η = 0 is DDIM, η = 1 DDPM's ancestral step. In x̄ = x/α and ρ = σ/α the η = 0 step is exactly
x̄_{t'} = x̄_t + (ρ_{t'} − ρ_t) ε̂: the Euler method of dx̄/dρ = ε̂ on the grid ρ_k.
**Churn** (EDM): before a step, raise the noise level ρ → ρ̂ = (1 + γ) ρ by adding sqrt(ρ̂² − ρ²) ξ to x̄
(moving to the time t̂ with ρ_t̂ = ρ̂), then step from t̂.
**EDM's sampler** (:func:`sample_edm`): churn, then Heun's method for dx̄/dρ = ε̂ from ρ_t̂ to the next node
(EDM's σ is ρ, its x is x̄, its D(x; σ) is x̂1; its decreasing σ_i are increasing book times t_i with
λ_{t_i} = −2 log σ_i).

**Loss weightings.** For a prediction of ``parametrization`` at x_t, the squared error is a multiple of the
ε-error: ‖pred − target‖² = w_ε(t) ‖ε̂ − ε‖² with w_ε = 1 (x0 = ε), σ²/α² (x1), 1/σ² (score),
((α'σ − σ'α)/α)² (velocity). Uniform t induces the density |dt/dλ| = 1/λ'_t on λ, so
E_t[w_ε ‖ε̂ − ε‖²] = ∫ W(λ) E‖ε̂ − ε‖²|_λ dλ with W(λ) = w_ε / λ'_t (:func:`effective_weight`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_batched, check_choice, check_positive_int, check_real, expand_like
from .paths import PARAMETRIZATIONS, AffinePath, Scheduler, SchedulerOutput, _time_tensor, batch_time
from .solvers import VelocityField

__all__ = [
    "SDECoefficients",
    "sde_coefficients",
    "d_log_snr",
    "time_from_log_snr",
    "RescaledScheduler",
    "ddpm_log_snr",
    "sde_drift",
    "grid_from_log_snr",
    "uniform_log_snr_grid",
    "edm_grid",
    "DiffusionSample",
    "predict_x1_x0",
    "sample_ddim",
    "sample_edm",
    "ddim_recursion_coefficients",
    "prediction_weights",
    "per_sample_loss",
    "epsilon_weight",
    "effective_weight",
    "reweighting",
    "sample_time_logit_normal",
    "sample_time_log_normal",
    "LOSS_RECIPES",
    "edm_epsilon_weight",
    "toy_flow_with_loss",
]


# ----------------------------------------------------------------------------------------------------------
# SDE coefficients and log-SNR


@dataclass(frozen=True)
class SDECoefficients:
    """f and g² of the forward SDE dz = f z ds + g dw (diffusion time s = 1 − t), at book times t (shape of t)."""

    f: Tensor
    g2: Tensor


def sde_coefficients(scheduler: Scheduler, t: float | Tensor) -> SDECoefficients:
    """The forward SDE's coefficients of an affine schedule, evaluated at s = 1 − t:

        f = d log a/ds = −α'_t / α_t,     g² = db²/ds − 2 f b² = 2 σ_t (α'_t σ_t − σ'_t α_t) / α_t.

    Infinite where α_t = 0 (the linear and cosine paths at t = 0): no SDE of this form reaches an exact
    N(0, I) in finite time. Shape of ``t``.
    """
    o = scheduler(t)
    det = o.d_alpha * o.sigma - o.d_sigma * o.alpha
    return SDECoefficients(f=-o.d_alpha / o.alpha, g2=2.0 * o.sigma * det / o.alpha)


def d_log_snr(scheduler: Scheduler, t: float | Tensor) -> Tensor:
    """λ'_t = dλ/dt = 2 (α'_t σ_t − σ'_t α_t) / (α_t σ_t) > 0 (inf at α_t = 0 or σ_t = 0). Shape of ``t``."""
    o = scheduler(t)
    return 2.0 * (o.d_alpha * o.sigma - o.d_sigma * o.alpha) / (o.alpha * o.sigma)


def time_from_log_snr(scheduler: Scheduler, lam: Tensor, *, iterations: int = 80) -> Tensor:
    """The time t ∈ [0, 1] with λ_t = ``lam`` (bisection in float64; λ_t is increasing), shape of ``lam``.

    λ below λ_0 gives 0 and above λ_1 gives 1 (clamped: the schedule does not reach it).

    Raises:
        ValueError: ``lam`` contains NaN.
    """
    lam = torch.as_tensor(lam, dtype=torch.float64)
    if bool(torch.isnan(lam).any()):
        raise ValueError("lam contains NaN")
    lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = scheduler.log_snr(mid) < lam
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class RescaledScheduler(Scheduler):
    """(c_t α_t, c_t σ_t) for a base scheduler and a positive scale c_t: same log-SNR, different coordinates.

    ``scale(t)`` returns (c_t, c'_t) for a tensor t. Derivatives by the product rule. The x̄ = x/α, ρ = σ/α
    coordinates (and so DDIM) are unchanged; the Euler method in (x, t) is not.
    """

    name = "rescaled"

    def __init__(self, base: Scheduler, scale: Callable[[Tensor], tuple[Tensor, Tensor]], label: str = "c") -> None:
        if not isinstance(base, Scheduler):
            raise TypeError(f"base must be a Scheduler, got {type(base).__name__}")
        self.base, self.scale, self.label = base, scale, label

    def _params(self) -> dict:
        return {"base": self.base.config(), "scale": self.label}

    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        t = _time_tensor(t)
        o = self.base(t)
        c, dc = self.scale(t)
        if not bool((c > 0).all()):
            raise ValueError("the scale c_t must be positive")
        return SchedulerOutput(alpha=c * o.alpha, sigma=c * o.sigma, d_alpha=dc * o.alpha + c * o.d_alpha,
                               d_sigma=dc * o.sigma + c * o.d_sigma)


def ddpm_log_snr(beta_start: float = 1e-4, beta_end: float = 0.02, n: int = 1000) -> Tensor:
    """λ of DDPM's discrete schedule (Ho et al.): β_i linear from ``beta_start`` to ``beta_end`` (i = 1..n),
    ᾱ_i = Π_{j ≤ i} (1 − β_j), λ_i = log(ᾱ_i / (1 − ᾱ_i)). Shape [n] in diffusion order (i = 1 least noisy).
    """
    n = check_positive_int(n, "steps")
    b0, b1 = check_real(beta_start, "beta_start"), check_real(beta_end, "beta_end")
    if not 0.0 < b0 <= b1 < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start!r}, {beta_end!r}")
    betas = torch.linspace(b0, b1, n, dtype=torch.float64)
    log_abar = torch.cumsum(torch.log1p(-betas), 0)
    return log_abar - torch.log(-torch.expm1(log_abar))


# ----------------------------------------------------------------------------------------------------------
# the marginal-preserving SDE family of a velocity model


def sde_drift(path: AffinePath, velocity: VelocityField, eta: float = 1.0
              ) -> tuple[VelocityField, Callable[[Tensor], Tensor]]:
    """(drift, diffusion) of dx = [u + (η² g²/2) ∇log p_t] dt + η g dW for :func:`fmlib.solvers.solve_sde`.

    The score is the velocity's, ∇log p_t = (α u − α' x) / (σ (α'σ − σ'α)) (Gaussian source, affine path),
    g² from :func:`sde_coefficients`. Every η ≥ 0 has the marginals of dx/dt = u (η = 0: the ODE; η = 1: the
    reverse-time SDE of the forward diffusion). Valid on times where α_t > 0 and σ_t > 0 (Euler–Maruyama
    never evaluates the drift at its final time, so t_end = 1 is allowed; start at t_start > 0 when α_0 = 0).

    Raises:
        ValueError: η negative; at call time, a t where g² or the score is infinite.
    """
    eta = check_real(eta, "eta", low=0.0)

    def g2_at(t: Tensor) -> Tensor:
        g2 = sde_coefficients(path.scheduler, t).g2
        if not bool(torch.isfinite(g2).all()):
            raise ValueError(f"g² is infinite for {path.scheduler!r} at some t in {t.unique()[:5].tolist()} "
                             "(α_t = 0): start the SDE at t_start > 0")
        return g2

    def drift(x: Tensor, t: Tensor) -> Tensor:
        u = velocity(x, t)
        if eta == 0.0:
            return u
        score = path.score_from_velocity(x, u, t)
        return u + expand_like(0.5 * eta**2 * g2_at(t).to(x.dtype), x) * score

    def diffusion(t: Tensor) -> Tensor:
        return eta * g2_at(t).clamp_min(0.0).sqrt()

    return drift, diffusion


# ----------------------------------------------------------------------------------------------------------
# time grids


def grid_from_log_snr(scheduler: Scheduler, lam: Tensor, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
    """The time grid [t_start, t(λ_1), …, t(λ_n), t_end] (float64, shape [n + 2]): interior nodes at the
    log-SNR values ``lam`` (an increasing [n] tensor, mapped by :func:`time_from_log_snr`), endpoints given.

    Raises:
        ValueError: the grid is not increasing (some λ lies outside (λ_{t_start}, λ_{t_end}) or ``lam`` is not
            increasing).
    """
    inner = time_from_log_snr(scheduler, torch.as_tensor(lam, dtype=torch.float64).flatten())
    grid = torch.cat([torch.tensor([float(t_start)], dtype=torch.float64), inner,
                      torch.tensor([float(t_end)], dtype=torch.float64)])
    if not bool((grid.diff() > 0).all()):
        raise ValueError("the grid is not increasing: the log-SNR range lies outside (t_start, t_end) "
                         f"for {scheduler!r}")
    return grid


def uniform_log_snr_grid(scheduler: Scheduler, steps: int, *, lam_min: float = -2 * math.log(80.0),
                         lam_max: float = -2 * math.log(0.002), t_start: float = 0.0,
                         t_end: float = 1.0) -> Tensor:
    """A grid of ``steps + 1`` times: t_start, then ``steps − 1`` interior nodes uniform in λ from ``lam_min``
    to ``lam_max``, then t_end. Defaults: EDM's noise range ρ ∈ [0.002, 80]. Shape [steps + 1], float64."""
    steps = check_positive_int(steps, "steps")
    if steps == 1:
        return torch.tensor([t_start, t_end], dtype=torch.float64)
    lam = torch.linspace(check_real(lam_min, "lam_min"), check_real(lam_max, "lam_max"), steps - 1, dtype=torch.float64)
    return grid_from_log_snr(scheduler, lam, t_start, t_end)


def edm_grid(scheduler: Scheduler, steps: int, *, rho: float = 7.0, sigma_min: float = 0.002,
             sigma_max: float = 80.0, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
    """Karras et al.'s grid: interior noise levels ρ_i = (σ_max^{1/r} + i/(n−1) (σ_min^{1/r} − σ_max^{1/r}))^r,
    i = 0..n−1 with n = steps − 1 (r = ``rho``), mapped to times by λ = −2 log ρ, between t_start and t_end.
    Shape [steps + 1], float64."""
    steps = check_positive_int(steps, "steps")
    r = check_real(rho, "rho", low=1e-6)
    lo, hi = check_real(sigma_min, "sigma_min", low=1e-12), check_real(sigma_max, "sigma_max", low=1e-12)
    if steps == 1:
        return torch.tensor([t_start, t_end], dtype=torch.float64)
    i = torch.linspace(0.0, 1.0, steps - 1, dtype=torch.float64)
    levels = (hi ** (1 / r) + i * (lo ** (1 / r) - hi ** (1 / r))) ** r
    return grid_from_log_snr(scheduler, -2.0 * torch.log(levels), t_start, t_end)


# ----------------------------------------------------------------------------------------------------------
# DDIM(η) and churn


@dataclass
class DiffusionSample:
    """Result of :func:`sample_ddim`: final ``x`` [B, ...], ``nfe``, the ``times`` [S+1] of the grid and, with
    ``record=True``, the ``trajectory`` [S+1, B, ...] (the state after each step, churn included)."""

    x: Tensor
    nfe: int
    times: Tensor
    trajectory: Tensor | None = None


def predict_x1_x0(path: AffinePath, field: VelocityField, x: Tensor, t: float, prediction: str
                  ) -> tuple[Tensor, Tensor]:
    """(x̂1, ε̂) at (x, t): one call ``field(x, t)`` returning ``prediction`` (``velocity``, ``x0``/``epsilon``,
    ``x1`` or ``score``), converted by ``path`` (x = α_t x̂1 + σ_t ε̂). ``x`` is [B, ...]; both outputs have its
    shape. The one place where the diffusion samplers evaluate a model.

    Raises:
        ValueError: an unknown ``prediction``; the field returns a shape other than ``x``'s.
    """
    check_choice(prediction, PARAMETRIZATIONS, what="prediction")
    tb = batch_time(t, x.shape[0], like=x)
    pred = field(x, tb)
    if pred.shape != x.shape:
        raise ValueError(f"the field returned shape {tuple(pred.shape)} for x of shape {tuple(x.shape)}")
    x1 = path.convert(pred, x, tb, source=prediction, target="x1")
    x0 = path.convert(pred, x, tb, source=prediction, target="x0")
    return x1, x0


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _rho(o: SchedulerOutput) -> float:
    return float(o.sigma / o.alpha) if float(o.alpha) > 0 else math.inf


def _increasing_grid(times: Tensor) -> Tensor:
    """``times`` as a flat float64 tensor; ``ValueError`` unless it is increasing in [0, 1] with ≥ 2 nodes."""
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() < 2 or not bool((times.diff() > 0).all()) or times[0] < 0 or times[-1] > 1:
        raise ValueError("times must be an increasing grid in [0, 1] with at least two nodes")
    return times


def sample_ddim(
    field: VelocityField,
    path: AffinePath,
    x_init: Tensor,
    *,
    times: Tensor,
    prediction: str = "velocity",
    eta: float = 0.0,
    churn: float = 0.0,
    generator: torch.Generator | None = None,
    record: bool = False,
) -> DiffusionSample:
    """DDIM(η) with optional EDM churn on the increasing grid ``times`` (t_0 → t_S), one NFE per step.

    Step k from t to t' = times[k+1] (see the module docstring): with churn γ > 0 the state first moves to the
    noisier t̂ with ρ_t̂ = (1 + γ) ρ_t, x ← (α_t̂/α_t) x + sqrt(σ_t̂² − (α_t̂ σ_t/α_t)²) ξ (skipped where
    ρ_t = ∞, at α_t = 0); then (x̂1, ε̂) are predicted at (x, t̂) and
    x_{t'} = α_{t'} x̂1 + sqrt(σ_{t'}² − c²) ε̂ + c ξ, c² = η² σ_{t'}² (1 − e^{λ_t̂ − λ_{t'}}).
    On the last step to σ_{t'} = 0 this returns x̂1 (deterministically). The same code runs for a trained model
    and for an exact field (``fmlib.analytic.MarginalField``): ``field(x, t)`` returns ``prediction``
    (``velocity``, ``x0``/``epsilon``, ``x1`` or ``score``).

    Raises:
        ValueError: a grid that is not increasing in [0, 1], η < 0, churn < 0, an unknown prediction.
    """
    check_batched(x_init, name="x_init", min_dim=1)
    check_choice(prediction, PARAMETRIZATIONS, what="prediction")
    eta, churn = check_real(eta, "eta", low=0.0), check_real(churn, "churn", low=0.0)
    times = _increasing_grid(times)
    sched = path.scheduler
    x, nfe = x_init, 0
    trajectory = [x] if record else None
    for k in range(times.numel() - 1):
        t, t_next = float(times[k]), float(times[k + 1])
        o = sched(torch.tensor(t, dtype=torch.float64))
        if churn > 0 and math.isfinite(_rho(o)):
            lam_hat = float(sched.log_snr(torch.tensor(t, dtype=torch.float64))) - 2 * math.log1p(churn)
            t_hat = float(time_from_log_snr(sched, torch.tensor(lam_hat)))
            o_hat = sched(torch.tensor(t_hat, dtype=torch.float64))
            ratio = float(o_hat.alpha / o.alpha)
            add = max(float(o_hat.sigma) ** 2 - (ratio * float(o.sigma)) ** 2, 0.0) ** 0.5
            x = ratio * x + add * _noise(x, generator)
            t, o = t_hat, o_hat
        x1, x0 = predict_x1_x0(path, field, x, t, prediction)
        nfe += 1
        o_next = sched(torch.tensor(t_next, dtype=torch.float64))
        a_next, s_next = float(o_next.alpha), float(o_next.sigma)
        c = 0.0
        if eta > 0 and s_next > 0:
            kept = (float(o.alpha) * s_next / (float(o.sigma) * a_next)) ** 2 if a_next > 0 else 1.0
            c = eta * s_next * max(1.0 - kept, 0.0) ** 0.5
        x = a_next * x1 + max(s_next**2 - c**2, 0.0) ** 0.5 * x0
        if c > 0:
            x = x + c * _noise(x, generator)
        if trajectory is not None:
            trajectory.append(x)
    return DiffusionSample(x=x, nfe=nfe, times=times,
                           trajectory=None if trajectory is None else torch.stack(trajectory))


def sample_edm(
    field: VelocityField,
    path: AffinePath,
    x_init: Tensor,
    *,
    times: Tensor,
    prediction: str = "velocity",
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    churn: float = 0.0,
    generator: torch.Generator | None = None,
    record: bool = False,
) -> DiffusionSample:
    """Karras et al.'s (EDM, 2022) stochastic second-order sampler on the increasing grid ``times`` (t_0 → t_N).

    EDM integrates dx̄/dρ = ε̂(x̄, ρ) in the scale-free state x̄ = x/α_t at the noise level ρ = σ_t/α_t (EDM's σ;
    EDM's D(x̄; σ) is x̂1, and its slope (x̄ − D)/σ is ε̂). EDM's σ_i, decreasing to 0, are this grid's
    ρ_k = ρ_{t_k}, increasing t; EDM's x_i is α_{t_k} x̄. Step k from t = t_k to t' = t_{k+1}:

    1. churn: γ = min(s_churn / N, √2 − 1) if s_tmin ≤ ρ_t ≤ s_tmax else 0 (N = number of steps), or the
       constant γ = ``churn`` (the parameter of :func:`sample_ddim`, not capped) in that range; the noise
       level rises to ρ̂ = (1 + γ) ρ_t at the time t̂ with λ_t̂ = −2 log ρ̂ (clamped to [0, 1]: ρ̂ = ρ_t̂), and
       x̄̂ = x̄ + s_noise sqrt(ρ̂² − ρ_t²) ξ, ξ ~ N(0, I);
    2. Euler: ε̂ at (α_t̂ x̄̂, t̂), x̄' = x̄̂ + (ρ_{t'} − ρ̂) ε̂;
    3. Heun's correction unless σ_{t'} = 0: ε̂' at (α_{t'} x̄', t'), x̄' = x̄̂ + (ρ_{t'} − ρ̂)(ε̂ + ε̂')/2.

    ``s_tmin``/``s_tmax`` bound ρ (EDM's σ), not book time. NFE = 2N, or 2N − 1 when the grid ends at σ = 0
    (the last step then returns x̂1, as :func:`sample_ddim`). With γ = 0 (``s_churn = 0``) this is the
    deterministic Heun method of dx̄/dρ = ε̂ on the nodes ρ_k, which is not the Heun method of dx/dt = u in
    (x, t) (second-order methods are not invariant under the change of variables). EDM starts at
    ρ = σ_max (``edm_grid(scheduler, N + 1)[1:]``, with x_init = σ_{t_0} z); a grid that starts at α = 0
    (ρ = ∞, book time t = 0, x_init = z) is allowed too: its first step is then the Euler (DDIM) step
    x' = α_{t'} x̂1 + σ_{t'} ε̂ from (z, t_0), without churn or correction (one NFE), so NFE = 2N − 2 for a
    grid from α = 0 to σ = 0. The same code runs for a trained model and for an exact field; ``field(x, t)``
    returns ``prediction``.

    Raises:
        ValueError: a grid that is not increasing in [0, 1] or has α = 0 at more than its first node;
            s_churn, s_noise or churn < 0, both s_churn and churn given; s_tmin > s_tmax; an unknown prediction.
    """
    check_batched(x_init, name="x_init", min_dim=1)
    check_choice(prediction, PARAMETRIZATIONS, what="prediction")
    s_churn, s_noise = check_real(s_churn, "s_churn", low=0.0), check_real(s_noise, "s_noise", low=0.0)
    s_tmin = check_real(s_tmin, "s_tmin", low=0.0)
    churn = check_real(churn, "churn", low=0.0)
    if churn > 0 and s_churn > 0:
        raise ValueError(f"give EDM's s_churn or a constant churn γ, not both (got {s_churn!r} and {churn!r})")
    if not s_tmax >= s_tmin:
        raise ValueError(f"need s_tmin <= s_tmax, got {s_tmin!r} and {s_tmax!r}")
    times = _increasing_grid(times)
    sched = path.scheduler
    out = sched(times)
    alpha, sigma = out.alpha.tolist(), out.sigma.tolist()
    if not all(a_ > 0 for a_ in alpha[1:]):
        raise ValueError("α = 0 (ρ = ∞) is allowed at the first node of the grid only: EDM's steps need a finite "
                         "noise level, e.g. times = edm_grid(scheduler, steps)")
    steps = times.numel() - 1
    gamma_max = churn if churn > 0 else min(s_churn / steps, math.sqrt(2.0) - 1.0)
    trajectory = [x_init] if record else None
    nfe, first = 0, 0
    if alpha[0] > 0:
        x_bar = x_init / alpha[0]
    else:  # from ρ = ∞: the Euler (DDIM) step in x, one NFE
        x1_hat, eps0 = predict_x1_x0(path, field, x_init, float(times[0]), prediction)
        x_bar, nfe, first = (alpha[1] * x1_hat + sigma[1] * eps0) / alpha[1], 1, 1
        if trajectory is not None:
            trajectory.append(alpha[1] * x_bar)
    rho = [s_ / a_ if a_ > 0 else math.inf for a_, s_ in zip(alpha, sigma)]

    def eps_hat(state: Tensor, t: float, a: float) -> Tensor:
        nonlocal nfe
        nfe += 1
        return predict_x1_x0(path, field, a * state, t, prediction)[1]

    for k in range(first, steps):
        t, a, r = float(times[k]), alpha[k], rho[k]
        gamma = gamma_max if s_tmin <= r <= s_tmax else 0.0
        if gamma > 0:
            lam_hat = torch.tensor(-2.0 * math.log((1.0 + gamma) * r), dtype=torch.float64)
            t = float(time_from_log_snr(sched, lam_hat))
            o_hat = sched(torch.tensor(t, dtype=torch.float64))
            a = float(o_hat.alpha)
            r_hat = float(o_hat.sigma) / a
            x_bar = x_bar + s_noise * max(r_hat**2 - r**2, 0.0) ** 0.5 * _noise(x_bar, generator)
            r = r_hat
        d = eps_hat(x_bar, t, a)
        x_next = x_bar + (rho[k + 1] - r) * d
        if sigma[k + 1] > 0:
            d_next = eps_hat(x_next, float(times[k + 1]), alpha[k + 1])
            x_next = x_bar + (rho[k + 1] - r) * 0.5 * (d + d_next)
        x_bar = x_next
        if trajectory is not None:
            trajectory.append(alpha[k + 1] * x_bar)
    return DiffusionSample(x=alpha[-1] * x_bar, nfe=nfe, times=times,
                           trajectory=None if trajectory is None else torch.stack(trajectory))


def ddim_recursion_coefficients(scheduler: Scheduler, times: Tensor, *, eta: float = 0.0,
                                churn: float = 0.0) -> Tensor:
    """a_k of the recursion x̄_{k+1} = a_k x̄_k + (1 − a_k) x̂1_k + noise that :func:`sample_ddim` follows in the
    scale-free state x̄ = x/α (deterministic part, exact): with ρ̂ = (1 + γ) ρ_k the churned level,
    a_k = κ ρ_{k+1}/ρ̂, κ = sqrt(1 − η² (1 − (ρ_{k+1}/ρ̂)²)). Steps from ρ = ∞ (α = 0) have a_k = 0.
    Shape [S] float64."""
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    eta, churn = check_real(eta, "eta", low=0.0), check_real(churn, "churn", low=0.0)
    out = []
    for k in range(times.numel() - 1):
        rho, rho_next = _rho(scheduler(times[k])), _rho(scheduler(times[k + 1]))
        if not math.isfinite(rho):
            out.append(0.0)
            continue
        q = rho_next / ((1.0 + churn) * rho)
        out.append(q * max(1.0 - eta**2 * (1.0 - q * q), 0.0) ** 0.5)
    return torch.tensor(out, dtype=torch.float64)


def prediction_weights(a: Tensor) -> Tensor:
    """Weights w_k = (1 − a_k) Π_{j>k} a_j of each step's prediction x̂1_k in the output of the linear
    recursion x̄_{k+1} = a_k x̄_k + (1 − a_k) x̂1_k; Σ_k w_k = 1 − Π_k a_k. Shape of ``a`` ([S])."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    later = torch.cat([torch.flip(torch.cumprod(torch.flip(a[1:], [0]), 0), [0]), a.new_ones(1)])
    return (1.0 - a) * later


# ----------------------------------------------------------------------------------------------------------
# loss weightings and time samplers


def epsilon_weight(path: AffinePath, t: float | Tensor, parametrization: str) -> Tensor:
    """w_ε(t) with ‖pred − target‖² = w_ε ‖ε̂ − ε‖² at fixed x_t: 1 (x0 = ε), σ²/α² (x1), 1/σ² (score),
    ((α'σ − σ'α)/α)² (velocity). Shape of ``t``."""
    name = check_choice(parametrization, PARAMETRIZATIONS, what="parametrization")
    o = path.scheduler(t)
    if name in ("x0", "epsilon"):
        return torch.ones_like(o.alpha)
    if name == "x1":
        return (o.sigma / o.alpha).square()
    if name == "score":
        return o.sigma.reciprocal().square()
    return ((o.d_alpha * o.sigma - o.d_sigma * o.alpha) / o.alpha).square()


def effective_weight(path: AffinePath, t: float | Tensor, parametrization: str) -> Tensor:
    """W(λ_t) = w_ε(t) / λ'_t: the weight on E‖ε̂ − ε‖² per unit log-SNR of the ``parametrization`` loss with
    t ~ U[0, 1] (uniform t has density |dt/dλ| = 1/λ'_t in λ). Shape of ``t``."""
    return epsilon_weight(path, t, parametrization) / d_log_snr(path.scheduler, t)


def reweighting(path: AffinePath, parametrization: str, w_lambda: Callable[[Tensor], Tensor]
                ) -> Callable[[Tensor], Tensor]:
    """A time weighting for :func:`fmlib.losses.cfm_loss` that turns the ``parametrization`` loss into
    E[w(λ_t) ‖ε̂ − ε‖²]: weight(t) = w_lambda(λ_t) / w_ε(t)."""
    check_choice(parametrization, PARAMETRIZATIONS, what="parametrization")

    def weighting(t: Tensor) -> Tensor:
        return w_lambda(path.scheduler.log_snr(t)) / epsilon_weight(path, t, parametrization)

    return weighting


def per_sample_loss(path: AffinePath, data, weight: Callable[[AffinePath, Tensor], Tensor], n: int, *,
                    theta: float = 0.1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Monte Carlo terms of an ε-loss of a deliberately imperfect exact field, and of its θ-derivative.

    Draws t ~ U(0, 1) (clamped to [1e-6, 1 − 1e-6]) [n, 1], x1 ~ ``data`` (a
    :class:`fmlib.analytic.GaussianMixture`) and ε ~ N(0, I), in this order from ``generator``, all float64.
    The field is ε̂_θ = (1 − θ) E[ε | x̄] + θ x̄ at x̄ = x_t/(α_t + σ_t) = τ x1 + (1 − τ) ε, τ = α_t/(α_t + σ_t):
    the linear path at the same log-SNR, so ε̂_θ depends on t only through λ_t (E[ε | x̄] is the exact
    posterior of the linear path). Returns ([n], [n]):

        ℓ = w_ε(t) ‖ε̂_θ − ε‖²,        dℓ/dθ = 2 w_ε(t) (ε̂_θ − ε)·(x̄ − E[ε | x̄]),

    with w_ε = ``weight(path, t)`` (t of shape [n, 1]; e.g. ``lambda p, t: epsilon_weight(p, t, "velocity")``).
    Their means estimate the loss E ℓ of the schedule and weighting and its gradient in θ.

    Raises:
        ValueError: n not a positive integer, θ not a real number.
    """
    from .analytic import MarginalField
    from .paths import CondOTScheduler

    n = check_positive_int(n, "n")
    theta = check_real(theta, "theta")
    t = torch.rand(n, 1, generator=generator, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    x1 = data.sample(n, generator=generator).to(torch.float64)
    eps = torch.randn(n, data.dim, generator=generator, dtype=torch.float64)
    o = path.scheduler(t)
    tau = o.alpha / (o.alpha + o.sigma)
    x_bar = tau * x1 + (1 - tau) * eps
    post = MarginalField(AffinePath(CondOTScheduler()), data).posterior_x0(x_bar, tau.flatten())
    err = (1 - theta) * post + theta * x_bar - eps
    w = weight(path, t)
    return ((w * err.square().sum(-1, keepdim=True)).flatten(),
            (2 * w * (err * (x_bar - post)).sum(-1, keepdim=True)).flatten())


def sample_time_logit_normal(batch: int, *, mean: float = 0.0, std: float = 1.0,
                             generator: torch.Generator | None = None) -> Tensor:
    """t = sigmoid(m + s Z), Z ~ N(0, 1) (SD3's logit-normal time density), shape [batch], in (0, 1)."""
    batch = check_positive_int(batch, "steps")
    z = torch.randn(batch, generator=generator, device=generator.device if generator is not None else "cpu")
    return torch.sigmoid(check_real(mean, "mean") + check_real(std, "std", low=0.0) * z)


def sample_time_log_normal(batch: int, scheduler: Scheduler, *, p_mean: float = -1.2, p_std: float = 1.2,
                           generator: torch.Generator | None = None) -> Tensor:
    """EDM's log-normal noise levels: log ρ ~ N(p_mean, p_std²), ρ = σ/α, mapped to t by λ = −2 log ρ.
    Shape [batch] (float64 → default dtype)."""
    batch = check_positive_int(batch, "steps")
    z = torch.randn(batch, generator=generator, device=generator.device if generator is not None else "cpu")
    lam = -2.0 * (check_real(p_mean, "p_mean") + check_real(p_std, "p_std", low=0.0) * z)
    return time_from_log_snr(scheduler, lam.double().cpu()).to(torch.get_default_dtype())


# ----------------------------------------------------------------------------------------------------------
# one network, four losses (the chapter's weighting experiment)

LOSS_RECIPES: dict[str, dict] = {
    "ε-MSE, uniform t": {"scheduler": "condot", "parametrization": "x0", "time": "uniform"},
    "flow matching": {"scheduler": "condot", "parametrization": "velocity", "time": "uniform"},
    "v-MSE, cosine": {"scheduler": "cosine", "parametrization": "velocity", "time": "uniform"},
    "EDM-like": {"scheduler": "condot", "parametrization": "velocity", "time": "log_normal"},
}
"""The losses compared in the diffusion chapter. Each is E‖ε̂ − ε‖² under a weighting W(λ):

* ``ε-MSE, uniform t``: ε-prediction on the linear path, t ~ U[0, 1];
* ``flow matching``: velocity on the linear path, t ~ U[0, 1] (W = e^{−λ/2}/2);
* ``v-MSE, cosine``: velocity on the cosine path (= −π/2 times the v-prediction), t ~ U[0, 1];
* ``EDM-like``: velocity on the linear path with EDM's log-normal noise levels (log ρ ~ N(−1.2, 1.2²)) and
  EDM's weight (ρ² + σ_data²)/σ_data² on the ε-error (σ_data = 0.5), applied through :func:`reweighting`.
"""

EDM_SIGMA_DATA = 0.5


def edm_epsilon_weight(lam: Tensor, sigma_data: float = EDM_SIGMA_DATA) -> Tensor:
    """EDM's loss weight λ(ρ) = (ρ² + σ_d²)/(ρ σ_d)² on the denoiser error, as a weight on the ε-error:
    (ρ² + σ_d²)/σ_d² with ρ = e^{−λ/2} (the denoiser error is ρ times the ε-error). Shape of ``lam``."""
    return (torch.exp(-lam) + sigma_data**2) / sigma_data**2


def toy_flow_with_loss(dataset: str, loss: str, *, steps: int | None = None, seed: int = 0,
                       progress: bool = True):
    """Train (or load) the zoo's 2-D MLP on ``dataset`` with one of :data:`LOSS_RECIPES`.

    The three uniform-time recipes are :func:`fmlib.zoo.toy_flow` runs (shared with other chapters through
    the cache); ``EDM-like`` uses the same network and optimiser with log-normal times and EDM's weight.
    Returns ``(run, path, prediction)``: the :class:`fmlib.train.TrainResult`, its :class:`AffinePath` and the
    name of what ``run.model`` predicts (for :func:`sample_ddim`).
    """
    from dataclasses import replace

    from . import data as data_mod
    from . import losses, models, paths, runtime, train, zoo

    recipe = LOSS_RECIPES[check_choice(loss, LOSS_RECIPES, what="loss recipe")]
    overrides = {} if steps is None else {"steps": steps}
    path = AffinePath(paths.get_scheduler(recipe["scheduler"]))
    if recipe["time"] == "uniform":
        run = zoo.toy_flow(dataset, scheduler=recipe["scheduler"], parametrization=recipe["parametrization"],
                           seed=seed, progress=progress, **overrides)
        return run, path, recipe["parametrization"]
    size = replace(zoo.toy_size(), **overrides)
    runtime.seed_everything(seed)
    model = models.MLP(dim=2, hidden=size.hidden, depth=size.depth)
    weighting = reweighting(path, recipe["parametrization"], edm_epsilon_weight)

    def loss_fn(m, batch: int, g: torch.Generator) -> Tensor:
        device = next(m.parameters()).device
        x1 = data_mod.sample_toy(dataset, batch, generator=g).to(device)
        t = sample_time_log_normal(batch, path.scheduler, generator=g).to(x1)
        return losses.conditional_flow_matching_loss(m, path, x1, t=t, parametrization=recipe["parametrization"],
                                                     weighting=weighting, generator=g)

    config = train.TrainConfig(steps=size.steps, batch_size=size.batch_size, lr=size.lr, seed=seed, amp=False)
    key = {"recipe": "toy_flow_with_loss", "loss": loss, "dataset": dataset, "path": path.config(),
           "sigma_data": EDM_SIGMA_DATA, "p_mean": -1.2, "p_std": 1.2}
    run = train.train(model, loss_fn, config, name=f"toy-{dataset}-edm-like", key=key, progress=progress)
    return run, path, recipe["parametrization"]
