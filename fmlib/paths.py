"""Affine probability paths and their schedulers.

Convention used everywhere in fmlib and the book: **t = 0 is noise, t = 1 is data**. A sample of the path is

    x_t = α_t x1 + σ_t x0,        x0 ~ p (source, usually N(0, I)),  x1 ~ q (data),

and its conditional velocity (the time derivative of that line, the regression target of flow matching) is

    dx_t/dt = α'_t x1 + σ'_t x0.

A scheduler returns (α_t, σ_t, α'_t, σ'_t). The linear / CondOT path is α_t = t, σ_t = 1 − (1 − σ_min) t.

Conversions between parametrizations (for any affine scheduler, with x = x_t):

    velocity from x1-prediction:  v = (σ'/σ) x + (α' − σ' α/σ) x̂1
    velocity from x0-prediction:  v = (α'/α) x + (σ' − α' σ/α) x̂0          (x0-prediction = ε-prediction)
    x1 from velocity:             x̂1 = (σ v − σ' x) / (α' σ − σ' α)
    x0 from velocity:             x̂0 = (α v − α' x) / (σ' α − α' σ)
    x0 from x1 / x1 from x0:      x̂0 = (x − α x̂1)/σ,   x̂1 = (x − σ x̂0)/α
    score (Gaussian source only): ∇ log p_t(x) = −x̂0 / σ

Each formula is singular where its denominator vanishes (x1-forms at σ_t = 0, x0-forms at α_t = 0);
the functions raise instead of returning inf/NaN there.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import (as_time, check_batched, check_choice, check_real, check_same_shape, check_unit_interval, expand_like,
                      times_are_checked)

__all__ = [
    "SchedulerOutput",
    "Scheduler",
    "CondOTScheduler",
    "VPScheduler",
    "VEScheduler",
    "CosineScheduler",
    "SCHEDULERS",
    "get_scheduler",
    "PathSample",
    "AffinePath",
    "PARAMETRIZATIONS",
]

PARAMETRIZATIONS: tuple[str, ...] = ("velocity", "x0", "x1", "epsilon", "score")
"""Names of the quantities a model may predict. ``epsilon`` is a synonym of ``x0`` (the source sample)."""


@dataclass(frozen=True)
class SchedulerOutput:
    """(α_t, σ_t, α'_t, σ'_t) evaluated at a tensor of times; every field has the shape of that tensor."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


def batch_time(t: float | Tensor, batch: int, *, like: Tensor) -> Tensor:
    """:func:`fmlib._checks.as_time` (t as a checked [batch] tensor in ``like``'s dtype and device), except that a
    Python number is converted in ``like``'s dtype directly, so 0.9 stays 0.9 in float64 (not float32's 0.89999998)."""
    if not torch.is_tensor(t) and torch.is_tensor(like) and like.is_floating_point():
        t = torch.tensor(float(t), dtype=like.dtype, device=like.device)
    return as_time(t, batch, like=like)


def _time_tensor(t: float | Tensor) -> Tensor:
    """``t`` as a floating tensor (any shape; a Python number becomes a 0-d tensor of the default dtype),
    checked to lie in [0, 1]."""
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), dtype=torch.get_default_dtype())
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    check_unit_interval(t, name="t")
    return t


