"""fmlib.solvers against closed-form solutions, torchdiffeq and Monte-Carlo moments of known SDEs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq

from fmlib import solvers
from fmlib.solvers import NFECounter, solve_ode, solve_sde, time_grid

FIXED = [("euler", 1, 1), ("midpoint", 2, 2), ("heun", 2, 2), ("rk4", 4, 4)]  # (method, order, NFE per step)


# dx/dt = (1 + t) J x, J the rotation generator: x(t) = R(θ(t)) x(t_a) with θ(t) = t + t²/2 − θ(t_a).
def rotation_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (1 + t)[:, None] * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def rotation_solution(x_init: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    theta = (t_end + t_end**2 / 2) - (t_start + t_start**2 / 2)
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=x_init.dtype)
    return x_init @ rot.T


def nonlinear_field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.sin(x.flip(-1)) + 0.5 * t[:, None] * torch.tanh(x)


@pytest.fixture
def x_init(generator) -> torch.Tensor:
    return torch.randn(5, 2, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("method,order,_nfe", FIXED)
def test_global_error_shrinks_with_the_order_of_the_method(method, order, _nfe, x_init):
    steps = [8, 16, 32, 64]
    exact = rotation_solution(x_init, 0.0, 1.0)
    errors = [(solve_ode(rotation_field, x_init, steps=n, method=method).x - exact).abs().max().item() for n in steps]
    slope = np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (method, slope, errors)


def test_euler_integrates_3t_squared_with_first_order_error():
    # v = 3t² gives x(1) − x(0) = 1; Euler's left Riemann sum is Σ 3h t_k² = 1 − 3/(2n) + 1/(2n²) exactly.
    x0 = torch.zeros(1, 1, dtype=torch.float64)
    for n in (4, 10, 50):
        x1 = solve_ode(lambda x, t: 3 * t[:, None] ** 2 * torch.ones_like(x), x0, steps=n, method="euler").x
        assert x1.item() == pytest.approx(1 - 3 / (2 * n) + 1 / (2 * n**2), abs=1e-12)


@pytest.mark.parametrize("method,_order,nfe_per_step", FIXED)
def test_nfe_per_step_and_counter_agree(method, _order, nfe_per_step, x_init):
    counter = NFECounter(rotation_field)
    sol = solve_ode(counter, x_init, steps=7, method=method)
    assert sol.nfe == 7 * nfe_per_step == counter.nfe
    assert solvers.NFE_PER_STEP[method] == nfe_per_step
    counter.reset()
    assert counter.nfe == 0


def test_nfe_counter_passes_arguments_and_attributes_through():
    class Model:
        null_label = 3

        def __call__(self, x, t, y=None):
            return x + (0 if y is None else y[:, None])

    counter = NFECounter(Model())
    x = torch.zeros(2, 1)
    assert torch.equal(counter(x, torch.zeros(2), torch.tensor([1, 2])), torch.tensor([[1.0], [2.0]]))
    assert torch.equal(counter(x, torch.zeros(2)), x)
    assert counter.nfe == 2 and counter.null_label == 3


def test_velocity_sees_a_batch_of_times_of_the_state_dtype(x_init):
    seen = []

    def field(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    solve_ode(field, x_init.float(), steps=2, method="heun")
    assert [tuple(t.shape) for t in seen] == [(5,)] * 4
    assert all(t.dtype == torch.float32 for t in seen)
    assert [t[0].item() for t in seen] == [0.0, 0.5, 0.5, 1.0]


def test_dopri5_matches_the_analytic_solution_torchdiffeq_and_a_fine_rk4(x_init):
    exact = rotation_solution(x_init, 0.0, 1.0)
    sol = solve_ode(rotation_field, x_init, steps=None, method="dopri5", atol=1e-10, rtol=1e-10)
    reference = torchdiffeq.odeint(lambda t, x: rotation_field(x, t.expand(x.shape[0])), x_init,
                                   torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-10, rtol=1e-10,
                                   method="dopri5")[-1]
    fine_rk4 = solve_ode(rotation_field, x_init, steps=200, method="rk4").x
    assert (sol.x - exact).abs().max() < 1e-8
    assert (sol.x - reference).abs().max() < 1e-8
    assert (sol.x - fine_rk4).abs().max() < 1e-8
    assert sol.nfe > 6


def test_dopri5_counts_velocity_calls_and_tolerance_trades_nfe_for_accuracy(x_init):
    exact = rotation_solution(x_init, 0.0, 1.0)
    loose, tight = NFECounter(rotation_field), NFECounter(rotation_field)
    sol_loose = solve_ode(loose, x_init, steps=None, method="dopri5", atol=1e-3, rtol=1e-3)
    sol_tight = solve_ode(tight, x_init, steps=None, method="dopri5", atol=1e-9, rtol=1e-9)
    assert sol_loose.nfe == loose.nfe and sol_tight.nfe == tight.nfe
    assert sol_loose.nfe < sol_tight.nfe
    assert (sol_tight.x - exact).abs().max() < (sol_loose.x - exact).abs().max()


@pytest.mark.parametrize("t_start,t_end", [(0.0, 1.0), (1.0, 0.0), (0.2, 0.7)])
def test_dopri5_never_calls_the_velocity_outside_the_interval(t_start, t_end):
    seen = []

    def slow_field(x, t):  # |v| ≪ |x|: torchdiffeq's first step guess 0.01|x|/|v| lies far past the interval
        seen.append(t)
        return 1e-4 * x

    x = torch.ones(3, 2, dtype=torch.float64)
    sol = solve_ode(slow_field, x, steps=None, method="dopri5", t_start=t_start, t_end=t_end)
    times = torch.cat(seen)
    assert times.min() >= min(t_start, t_end) and times.max() <= max(t_start, t_end)
    assert torch.allclose(sol.x, x * math.exp(1e-4 * (t_end - t_start)), atol=1e-10)


@pytest.mark.parametrize("method,steps", [("euler", 400), ("heun", 50), ("rk4", 40), ("dopri5", None)])
def test_backward_integration_inverts_forward_integration(method, steps, x_init):
    tol = {"euler": 2e-2, "heun": 1e-4}.get(method, 1e-6)
    kwargs = dict(steps=steps, method=method, atol=1e-9, rtol=1e-9)
    forward = solve_ode(nonlinear_field, x_init, t_start=0.1, t_end=0.9, **kwargs).x
    back = solve_ode(nonlinear_field, forward, t_start=0.9, t_end=0.1, **kwargs).x
    assert (forward - x_init).abs().max() > 0.1
    assert (back - x_init).abs().max() < tol


def test_backward_solution_matches_the_closed_form(x_init):
    sol = solve_ode(rotation_field, x_init, steps=100, method="rk4", t_start=1.0, t_end=0.25)
    assert (sol.x - rotation_solution(x_init, 1.0, 0.25)).abs().max() < 1e-8


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_record_gives_the_whole_grid_with_initial_and_final_states(method, x_init):
    sol = solve_ode(rotation_field, x_init, steps=6, method=method, record=True, t_start=1.0, t_end=0.0)
    assert sol.trajectory.shape == (7, 5, 2) and sol.times.shape == (7,)
    assert torch.equal(sol.times, time_grid(6, 1.0, 0.0))
    assert torch.equal(sol.trajectory[0], x_init) and torch.equal(sol.trajectory[-1], sol.x)
    plain = solve_ode(rotation_field, x_init, steps=6, method=method, t_start=1.0, t_end=0.0)
    assert plain.trajectory is None and plain.times is None and torch.equal(plain.x, sol.x)


def test_record_times_on_the_fixed_step_grid_pick_grid_states(x_init):
    full = solve_ode(rotation_field, x_init, steps=10, method="midpoint", record=True)
    some = solve_ode(rotation_field, x_init, steps=10, method="midpoint", record_times=torch.tensor([0.3, 0.5, 1.0]))
    assert some.trajectory.shape == (3, 5, 2)
    assert torch.equal(some.trajectory, full.trajectory[[3, 5, 10]])
    with pytest.raises(ValueError, match="grid"):
        solve_ode(rotation_field, x_init, steps=10, method="midpoint", record_times=torch.tensor([0.25]))


def test_dopri5_records_the_endpoints_or_the_requested_times(x_init):
    ends = solve_ode(rotation_field, x_init, steps=None, method="dopri5", record=True)
    assert ends.trajectory.shape == (2, 5, 2) and ends.times.tolist() == [0.0, 1.0]
    assert torch.equal(ends.trajectory[0], x_init) and torch.equal(ends.trajectory[-1], ends.x)
    want = torch.tensor([0.9, 0.5, 0.25], dtype=torch.float64)
    sol = solve_ode(rotation_field, x_init, steps=None, method="dopri5", t_start=1.0, t_end=0.0,
                    record_times=want, atol=1e-10, rtol=1e-10)
    assert sol.trajectory.shape == (3, 5, 2) and torch.equal(sol.times, want)
    for state, t in zip(sol.trajectory, want.tolist()):
        assert (state - rotation_solution(x_init, 1.0, t)).abs().max() < 1e-8
    assert (sol.x - rotation_solution(x_init, 1.0, 0.0)).abs().max() < 1e-8
    with pytest.raises(ValueError, match="decreasing"):
        solve_ode(rotation_field, x_init, steps=None, method="dopri5", t_start=1.0, t_end=0.0,
                  record_times=torch.tensor([0.25, 0.5]))


def test_time_grid_is_uniform_with_exact_endpoints():
    grid = time_grid(3, 0.1, 0.7)
    assert grid.dtype == torch.float64 and grid.shape == (4,)
    assert grid[0].item() == 0.1 and grid[-1].item() == 0.7
    assert torch.allclose(grid.diff(), torch.full((3,), 0.2, dtype=torch.float64))
    assert time_grid(4, 1.0, 0.0).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_solvers_keep_the_grad_mode_and_are_differentiable(x_init):
    with torch.no_grad():
        sol = solve_ode(rotation_field, x_init.requires_grad_(), steps=4, method="rk4")
        assert not torch.is_grad_enabled() and not sol.x.requires_grad
    assert torch.is_grad_enabled()
    # d x(1) / d x0 = R(θ(1)): backpropagate through the solve
    theta = 1.5
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    x0 = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    for method, steps in [("rk4", 100), ("dopri5", None)]:
        out = solve_ode(rotation_field, x0, steps=steps, method=method, atol=1e-10, rtol=1e-10).x
        jac = torch.stack([torch.autograd.grad(out[0, i], x0, retain_graph=True)[0][0] for i in range(2)])
        assert torch.allclose(jac, rot, atol=1e-8), method


def test_unknown_method_lists_the_valid_ones(x_init):
    with pytest.raises(ValueError, match="rk45") as info:
        solve_ode(rotation_field, x_init, steps=4, method="rk45")
    for name in solvers.ODE_METHODS:
        assert name in str(info.value)


@pytest.mark.parametrize("steps", [None, 0, -3, 2.5, True, "10"])
def test_fixed_step_methods_reject_missing_or_invalid_steps(steps, x_init):
    with pytest.raises(ValueError, match="steps"):
        solve_ode(rotation_field, x_init, steps=steps, method="midpoint")


def test_dopri5_rejects_an_explicit_step_count(x_init):
    with pytest.raises(ValueError, match="dopri5"):
        solve_ode(rotation_field, x_init, steps=10, method="dopri5")


@pytest.mark.parametrize("t_start,t_end,match", [(-0.1, 1.0, "t_start"), (0.0, 1.5, "t_end"),
                                                 (0.5, 0.5, "differ"), (float("nan"), 1.0, "NaN")])
def test_bad_times_are_rejected(t_start, t_end, match, x_init):
    with pytest.raises(ValueError, match=match):
        solve_ode(rotation_field, x_init, steps=4, t_start=t_start, t_end=t_end)


def test_velocity_output_shape_must_match_x(x_init):
    with pytest.raises(ValueError, match=r"shape \(5, 1\).*\(5, 2\)"):
        solve_ode(lambda x, t: x[:, :1], x_init, steps=2)


def test_nan_state_raises_with_the_step_and_time(x_init):
    def blows_up_after_half(x, t):
        return torch.where(t[:, None] > 0.5, torch.full_like(x, float("nan")), torch.zeros_like(x))

    with pytest.raises(FloatingPointError, match=r"step 7/10.*t = 0\.7"):
        solve_ode(blows_up_after_half, x_init, steps=10, method="euler")
    with pytest.raises(FloatingPointError, match=r"evaluation \d+ of dopri5 \(t = 0\.[5-9]"):
        solve_ode(blows_up_after_half, x_init, steps=None, method="dopri5")
    with pytest.raises(FloatingPointError, match=r"underflowed.*\(t = 0\.(1\)|09)"):  # x' = x², x(0) = 10: t* = 0.1
        solve_ode(lambda x, t: x.pow(2), torch.full_like(x_init, 10.0), steps=None, method="dopri5")
    with pytest.raises(FloatingPointError, match="step 1/5"):
        solve_sde(lambda x, t: torch.zeros_like(x), lambda t: torch.full_like(t, float("inf")), x_init, steps=5)


# ------------------------------------------------------------------------------------------------ SDEs

def test_sde_with_zero_diffusion_equals_euler(x_init, generator):
    sde = solve_sde(nonlinear_field, lambda t: torch.zeros_like(t), x_init, steps=13, generator=generator, record=True)
    ode = solve_ode(nonlinear_field, x_init, steps=13, method="euler", record=True)
    assert torch.allclose(sde.x, ode.x, atol=1e-14, rtol=0)
    assert torch.allclose(sde.trajectory, ode.trajectory, atol=1e-14, rtol=0)
    assert sde.nfe == 13 and torch.equal(sde.times, ode.times)


def test_ornstein_uhlenbeck_moments_match_the_closed_form(generator):
    # dX = −θX dt + g dW, X_0 = x0: X_1 ~ N(x0 e^{−θ}, g²(1 − e^{−2θ})/(2θ)); Euler–Maruyama bias is O(h).
    theta, g, x0, n, steps = 1.5, 0.8, 2.0, 20_000, 200
    x_init = torch.full((n, 1), x0, dtype=torch.float64)
    sol = solve_sde(lambda x, t: -theta * x, lambda t: torch.full_like(t, g), x_init, steps=steps, generator=generator)
    samples = sol.x[:, 0]
    mean, var = x0 * math.exp(-theta), g**2 * (1 - math.exp(-2 * theta)) / (2 * theta)
    mean_se, var_se = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    bias_bound = 2 * theta / steps * (abs(mean) + var)        # generous bound on the O(h) discretisation bias
    assert abs(samples.mean().item() - mean) < 4 * mean_se + bias_bound
    assert abs(samples.var().item() - var) < 4 * var_se + bias_bound


@pytest.mark.parametrize("t_start,t_end", [(0.0, 1.0), (1.0, 0.0)])
def test_time_dependent_diffusion_gives_the_discrete_ito_variance(t_start, t_end, generator):
    # zero drift, g(t) = 2t: Var X_end = Σ_k |h| g(t_k)² on the grid, forward or backward in time
    n, steps = 20_000, 20
    sol = solve_sde(lambda x, t: torch.zeros_like(x), lambda t: 2 * t, torch.zeros(n, 1, dtype=torch.float64),
                    steps=steps, t_start=t_start, t_end=t_end, generator=generator)
    grid = time_grid(steps, t_start, t_end)
    var = (grid[:-1].abs().pow(2) * 4 * (1.0 / steps)).sum().item()
    assert abs(sol.x.var().item() - var) < 4 * var * math.sqrt(2 / (n - 1))
    assert abs(sol.x.mean().item()) < 4 * math.sqrt(var / n)


def test_sde_is_reproducible_with_a_seeded_generator_and_records_the_grid(x_init):
    def run():
        return solve_sde(nonlinear_field, lambda t: 0.3 + t, x_init, steps=8,
                         generator=torch.Generator().manual_seed(5), record=True)

    a, b = run(), run()
    assert torch.equal(a.x, b.x)
    assert a.trajectory.shape == (9, 5, 2) and torch.equal(a.trajectory[0], x_init)
    assert torch.equal(a.trajectory[-1], a.x)


def test_sde_rejects_a_diffusion_of_the_wrong_shape(x_init):
    with pytest.raises(ValueError, match="diffusion"):
        solve_sde(nonlinear_field, lambda t: torch.ones(3), x_init, steps=2)
    with pytest.raises(ValueError, match="steps"):
        solve_sde(nonlinear_field, lambda t: t, x_init, steps=0)
