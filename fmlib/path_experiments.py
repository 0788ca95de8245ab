"""The measurements of the probability-paths chapter, kept out of its pages: how a trained (or exact) velocity
samples, how straight its trajectories are, and what a model that predicts x0, x1 or the score implies for the
velocity.

    >>> ev = evaluate_sampler(model, x_init, data_eval, data_ref, fine_steps=100, euler_steps=(1, 2, 4))
    >>> ev.w2, ev.curvature["pooled"], ev.euler_w2[4]
    >>> v = velocity_from_prediction(model, path, "x0")     # a velocity field for solve_ode
    >>> native, vel_err = loss_by_time({"x0": m0, "x1": m1}, path, x0, x1, t_grid)

Every function works without gradients and returns plain Python numbers (or CPU tensors for samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import losses, metrics, solvers
from .paths import AffinePath

__all__ = ["CURVATURE_SUMMARIES", "SamplerEvaluation", "curvature_summary", "evaluate_sampler",
           "velocity_from_prediction", "sample_from_prediction", "loss_by_time", "conversion_gap"]

CURVATURE_SUMMARIES: tuple[str, ...] = ("mean", "median", "pooled", "max")
"""The ``reduce`` options of :func:`fmlib.metrics.trajectory_curvature` that :func:`curvature_summary` reports."""

VelocityField = Callable[[Tensor, Tensor], Tensor]


def curvature_summary(trajectory: Tensor) -> dict[str, float]:
    """The excess length L_b / ‖x_1 − x_0‖ − 1 of each trajectory [T, B, D], summarised four ways
    (:data:`CURVATURE_SUMMARIES`): the mean and median of the ratios, the pooled ratio
    Σ_b L_b / Σ_b ‖x_1^b − x_0^b‖ − 1, and the largest ratio (see :func:`fmlib.metrics.trajectory_curvature`)."""
    return {reduce: metrics.trajectory_curvature(trajectory, reduce=reduce) for reduce in CURVATURE_SUMMARIES}


@dataclass(frozen=True)
class SamplerEvaluation:
    """What :func:`evaluate_sampler` measured for one velocity field.

    ``samples`` [B, D] and ``trajectory`` [S+1, B, D] (CPU) come from the fine solver; ``w2`` is the exact W2 of
    the samples to the evaluation data and ``floor`` the W2 between two data samples of the same size;
    ``curvature`` is :func:`curvature_summary` of the fine trajectory, ``gap`` its straightness gap;
    ``euler_w2`` maps a number of Euler steps to the W2 of those samples to the evaluation data.
    """

    samples: Tensor
    trajectory: Tensor
    w2: float
    floor: float
    curvature: dict[str, float]
    gap: float
    euler_w2: dict[int, float]


def evaluate_sampler(velocity: VelocityField, x_init: Tensor, data_eval: Tensor, data_ref: Tensor, *,
                     fine_steps: int, euler_steps: Sequence[int], fine_method: str = "midpoint") -> SamplerEvaluation:
    """Sample ``velocity`` from ``x_init`` [B, D] with a fine solver (``fine_steps`` of ``fine_method``,
    recorded) and with k Euler steps for each k in ``euler_steps``, and measure the samples against
    ``data_eval`` (W2 with the floor W2(data_ref, data_eval)) and the fine trajectories' straightness.

    Raises:
        ValueError: ``euler_steps`` empty or not positive ints, or ``fine_steps`` < 1.
    """
    steps = list(euler_steps)
    if not steps or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in steps):
        raise ValueError(f"euler_steps must be a non-empty sequence of positive ints, got {euler_steps!r}")
    if isinstance(fine_steps, bool) or not isinstance(fine_steps, int) or fine_steps < 1:
        raise ValueError(f"fine_steps must be a positive int, got {fine_steps!r}")
    with torch.no_grad():
        fine = solvers.solve_ode(velocity, x_init, steps=fine_steps, method=fine_method, record=True)
        w2 = metrics.compare_samples(fine.x.cpu(), data_eval, data_ref, metrics=("w2",))["w2"]
        euler = {k: metrics.wasserstein2(solvers.solve_ode(velocity, x_init, steps=k, method="euler").x.cpu(),
                                         data_eval) for k in steps}
    trajectory = fine.trajectory.cpu()
    return SamplerEvaluation(samples=fine.x.cpu(), trajectory=trajectory, w2=float(w2.value),
                             floor=float(w2.floor), curvature=curvature_summary(trajectory),
                             gap=float(metrics.straightness_gap(trajectory)), euler_w2=euler)


def velocity_from_prediction(model: nn.Module | VelocityField, path: AffinePath,
                             parametrization: str) -> VelocityField:
    """The velocity field implied by a model that predicts ``parametrization`` (``velocity``, ``x0``,
    ``epsilon``, ``x1`` or ``score``) on ``path``: v(x, t) = ``path.convert(model(x, t), x, t, source=…,
    target="velocity")`` (the model itself for ``velocity``). The conversion raises where it is singular
    (e.g. x0 at α_t = 0)."""
    if parametrization == "velocity":
        return model

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return path.convert(model(x, t), x, t, source=parametrization, target="velocity")

    return velocity


def sample_from_prediction(model: nn.Module | VelocityField, path: AffinePath, parametrization: str, z: Tensor, *,
                           steps: int, t_start: float = 0.0, method: str = "midpoint",
                           clamp: tuple[float, float] | None = (-1.0, 1.0)) -> Tensor:
    """Integrate the velocity implied by ``model`` (:func:`velocity_from_prediction`) from x(t_start) = ``z``
    to t = 1 with ``steps`` steps of ``method``; return the end points on the CPU, clamped to ``clamp``
    (images live in [−1, 1]; ``None`` keeps them as they are). The midpoint method never evaluates at
    t = 1, where the x1 → velocity conversion is singular when σ_1 = 0."""
    velocity = velocity_from_prediction(model, path, parametrization)
    with torch.no_grad():
        x = solvers.solve_ode(velocity, z, steps=steps, method=method, t_start=t_start).x
    return (x.clamp(*clamp) if clamp is not None else x).cpu()


def loss_by_time(models: Mapping[str, nn.Module], path: AffinePath, x0: Tensor, x1: Tensor,
                 t_grid: Sequence[float] | Tensor) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """For each t of ``t_grid`` and each ``parametrization → model`` of ``models``, on the path samples
    x_t = α_t x1 + σ_t x0 (x0, x1 [B, ...]):

    * the model's own loss, :func:`fmlib.losses.cfm_loss` of its prediction (mean squared error per coordinate
      against its own target: x0, x1, the velocity or the score);
    * its **velocity error** ‖v̂ − ẋ_t‖² / D averaged over the batch, with v̂ its prediction converted to a
      velocity. Since the conversion is linear in the prediction, velocity error = c(t)² × own loss, c the
      prediction coefficient of the conversion.

    Returns ``(native, velocity_error)``, each a dict parametrization → list over ``t_grid``.
    """
    native: dict[str, list[float]] = {p: [] for p in models}
    vel_err: dict[str, list[float]] = {p: [] for p in models}
    n = x0.shape[0]
    with torch.no_grad():
        for tv in t_grid:
            sample = path.sample(x0, x1, torch.full((n,), float(tv), device=x0.device, dtype=x0.dtype))
            for p, model in models.items():
                pred = model(sample.x_t, sample.t)
                native[p].append(losses.cfm_loss(pred, sample, path, parametrization=p).item())
                v_hat = path.convert(pred, sample.x_t, sample.t, source=p, target="velocity")
                vel_err[p].append(losses.per_sample_squared_error(v_hat, sample.dx_t).mean().item())
    return native, vel_err


def conversion_gap(model: nn.Module, reference: VelocityField, path: AffinePath, parametrization: str,
                   x0: Tensor, x1: Tensor, t: float) -> float:
    """RMS over the batch and coordinates of (velocity implied by ``model``'s ``parametrization``
    prediction − ``reference`` velocity) at the path samples x_t = α_t x1 + σ_t x0 at time ``t``: how far the
    converted velocity is from another model's, e.g. near the end where the conversion is singular."""
    n = x0.shape[0]
    tt = torch.full((n,), float(t), device=x0.device, dtype=x0.dtype)
    with torch.no_grad():
        xt = path.sample(x0, x1, tt).x_t
        diff = velocity_from_prediction(model, path, parametrization)(xt, tt) - reference(xt, tt)
    return diff.pow(2).mean().sqrt().item()