class Scheduler(ABC):
    """An affine schedule t ↦ (α_t, σ_t) on [0, 1] with t = 0 noise and t = 1 data.

    Subclasses implement :meth:`__call__` (validating ``t`` first) and, if they take parameters,
    :meth:`_params` (used by :meth:`config` and ``repr``); derivatives are closed-form, not finite differences.
    ``__call__`` raises ``ValueError`` for t outside [0, 1] or NaN.
    """

    name: str
    finite_derivatives: bool = True
    """Whether α'_t and σ'_t are finite on all of [0, 1] (then a path sample at checked times needs no scan)."""

    @abstractmethod
    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        """Evaluate (α_t, σ_t, α'_t, σ'_t) elementwise at ``t`` (a number or a tensor of any shape).

        The outputs have the shape, dtype and device of ``t`` (a number gives 0-d tensors of the default dtype).

        Raises:
            ValueError: NaN or a value outside [0, 1].
        """

    def _params(self) -> dict[str, float]:
        """The constructor's keyword parameters as Python floats (none by default)."""
        return {}

    def alpha_sigma(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) alone, elementwise at ``t`` (``ValueError`` outside [0, 1] or NaN). Subclasses whose
        derivatives are constants override it to skip building them; the result may share memory with ``t``."""
        out = self(t)
        return out.alpha, out.sigma

    def constant_derivatives(self) -> tuple[float, float] | None:
        """(α', σ') as Python floats when both are the same at every t, else None (the default).

        A path sample then forms dx_t = α' x1 + σ' x0 from two numbers instead of two [B] tensors."""
        return None

    def snr(self, t: float | Tensor) -> Tensor:
        """Signal-to-noise ratio α_t² / σ_t² (inf where σ_t = 0), shape of ``t``."""
        out = self(t)
        return out.alpha.square() / out.sigma.square()

    def log_snr(self, t: float | Tensor) -> Tensor:
        """λ_t = log(α_t² / σ_t²) = 2 log α_t − 2 log σ_t (−inf where α_t = 0, +inf where σ_t = 0), shape of ``t``."""
        out = self(t)
        return 2.0 * (torch.log(out.alpha) - torch.log(out.sigma))

    def config(self) -> dict:
        """A JSON-serialisable description (name and parameters), used in checkpoint-cache keys.

        Example: ``{"name": "condot", "sigma_min": 0.0}``; ``get_scheduler(**config)`` rebuilds the scheduler.
        """
        return {"name": getattr(self, "name", type(self).__name__), **self._params()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"


class CondOTScheduler(Scheduler):
    """Linear / conditional-optimal-transport schedule: α_t = t, σ_t = 1 − (1 − σ_min) t.

    With σ_min = 0 this is the straight line x_t = t x1 + (1 − t) x0 (rectified flow). With σ_min > 0 it is
    Lipman et al.'s OT path whose conditional p_1(x | x1) = N(x1, σ_min² I).
    Derivatives: α'_t = 1, σ'_t = −(1 − σ_min). Requires 0 ≤ σ_min < 1.
    """

    name = "condot"

    def __init__(self, sigma_min: float = 0.0) -> None:
        self.sigma_min = check_real(sigma_min, "sigma_min")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"sigma_min must satisfy 0 <= sigma_min < 1, got {sigma_min!r}")

    def _params(self) -> dict[str, float]:
        return {"sigma_min": self.sigma_min}

    def alpha_sigma(self, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) = (t, 1 − (1 − σ_min) t); α_t is ``t`` itself when ``t`` is a floating tensor."""
        t = _time_tensor(t)
        slope = 1.0 - self.sigma_min
        return t, (1.0 - t if slope == 1.0 else 1.0 - slope * t)  # σ_min = 0: one operator fewer, same bits

    def constant_derivatives(self) -> tuple[float, float]:
        """(α', σ') = (1, −(1 − σ_min))."""
        return 1.0, -(1.0 - self.sigma_min)

    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        """(α_t, σ_t, α'_t, σ'_t) elementwise at ``t`` (any shape; ``ValueError`` outside [0, 1] or NaN)."""
        alpha, sigma = self.alpha_sigma(t)
        d_alpha, d_sigma = self.constant_derivatives()
        return SchedulerOutput(alpha=alpha.clone(), sigma=sigma, d_alpha=torch.full_like(alpha, d_alpha),
                               d_sigma=torch.full_like(alpha, d_sigma))


class VPScheduler(Scheduler):
    """Variance-preserving (DDPM / score-SDE VP) schedule, translated to t = 0 noise, t = 1 data.

    With diffusion time s = 1 − t and linear β(s) = β_min + s (β_max − β_min):
    α_t = exp(−½ B(1 − t)), B(s) = ∫_0^s β(r) dr = β_min s + ½ (β_max − β_min) s², σ_t = sqrt(1 − α_t²).
    α_0 = exp(−½ B(1)) is small but not zero, so the source is only approximately N(0, I).

    Derivatives: α'_t = ½ β(1 − t) α_t and σ'_t = −α_t α'_t / σ_t, which is −inf at t = 1 (σ_1 = 0).
    σ_t is computed as sqrt(−expm1(−B)) so that it keeps its relative accuracy near t = 1.
    Requires 0 < β_min ≤ β_max.
    """

    name = "vp"
    finite_derivatives = False  # σ'_1 = −∞

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = check_real(beta_min, "beta_min")
        self.beta_max = check_real(beta_max, "beta_max")
        if not 0.0 < self.beta_min <= self.beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")

    def _params(self) -> dict[str, float]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        """(α_t, σ_t, α'_t, σ'_t) elementwise at ``t`` (any shape; ``ValueError`` outside [0, 1] or NaN)."""
        t = _time_tensor(t)
        s = 1.0 - t
        spread = self.beta_max - self.beta_min
        big_b = self.beta_min * s + 0.5 * spread * s * s
        beta = self.beta_min + spread * s
        alpha = torch.exp(-0.5 * big_b)
        sigma = torch.sqrt(-torch.expm1(-big_b))
        d_alpha = 0.5 * beta * alpha
        d_sigma = -alpha * d_alpha / sigma
        return SchedulerOutput(alpha=alpha, sigma=sigma, d_alpha=d_alpha, d_sigma=d_sigma)


