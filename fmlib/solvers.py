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

All four fixed-step methods are explicit Runge–Kutta schemes, written once as Butcher tableaus
(c_i, a_ij, b_i): stage i evaluates k_i = v(x + h Σ_j a_ij k_j, t + c_i h) and the step is
x + h Σ_i b_i k_i. The same stepping code integrates a tuple of tensors (used by
:func:`fmlib.likelihood.log_likelihood` for the augmented state (x, ∫ div u)).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_batched, check_choice, check_unit_interval

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
    """Wrap a velocity field and count its calls (``.nfe``); ``reset()`` sets the count to zero.

    Extra positional/keyword arguments (e.g. labels ``y``) are passed through, and attributes the counter
    lacks are looked up on the wrapped field (``counter.null_label`` works for a model that has one).
    """

    def __init__(self, velocity: VelocityField) -> None:
        if not callable(velocity):
            raise TypeError(f"velocity must be callable, got {type(velocity).__name__}")
        self.velocity = velocity
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor, *args, **kwargs) -> Tensor:
        self.nfe += 1
        return self.velocity(x, t, *args, **kwargs)

    def reset(self) -> None:
        self.nfe = 0

    def __getattr__(self, name: str):
        # only called when normal lookup fails; guard against recursion before __init__ has run
        if name == "velocity":
            raise AttributeError(name)
        return getattr(self.velocity, name)


# ----------------------------------------------------------------------------------------------------------
# validation shared with fmlib.likelihood

FIXED_STEP_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun", "rk4")
"""The methods of :data:`ODE_METHODS` that take an explicit ``steps``."""


def _check_steps(steps: object, *, method: str, name: str = "steps") -> int | None:
    """Validate ``steps`` for ``method``: a positive int for fixed-step methods, None for dopri5."""
    if method == "dopri5":
        if steps is not None:
            raise ValueError(f"dopri5 chooses its own steps (atol/rtol): pass {name}=None, got {steps!r}")
        return None
    if steps is None:
        raise ValueError(f"method {method!r} needs an explicit number of steps: pass {name}=<positive int>")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"{name} must be a positive int, got {steps!r} ({type(steps).__name__})")
    if steps <= 0:
        raise ValueError(f"{name} must be a positive int, got {steps}")
    return int(steps)


def _check_times(t_start: float | Tensor, t_end: float | Tensor) -> tuple[float, float]:
    """Return (t_start, t_end) as floats, checked to lie in [0, 1] and to differ."""
    out = []
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if torch.is_tensor(value):
            if value.numel() != 1:
                raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
            value = value.item()
        value = float(value)
        check_unit_interval(torch.tensor([value], dtype=torch.float64), name=name)
        out.append(value)
    if out[0] == out[1]:
        raise ValueError(f"t_start and t_end must differ, both are {out[0]}")
    return out[0], out[1]


