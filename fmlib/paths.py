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

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor

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


class Scheduler(ABC):
    """An affine schedule t ↦ (α_t, σ_t) on [0, 1] with t = 0 noise and t = 1 data.

    Subclasses implement :meth:`__call__`; derivatives are closed-form, not finite differences.
    ``__call__`` raises ``ValueError`` for t outside [0, 1] or NaN.
    """

    name: str

    @abstractmethod
    def __call__(self, t: Tensor) -> SchedulerOutput:
        """Evaluate (α_t, σ_t, α'_t, σ'_t) elementwise at ``t`` (any shape)."""

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio α_t² / σ_t² (inf where σ_t = 0)."""
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """λ_t = log(α_t² / σ_t²)."""
        raise NotImplementedError

    def config(self) -> dict:
        """A JSON-serialisable description (name and parameters), used in checkpoint-cache keys."""
        raise NotImplementedError


class CondOTScheduler(Scheduler):
    """Linear / conditional-optimal-transport schedule: α_t = t, σ_t = 1 − (1 − σ_min) t.

    With σ_min = 0 this is the straight line x_t = t x1 + (1 − t) x0 (rectified flow). With σ_min > 0 it is
    Lipman et al.'s OT path whose conditional p_1(x | x1) = N(x1, σ_min² I).
    """

    name = "condot"

    def __init__(self, sigma_min: float = 0.0) -> None:
        raise NotImplementedError

    def __call__(self, t: Tensor) -> SchedulerOutput:
        raise NotImplementedError


class VPScheduler(Scheduler):
    """Variance-preserving (DDPM / score-SDE VP) schedule, translated to t = 0 noise, t = 1 data.

    With diffusion time s = 1 − t and linear β(s) = β_min + s (β_max − β_min):
    α_t = exp(−½ B(1 − t)), B(s) = ∫_0^s β(r) dr = β_min s + ½ (β_max − β_min) s², σ_t = sqrt(1 − α_t²).
    α_0 = exp(−½ B(1)) is small but not zero, so the source is only approximately N(0, I).
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        raise NotImplementedError

    def __call__(self, t: Tensor) -> SchedulerOutput:
        raise NotImplementedError


class VEScheduler(Scheduler):
    """Variance-exploding (SMLD / score-SDE VE) schedule: α_t = 1, σ_t = σ_min (σ_max / σ_min)^(1 − t).

    At t = 0 the sample is x1 + σ_max x0, i.e. approximately N(0, σ_max² I) when σ_max dominates the data.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0) -> None:
        raise NotImplementedError

    def __call__(self, t: Tensor) -> SchedulerOutput:
        raise NotImplementedError


class CosineScheduler(Scheduler):
    """Cosine schedule: α_t = sin(π t / 2), σ_t = cos(π t / 2) (variance preserving, exact endpoints)."""

    name = "cosine"

    def __init__(self) -> None:
        raise NotImplementedError

    def __call__(self, t: Tensor) -> SchedulerOutput:
        raise NotImplementedError


SCHEDULERS: dict[str, type[Scheduler]] = {}
"""Name → scheduler class: ``condot``, ``vp``, ``ve``, ``cosine``."""


def get_scheduler(name: str, **kwargs: float) -> Scheduler:
    """Build a scheduler by name (``condot``, ``vp``, ``ve``, ``cosine``) with keyword parameters.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad parameters.
    """
    raise NotImplementedError


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


class AffinePath:
    """The affine path x_t = α_t x1 + σ_t x0 of a :class:`Scheduler`, with parametrization conversions.

    All methods take ``x`` of shape [B, ...] and ``t`` as a float, a 0-d tensor or a [B] tensor in [0, 1]
    and return tensors of the shape of ``x``. Conversions raise ``ValueError`` where the formula is
    singular (a zero denominator) for some entry of ``t``.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        raise NotImplementedError

    def sample(self, x0: Tensor, x1: Tensor, t: float | Tensor) -> PathSample:
        """Return x_t = α_t x1 + σ_t x0 and dx_t = α'_t x1 + σ'_t x0. ``x0`` and ``x1`` must have equal shapes."""
        raise NotImplementedError

    def conditional_velocity(self, x: Tensor, x1: Tensor, t: float | Tensor) -> Tensor:
        """u_t(x | x1) = (σ'_t/σ_t)(x − α_t x1) + α'_t x1 — the velocity of the Gaussian conditional path at any x.

        Equals ``sample(x0, x1, t).dx_t`` when x = x_t. Singular at σ_t = 0.
        """
        raise NotImplementedError

    def velocity_from_x1(self, x: Tensor, x1_pred: Tensor, t: float | Tensor) -> Tensor:
        """v = (σ'/σ) x + (α' − σ' α/σ) x̂1."""
        raise NotImplementedError

    def velocity_from_x0(self, x: Tensor, x0_pred: Tensor, t: float | Tensor) -> Tensor:
        """v = (α'/α) x + (σ' − α' σ/α) x̂0 (x0-prediction is ε-prediction for a Gaussian source)."""
        raise NotImplementedError

    def x1_from_velocity(self, x: Tensor, v: Tensor, t: float | Tensor) -> Tensor:
        """x̂1 = (σ v − σ' x) / (α' σ − σ' α)."""
        raise NotImplementedError

    def x0_from_velocity(self, x: Tensor, v: Tensor, t: float | Tensor) -> Tensor:
        """x̂0 = (α v − α' x) / (σ' α − α' σ)."""
        raise NotImplementedError

    def x0_from_x1(self, x: Tensor, x1_pred: Tensor, t: float | Tensor) -> Tensor:
        """x̂0 = (x − α x̂1) / σ."""
        raise NotImplementedError

    def x1_from_x0(self, x: Tensor, x0_pred: Tensor, t: float | Tensor) -> Tensor:
        """x̂1 = (x − σ x̂0) / α."""
        raise NotImplementedError

    def score_from_x0(self, x: Tensor, x0_pred: Tensor, t: float | Tensor) -> Tensor:
        """∇ log p_t(x) = −x̂0 / σ_t, valid for a standard Gaussian source independent of the data."""
        raise NotImplementedError

    def velocity_from_score(self, x: Tensor, score: Tensor, t: float | Tensor) -> Tensor:
        """v = (α'/α) x + (σ² α'/α − σ σ') ∇log p_t(x) (Gaussian source)."""
        raise NotImplementedError

    def score_from_velocity(self, x: Tensor, v: Tensor, t: float | Tensor) -> Tensor:
        """Inverse of :meth:`velocity_from_score`."""
        raise NotImplementedError

    def convert(self, pred: Tensor, x: Tensor, t: float | Tensor, *, source: str, target: str) -> Tensor:
        """Convert a prediction between any two of :data:`PARAMETRIZATIONS` (``epsilon`` = ``x0``).

        Raises:
            ValueError: unknown parametrization names, or a singular conversion at this t.
        """
        raise NotImplementedError

    def target(self, sample: PathSample, parametrization: str) -> Tensor:
        """The regression target of ``parametrization`` for a path sample: dx_t, x0 (= ε), x1 or the
        conditional score −x0/σ_t."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description (the scheduler's), for cache keys."""
        raise NotImplementedError