class VEScheduler(Scheduler):
    """Variance-exploding (SMLD / score-SDE VE) schedule: α_t = 1, σ_t = σ_min (σ_max / σ_min)^(1 − t).

    At t = 0 the sample is x1 + σ_max x0, i.e. approximately N(0, σ_max² I) when σ_max dominates the data.
    Derivatives: α'_t = 0, σ'_t = −log(σ_max / σ_min) σ_t. Requires 0 < σ_min < σ_max.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0) -> None:
        self.sigma_min = check_real(sigma_min, "sigma_min")
        self.sigma_max = check_real(sigma_max, "sigma_max")
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")

    def _params(self) -> dict[str, float]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        """(α_t, σ_t, α'_t, σ'_t) elementwise at ``t`` (any shape; ``ValueError`` outside [0, 1] or NaN)."""
        t = _time_tensor(t)
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        sigma = self.sigma_min * torch.exp((1.0 - t) * log_ratio)
        return SchedulerOutput(alpha=torch.ones_like(t), sigma=sigma, d_alpha=torch.zeros_like(t),
                               d_sigma=-log_ratio * sigma)


class CosineScheduler(Scheduler):
    """Cosine schedule: α_t = sin(π t / 2), σ_t = cos(π t / 2) (variance preserving, exact endpoints).

    σ_t is evaluated as sin(π (1 − t) / 2), so σ_1 = 0 and α_0 = 0 exactly in floating point;
    α'_t = (π/2) σ_t, σ'_t = −(π/2) α_t.
    """

    name = "cosine"

    def __init__(self) -> None:
        pass

    def __call__(self, t: float | Tensor) -> SchedulerOutput:
        """(α_t, σ_t, α'_t, σ'_t) elementwise at ``t`` (any shape; ``ValueError`` outside [0, 1] or NaN)."""
        t = _time_tensor(t)
        half_pi = 0.5 * math.pi
        alpha = torch.sin(half_pi * t)
        sigma = torch.sin(half_pi * (1.0 - t))
        return SchedulerOutput(alpha=alpha, sigma=sigma, d_alpha=half_pi * sigma, d_sigma=-half_pi * alpha)


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (CondOTScheduler, VPScheduler, VEScheduler, CosineScheduler)
}
"""Name → scheduler class: ``condot``, ``vp``, ``ve``, ``cosine``."""


def get_scheduler(name: str, **kwargs: float) -> Scheduler:
    """Build a scheduler by name (``condot``, ``vp``, ``ve``, ``cosine``) with keyword parameters.

    ``get_scheduler(**scheduler.config())`` rebuilds an equal scheduler.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad parameters.
    """
    cls = SCHEDULERS[check_choice(name, SCHEDULERS, what="scheduler")]
    try:
        return cls(**kwargs)
    except TypeError as err:  # unexpected keyword
        raise ValueError(f"bad parameters {sorted(kwargs)} for scheduler {name!r}: {err}") from None


@dataclass(frozen=True)
class PathSample:
    """One draw of an affine path. Shapes: ``t`` [B]; ``x0``, ``x1``, ``x_t``, ``dx_t`` [B, ...].

    ``dx_t = α'_t x1 + σ'_t x0`` is the conditional velocity at ``x_t`` (the CFM regression target).
    """

    t: Tensor
    x0: Tensor
    x1: Tensor
    x_t: Tensor
    dx_t: Tensor


def _combine(c1: float, c0: float, x1: Tensor, x0: Tensor) -> Tensor:
    """c1 x1 + c0 x0 for numbers c1, c0, with the same bits as multiplying by [B] tensors filled with c1 and c0
    (x · 1 = x and x · (−1) = −x exactly, and x1 + (−x0) = x1 − x0): 1 operator for CondOT with σ_min = 0."""
    first = x1 if c1 == 1.0 else c1 * x1
    if c0 == -1.0:
        return first - x0
    return first + c0 * x0


_Coefficients = Callable[[SchedulerOutput], tuple[Tensor, Tensor]]


def _conversion_table() -> dict[tuple[str, str], tuple[_Coefficients, str]]:
    """(source, target) → (coefficients (c_x, c_p) with target = c_x x + c_p pred, the vanishing denominators).

    Every quantity is linear in (x1, x0): velocity = α' x1 + σ' x0, x0, x1, score = −x0/σ. Solving
    x = α x1 + σ x0 and pred = P(x1, x0) for (x1, x0) and substituting into the target gives these, with
    d = α'σ − σ'α (the determinant of the velocity/x system).
    """
    def d(o: SchedulerOutput) -> Tensor:
        return o.d_alpha * o.sigma - o.d_sigma * o.alpha

    zero = torch.zeros_like
    return {
        ("x1", "velocity"): (lambda o: (o.d_sigma / o.sigma, d(o) / o.sigma), "σ_t"),
        ("x0", "velocity"): (lambda o: (o.d_alpha / o.alpha, -d(o) / o.alpha), "α_t"),
        ("score", "velocity"): (lambda o: (o.d_alpha / o.alpha, o.sigma * d(o) / o.alpha), "α_t"),
        ("velocity", "x1"): (lambda o: (-o.d_sigma / d(o), o.sigma / d(o)), "α'_t σ_t − σ'_t α_t"),
        ("velocity", "x0"): (lambda o: (o.d_alpha / d(o), -o.alpha / d(o)), "α'_t σ_t − σ'_t α_t"),
        ("velocity", "score"): (lambda o: (-o.d_alpha / (o.sigma * d(o)), o.alpha / (o.sigma * d(o))),
                                "σ_t (α'_t σ_t − σ'_t α_t)"),
        ("x1", "x0"): (lambda o: (1.0 / o.sigma, -o.alpha / o.sigma), "σ_t"),
        ("x0", "x1"): (lambda o: (1.0 / o.alpha, -o.sigma / o.alpha), "α_t"),
        ("x1", "score"): (lambda o: (-1.0 / o.sigma.square(), o.alpha / o.sigma.square()), "σ_t²"),
        ("x0", "score"): (lambda o: (zero(o.sigma), -1.0 / o.sigma), "σ_t"),
        ("score", "x0"): (lambda o: (zero(o.sigma), -o.sigma), "nothing"),
        ("score", "x1"): (lambda o: (1.0 / o.alpha, o.sigma.square() / o.alpha), "α_t"),
    }


_CONVERSIONS = _conversion_table()
_CANONICAL = {"velocity": "velocity", "x0": "x0", "epsilon": "x0", "x1": "x1", "score": "score"}


class AffinePath:
    """The affine path x_t = α_t x1 + σ_t x0 of a :class:`Scheduler`, with parametrization conversions.

    All methods take ``x`` of shape [B, ...] and ``t`` as a float, a 0-d tensor or a [B] tensor in [0, 1]
    and return tensors of the shape of ``x``. Conversions raise ``ValueError`` where the formula is
    singular (a zero denominator) for some entry of ``t``.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a fmlib.paths.Scheduler, got {type(scheduler).__name__}")
        self.scheduler = scheduler

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"

    def _schedule(self, x: Tensor, t: float | Tensor, *, name: str = "x") -> tuple[Tensor, SchedulerOutput]:
        """Validated times [B] for ``x`` [B, ...] and the scheduler evaluated there."""
        check_batched(x, name=name, min_dim=1)
        t = batch_time(t, x.shape[0], like=x)
        return t, self.scheduler(t)

    def _raise_if_singular(self, t: Tensor, coefficients: tuple[Tensor, ...], what: str, why: str) -> None:
        finite = torch.ones_like(t, dtype=torch.bool)
        for c in coefficients:
            finite &= torch.isfinite(c)
        if not bool(finite.all()):
            bad = torch.unique(t[~finite].detach())
            shown = ", ".join(f"{v:.6g}" for v in bad[:5].tolist()) + (", ..." if bad.numel() > 5 else "")
            raise ValueError(f"{what} is singular for {self.scheduler!r} at t = {shown} ({why})")

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor) -> PathSample:
        """Return x_t = α_t x1 + σ_t x0 and dx_t = α'_t x1 + σ'_t x0. ``x0`` and ``x1`` must have equal shapes.

        Shapes: x0, x1 [B, ...]; t a number, 0-d or [B] → a :class:`PathSample` with t [B].

        Called directly, x0 and x1 are checked to be finite (one reduction); inside the flow-matching loss
        that check is left to the loss's own.

        Raises:
            ValueError: shape mismatch, bad t, NaN or inf in x0 or x1, or a non-finite α'_t, σ'_t (VP at t = 1).
        """
        check_batched(x1, name="x1", min_dim=1)
        if not torch.is_tensor(x0) or x0.shape != x1.shape:
            check_batched(x0, name="x0", min_dim=1)
            check_same_shape(x0=x0, x1=x1)
        trusted = times_are_checked()
        if not trusted and not bool(torch.isfinite(x0).all() & torch.isfinite(x1).all()):
            which = [n for n, v in (("x0", x0), ("x1", x1)) if not bool(torch.isfinite(v).all())]
            raise ValueError(f"AffinePath.sample: {' and '.join(which)} contain(s) NaN or inf")
        constants = self.scheduler.constant_derivatives()
        if constants is not None:  # (CondOT) dx_t from two numbers: no derivative tensors, no scan
            if not (trusted and torch.is_tensor(t) and t.dim() == 1 and t.shape[0] == x1.shape[0]
                    and t.dtype == x1.dtype and t.device == x1.device):  # (else: the loss's own draw, as is)
                t = batch_time(t, x1.shape[0], like=x1)
            # elementwise, so on t as [B, 1, ...] directly (t [B] is checked above or was the loss's draw)
            a, s = self.scheduler.alpha_sigma(t[:, None] if x1.dim() == 2 else expand_like(t, x1))
            return PathSample(t=t, x0=x0, x1=x1, x_t=a * x1 + s * x0, dx_t=_combine(*constants, x1, x0))
        t, o = self._schedule(x1, t, name="x1")
        if not (self.scheduler.finite_derivatives and times_are_checked()):
            self._raise_if_singular(t, (o.d_alpha, o.d_sigma), "the conditional velocity dx_t",
                                    "α'_t or σ'_t is infinite there")
        a, s, da, ds = (expand_like(c, x1) for c in (o.alpha, o.sigma, o.d_alpha, o.d_sigma))
        return PathSample(t=t, x0=x0, x1=x1, x_t=a * x1 + s * x0, dx_t=da * x1 + ds * x0)

    def _convert(self, pred: Tensor, x: Tensor, t: float | Tensor, source: str, target: str,
                 *, what: str | None = None) -> Tensor:
        """target = c_x(t) x + c_p(t) pred with the coefficients of :func:`_conversion_table`."""
        check_batched(x, name="x", min_dim=1)
        check_same_shape(x=x, pred=pred)
        t, o = self._schedule(x, t)
        source, target = _CANONICAL[source], _CANONICAL[target]
        if source == target:
            return pred
        coefficients, denominator = _CONVERSIONS[(source, target)]
        c_x, c_p = coefficients(o)
        self._raise_if_singular(t, (c_x, c_p), what or f"the conversion {source} → {target}",
                                f"its formula divides by {denominator}, which vanishes or is undefined there")
        return expand_like(c_x, x) * x + expand_like(c_p, x) * pred

    def conditional_velocity(self, x: Tensor, x1: Tensor, t: float | Tensor) -> Tensor:
        """u_t(x | x1) = (σ'_t/σ_t)(x − α_t x1) + α'_t x1 — the velocity of the Gaussian conditional path at any x.

        Equals ``sample(x0, x1, t).dx_t`` when x = x_t. Singular at σ_t = 0.
        Shapes: x, x1 [B, ...] → [B, ...].
        """
        return self._convert(x1, x, t, "x1", "velocity", what="the conditional velocity u_t(x | x1)")

    def velocity_from_x1(self, x: Tensor, x1_pred: Tensor, t: float | Tensor) -> Tensor:
        """v = (σ'/σ) x + (α' − σ' α/σ) x̂1. Singular at σ_t = 0. Shapes: [B, ...] → [B, ...]."""
        return self._convert(x1_pred, x, t, "x1", "velocity")

    def velocity_from_x0(self, x: Tensor, x0_pred: Tensor, t: float | Tensor) -> Tensor:
        """v = (α'/α) x + (σ' − α' σ/α) x̂0 (x0-prediction is ε-prediction for a Gaussian source).

        Singular at α_t = 0. Shapes: [B, ...] → [B, ...].
        """
        return self._convert(x0_pred, x, t, "x0", "velocity")

    def x1_from_velocity(self, x: Tensor, v: Tensor, t: float | Tensor) -> Tensor:
        """x̂1 = (σ v − σ' x) / (α' σ − σ' α). Shapes: [B, ...] → [B, ...]."""
        return self._convert(v, x, t, "velocity", "x1")

    def x0_from_velocity(self, x: Tensor, v: Tensor, t: float | Tensor) -> Tensor:
        """x̂0 = (α v − α' x) / (σ' α − α' σ). Shapes: [B, ...] → [B, ...]."""
        return self._convert(v, x, t, "velocity", "x0")

    def x0_from_x1(self, x: Tensor, x1_pred: Tensor, t: float | Tensor) -> Tensor:
        """x̂0 = (x − α x̂1) / σ. Singular at σ_t = 0. Shapes: [B, ...] → [B, ...]."""
        return self._convert(x1_pred, x, t, "x1", "x0")

    def x1_from_x0(self, x: Tensor, x0_pred: Tensor, t: float | Tensor) -> Tensor:
        """x̂1 = (x − σ x̂0) / α. Singular at α_t = 0. Shapes: [B, ...] → [B, ...]."""
        return self._convert(x0_pred, x, t, "x0", "x1")

    def score_from_x0(self, x: Tensor, x0_pred: Tensor, t: float | Tensor) -> Tensor:
        """∇ log p_t(x) = −x̂0 / σ_t, valid for a standard Gaussian source independent of the data.

        Singular at σ_t = 0. Shapes: [B, ...] → [B, ...].
        """
        return self._convert(x0_pred, x, t, "x0", "score")

    def velocity_from_score(self, x: Tensor, score: Tensor, t: float | Tensor) -> Tensor:
        """v = (α'/α) x + (σ² α'/α − σ σ') ∇log p_t(x) (Gaussian source). Singular at α_t = 0.

        Shapes: [B, ...] → [B, ...].
        """
        return self._convert(score, x, t, "score", "velocity")

    def score_from_velocity(self, x: Tensor, v: Tensor, t: float | Tensor) -> Tensor:
        """Inverse of :meth:`velocity_from_score`: ∇log p_t(x) = (α v − α' x) / (σ (α'σ − σ'α)).

        Singular at σ_t = 0. Shapes: [B, ...] → [B, ...].
        """
        return self._convert(v, x, t, "velocity", "score")

    def convert(self, pred: Tensor, x: Tensor, t: float | Tensor, *, source: str, target: str) -> Tensor:
        """Convert a prediction between any two of :data:`PARAMETRIZATIONS` (``epsilon`` = ``x0``).

        The result is c_x(t) x + c_p(t) pred (every conversion is linear); ``source == target`` returns
        ``pred`` itself. Shapes: pred, x [B, ...]; t a number, 0-d or [B] → [B, ...].

        Raises:
            ValueError: unknown parametrization names, or a singular conversion at this t.
        """
        check_choice(source, PARAMETRIZATIONS, what="source parametrization")
        check_choice(target, PARAMETRIZATIONS, what="target parametrization")
        return self._convert(pred, x, t, source, target)

    def target(self, sample: PathSample, parametrization: str) -> Tensor:
        """The regression target of ``parametrization`` for a path sample: dx_t, x0 (= ε), x1 or the
        conditional score −x0/σ_t. Shape [B, ...].

        Raises:
            ValueError: unknown parametrization, or the score at σ_t = 0.
        """
        name = _CANONICAL[check_choice(parametrization, PARAMETRIZATIONS, what="parametrization")]
        if name == "velocity":
            return sample.dx_t
        if name == "x0":
            return sample.x0
        if name == "x1":
            return sample.x1
        sigma = self.scheduler(sample.t).sigma
        self._raise_if_singular(sample.t, (1.0 / sigma,), "the conditional score target −x0/σ_t", "σ_t = 0")
        return -sample.x0 / expand_like(sigma, sample.x0)

    def config(self) -> dict:
        """JSON-serialisable description (the scheduler's, e.g. ``{"name": "condot", "sigma_min": 0.0}``),
        for cache keys."""
        return self.scheduler.config()