def _check_positive_tolerance(atol: float, rtol: float) -> None:
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, numbers.Real) and value > 0 and value < float("inf")):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def time_grid(steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
    """The uniform grid of ``steps + 1`` times from t_start to t_end (float64 for exact endpoints).

    t_k = t_start + (k / steps)(t_end − t_start), k = 0, …, steps; shape [steps + 1]; t_0 = t_start and
    t_steps = t_end exactly. Decreasing when t_end < t_start.
    """
    steps = _check_steps(steps, method="euler")
    t_start, t_end = _check_times(t_start, t_end)
    k = torch.arange(steps + 1, dtype=torch.float64)
    grid = t_start + (t_end - t_start) * (k / steps)
    grid[0], grid[-1] = t_start, t_end
    return grid


# ----------------------------------------------------------------------------------------------------------
# the stepping code (tensor tuples), shared with fmlib.likelihood

State = tuple[Tensor, ...]
StateField = Callable[[State, Tensor], State]
"""f(state, t [B]) -> d state / dt, a tuple of tensors with the shapes of ``state``."""


@dataclass(frozen=True)
class _Tableau:
    """An explicit Runge–Kutta scheme: nodes c [S], lower-triangular a (row i has i entries), weights b [S]."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]


_TABLEAUS: dict[str, _Tableau] = {
    "euler": _Tableau(c=(0.0,), a=((),), b=(1.0,)),
    "midpoint": _Tableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0)),
    "heun": _Tableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5)),
    "rk4": _Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}

NFE_PER_STEP: dict[str, int] = {name: len(tab.c) for name, tab in _TABLEAUS.items()}
"""Velocity evaluations per step of each fixed-step method (euler 1, midpoint 2, heun 2, rk4 4)."""


def _linear_combination(state: State, h: float, weights: Sequence[float], slopes: Sequence[State]) -> State:
    """state + h Σ_i w_i slopes_i, component by component (zero weights skipped)."""
    out = []
    for j, x in enumerate(state):
        acc = x
        for w, k in zip(weights, slopes):
            if w != 0.0:
                acc = acc + (h * w) * k[j]
        out.append(acc)
    return tuple(out)


def _rk_step(field: Callable[[State, float], State], tab: _Tableau, state: State, t: float, t_next: float) -> State:
    """One explicit Runge–Kutta step from t to t_next (h = t_next − t, negative when going backward)."""
    h = t_next - t
    slopes: list[State] = []
    for c, a in zip(tab.c, tab.a):
        stage = _linear_combination(state, h, a, slopes) if slopes else state
        stage_t = t_next if c == 1.0 else t + c * h      # land exactly on the grid at c = 1
        slopes.append(field(stage, stage_t))
    return _linear_combination(state, h, tab.b, slopes)


def _time_batch(t: float | Tensor, like: Tensor, lo: float, hi: float) -> Tensor:
    """The scalar time t, clamped to [lo, hi] (absorbs rounding at the ends), as a [B] tensor like ``like``."""
    if torch.is_tensor(t):
        t = t.detach().to(dtype=like.dtype, device=like.device).clamp(lo, hi).reshape(1)
        return t.repeat(like.shape[0])
    return torch.full((like.shape[0],), min(max(float(t), lo), hi), dtype=like.dtype, device=like.device)


def _require_finite(state: State, where: str) -> None:
    for x in state:
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the state became NaN or infinite {where}; try more steps, a smaller step "
                                     "size or check the velocity field")


def _record_indices(record_times: Tensor, grid: Tensor) -> list[int]:
    """Positions of ``record_times`` on a fixed-step grid (they must be grid points, in grid order)."""
    steps = grid.shape[0] - 1
    t_start, t_end = grid[0].item(), grid[-1].item()
    indices = []
    for r in record_times.tolist():
        k = round((r - t_start) / (t_end - t_start) * steps)
        if not 0 <= k <= steps or abs(grid[k].item() - r) > 1e-6:     # float32 input resolves 1e-6
            raise ValueError(f"record_times must lie on the grid of the fixed-step solve (steps={steps}, from "
                             f"{t_start} to {t_end}); {r} does not. Use time_grid() or dopri5 for arbitrary times")
        indices.append(k)
    return indices


def _check_record_times(record_times: Tensor, t_start: float, t_end: float) -> Tensor:
    """Return ``record_times`` as a float64 1-D tensor in [t_start, t_end], ordered from t_start toward t_end."""
    if not torch.is_tensor(record_times):
        record_times = torch.as_tensor(record_times)
    record_times = record_times.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if record_times.numel() == 0:
        raise ValueError("record_times must hold at least one time")
    check_unit_interval(record_times, name="record_times")
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    if record_times.min() < lo or record_times.max() > hi:
        raise ValueError(f"record_times must lie between t_start={t_start} and t_end={t_end}")
    direction = 1.0 if t_end > t_start else -1.0
    if record_times.numel() > 1 and not (direction * record_times.diff() > 0).all():
        raise ValueError("record_times must be strictly " + ("increasing" if direction > 0 else "decreasing")
                         + " (from t_start toward t_end)")
    return record_times


def _integrate(
    field: StateField,
    state: State,
    *,
    method: str,
    steps: int | None,
    t_start: float,
    t_end: float,
    record: bool = False,
    record_times: Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> tuple[State, Tensor | None, list[State] | None]:
    """Integrate d state/dt = field(state, t) from t_start to t_end; inputs already validated.

    ``field`` receives t as a [B] tensor (B = state[0].shape[0], dtype/device of state[0]). Returns the final
    state, and with recording the float64 times [S+1] and the list of the S+1 recorded states.
    """
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    like = state[0]
    record = record or record_times is not None

    if method == "dopri5":
        if record and record_times is None:
            record_times = torch.tensor([t_start, t_end], dtype=torch.float64)
        return _integrate_dopri5(field, state, t_start=t_start, t_end=t_end, record_times=record_times,
                                 atol=atol, rtol=rtol, lo=lo, hi=hi)

    def timed_field(s: State, t: float) -> State:
        return field(s, _time_batch(t, like, lo, hi))

    tab = _TABLEAUS[method]
    grid = time_grid(steps, t_start, t_end)
    times = grid.tolist()
    keep = None
    if record:
        indices = list(range(steps + 1)) if record_times is None else _record_indices(record_times, grid)
        keep = set(indices)
    recorded: list[State] = [state] if keep is not None and 0 in keep else []
    for k in range(steps):
        state = _rk_step(timed_field, tab, state, times[k], times[k + 1])
        _require_finite(state, f"at step {k + 1}/{steps} of {method} (t = {times[k + 1]:.6g})")
        if keep is not None and k + 1 in keep:
            recorded.append(state)
    if keep is None:
        return state, None, None
    return state, grid[indices], recorded


def _integrate_dopri5(field: StateField, state: State, *, t_start: float, t_end: float,
                      record_times: Tensor | None, atol: float, rtol: float, lo: float,
                      hi: float) -> tuple[State, Tensor | None, list[State] | None]:
    """Adaptive Dormand–Prince through torchdiffeq; steps forced to land on t_end (``step_t``)."""
    from torchdiffeq import odeint

    like = state[0]
    evaluations, last_t = [0], [t_start]

    def func(t: Tensor, s: State) -> State:
        evaluations[0] += 1
        last_t[0] = float(t.detach())
        _require_finite(s, f"at evaluation {evaluations[0]} of dopri5 (t = {last_t[0]:.6g})")
        return field(s, _time_batch(t, like, lo, hi))

    # the times handed to odeint: t_start, the requested record times, t_end (duplicates removed)
    wanted = [t_start] + ([] if record_times is None else record_times.tolist()) + [t_end]
    solve_times: list[float] = []
    for value in wanted:
        if not solve_times or value != solve_times[-1]:
            solve_times.append(value)
    t_tensor = torch.tensor(solve_times, dtype=like.dtype, device=like.device)
    # The step-size controller sees detached values: the steps are then constants for autograd and
    # backpropagating through the solve gives the gradient of the Runge–Kutta scheme on the chosen grid (the
    # default norm would also differentiate through the step-size choice, a spurious O(1) term).
    options = {"step_t": torch.tensor([t_end], dtype=like.dtype, device=like.device), "norm": _detached_rms_norm}
    try:
        solution = odeint(func, tuple(state), t_tensor, rtol=rtol, atol=atol, method="dopri5", options=options)
    except AssertionError as error:  # torchdiffeq asserts when the step size underflows (blow-up, stiffness)
        if "underflow" not in str(error):
            raise
        raise FloatingPointError(f"dopri5's step size underflowed at evaluation {evaluations[0]} (t = "
                                 f"{last_t[0]:.6g}): the solution blows up or the field is too stiff") from error
    final = tuple(component[-1] for component in solution)
    _require_finite(final, f"at the end of dopri5 (t = {t_end:.6g})")
    if record_times is None:
        return final, None, None
    position = {value: i for i, value in enumerate(solve_times)}
    recorded = [tuple(component[position[r]] for component in solution) for r in record_times.tolist()]
    return final, record_times, recorded


def _detached_rms_norm(state: Tensor | State) -> Tensor:
    """max over components of the root-mean-square, without autograd history (dopri5's error norm)."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.stack([part.detach().pow(2).mean().sqrt() for part in parts]).max()


def _check_velocity_output(v: Tensor, x: Tensor) -> Tensor:
    if not torch.is_tensor(v):
        raise TypeError(f"the velocity field must return a tensor, got {type(v).__name__}")
    if v.shape != x.shape:
        raise ValueError(f"the velocity field returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}; "
                         "they must match")
    return v


def _prepare_solve(method: str, steps: object, t_start: float, t_end: float, atol: float,
                   rtol: float) -> tuple[int | None, float, float]:
    """Validate the arguments common to :func:`solve_ode` and :func:`fmlib.likelihood.log_likelihood`."""
    check_choice(method, ODE_METHODS, what="ODE method")
    steps = _check_steps(steps, method=method)
    t_start, t_end = _check_times(t_start, t_end)
    if method == "dopri5":
        _check_positive_tolerance(atol, rtol)
    return steps, t_start, t_end


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

    Shapes: ``x_init`` [B, ...]; v is called with x [B, ...] and t [B] (x's dtype and device) and must
    return [B, ...]. The result's ``x`` is [B, ...]; ``nfe`` = steps × (1, 2, 2, 4) for euler, midpoint, heun,
    rk4, and whatever dopri5 needed (including its initial step-size probe).

    Recording: ``record=True`` returns ``times`` [S+1] (float64) and ``trajectory`` [S+1, B, ...] with
    ``trajectory[0] = x_init`` and ``trajectory[-1] = x``: the whole grid (S = steps) for fixed-step
    methods, the two endpoints for dopri5. ``record_times`` (1-D, strictly monotone from t_start toward
    t_end, inside the interval) implies recording and returns the states at exactly those times: any
    times for dopri5 (dense output), grid points only for the fixed-step methods.

    For dopri5 the last step is forced to land on t_end, and times handed to v are clamped to the
    integration interval, so v is never called outside [0, 1].

    Raises:
        ValueError: unknown method (lists :data:`ODE_METHODS`), missing/invalid steps, bad times, or a
            velocity whose output shape differs from x's.
        FloatingPointError: the state becomes NaN or infinite (the message gives the step and time).
    """
    steps, t_start, t_end = _prepare_solve(method, steps, t_start, t_end, atol, rtol)
    check_batched(x_init, name="x_init", min_dim=1)
    if not x_init.is_floating_point():
        raise ValueError(f"x_init must be a floating-point tensor, got {x_init.dtype}")
    if record_times is not None:
        record_times = _check_record_times(record_times, t_start, t_end)
    counter = NFECounter(velocity)

    def field(state: State, t: Tensor) -> State:
        (x,) = state
        return (_check_velocity_output(counter(x, t), x),)

    (x,), times, recorded = _integrate(field, (x_init,), method=method, steps=steps, t_start=t_start, t_end=t_end,
                                       record=record, record_times=record_times, atol=atol, rtol=rtol)
    trajectory = None if recorded is None else torch.stack([s[0] for s in recorded])
    return ODESolution(x=x, nfe=counter.nfe, times=times, trajectory=trajectory)


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

    ``diffusion`` maps t [B] to g(t) [B] (a 0-d tensor or a number is broadcast). Returns an
    :class:`ODESolution` (``nfe`` counts drift calls, one per step); with ``record=True`` the grid
    ``times`` [steps+1] and ``trajectory`` [steps+1, B, ...]. Backward in time (t_end < t_start) h is
    negative and the noise scale is still sqrt(|h|). The noise is drawn with ``generator`` (on its own
    device, then moved to x's), so a seeded generator reproduces the path.

    Raises:
        ValueError: invalid steps or times, drift output shape ≠ x shape, g(t) of the wrong shape.
        FloatingPointError: the state becomes NaN or infinite (the message gives the step and time).
    """
    steps = _check_steps(steps, method="euler")
    t_start, t_end = _check_times(t_start, t_end)
    check_batched(x_init, name="x_init", min_dim=1)
    if not x_init.is_floating_point():
        raise ValueError(f"x_init must be a floating-point tensor, got {x_init.dtype}")
    grid = time_grid(steps, t_start, t_end)
    times = grid.tolist()
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    noise_device = generator.device if generator is not None else x_init.device
    nfe = 0
    x = x_init
    trajectory = [x] if record else None
    for k in range(steps):
        t = _time_batch(times[k], x, lo, hi)
        h = times[k + 1] - times[k]
        f = _check_velocity_output(drift(x, t), x)
        nfe += 1
        g = _diffusion_batch(diffusion(t), x)
        xi = torch.randn(x.shape, generator=generator, device=noise_device, dtype=x.dtype).to(x.device)
        x = x + h * f + (abs(h) ** 0.5) * g.reshape(-1, *([1] * (x.dim() - 1))) * xi
        _require_finite((x,), f"at step {k + 1}/{steps} of Euler–Maruyama (t = {times[k + 1]:.6g})")
        if trajectory is not None:
            trajectory.append(x)
    if trajectory is None:
        return ODESolution(x=x, nfe=nfe)
    return ODESolution(x=x, nfe=nfe, times=grid, trajectory=torch.stack(trajectory))


def _diffusion_batch(g: Tensor | float, x: Tensor) -> Tensor:
    """g(t) as a [B] tensor like x (a number or 0-d tensor is broadcast)."""
    if not torch.is_tensor(g):
        g = torch.tensor(float(g))
    g = g.to(dtype=x.dtype, device=x.device)
    if g.dim() == 0:
        g = g.expand(x.shape[0])
    if g.shape != (x.shape[0],):
        raise ValueError(f"diffusion(t) must return shape [{x.shape[0]}] (one g(t) per sample), "
                         f"got {tuple(g.shape)}")
    return g
