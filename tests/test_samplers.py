"""fmlib.samplers against closed forms: grids, order on the exact Gaussian field, DDIM = exponential order 1."""

import math

import pytest
import torch

from fmlib import analytic, diffusion, paths, samplers, solvers

LIN = paths.AffinePath(paths.get_scheduler("condot"))


def gaussian_field():
    """Data N(m, s² I): the exact velocity is affine in x and the flow has a closed form."""
    m, s = torch.tensor([[1.5, -0.5]], dtype=torch.float64), 0.6
    mix = analytic.GaussianMixture(means=m, stds=torch.tensor([s], dtype=torch.float64),
                                   weights=torch.ones(1, dtype=torch.float64))
    field = analytic.MarginalField(LIN, mix)

    def exact(x0: torch.Tensor, t: float) -> torch.Tensor:
        # x_t = α_t m + sqrt(α_t² s² + σ_t²) x0 for the linear path (α = t, σ = 1 − t)
        return t * m + math.sqrt(t * t * s * s + (1 - t) ** 2) * x0

    return field, exact


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_solve_on_grid_has_its_order_on_the_gaussian_flow(method, order):
    field, exact = gaussian_field()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []
    for n in (16, 32, 64):
        x = samplers.solve_on_grid(field, x0, solvers.time_grid(n), method=method).x
        errors.append(float((x - exact(x0, 1.0)).abs().max()))
    slope = math.log2(errors[1] / errors[2])
    assert slope > order - 0.25, (errors, slope)      # at least the order (on a Gaussian it can be more)


@pytest.mark.parametrize("order", [1, 2])
def test_exponential_integrator_has_its_order(order):
    field, exact = gaussian_field()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors = []
    for n in (64, 128, 256):
        x = samplers.sample_exponential(field, LIN, x0, times=solvers.time_grid(n), order=order).x
        errors.append(float((x - exact(x0, 1.0)).abs().max()))
    assert math.log2(errors[1] / errors[2]) > order - 0.35, errors


def test_solve_on_grid_equals_solve_ode_on_the_uniform_grid():
    field, _ = gaussian_field()
    x0 = torch.randn(16, 2, dtype=torch.float64)
    for method in ("euler", "midpoint", "heun", "rk4"):
        a = samplers.solve_on_grid(field, x0, solvers.time_grid(7), method=method)
        b = solvers.solve_ode(field, x0, steps=7, method=method)
        assert torch.allclose(a.x, b.x, atol=1e-14, rtol=0) and a.nfe == b.nfe == 7 * solvers.NFE_PER_STEP[method]


@pytest.mark.parametrize("scheduler", ["condot", "vp", "cosine"])
def test_first_order_exponential_step_is_ddim(scheduler):
    path = paths.AffinePath(paths.get_scheduler(scheduler))
    mix = analytic.GaussianMixture.ring(4, 2.0, 0.3, dtype=torch.float64)
    field = analytic.MarginalField(path, mix)
    x0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = solvers.time_grid(12, 0.0, 0.99) if scheduler == "vp" else diffusion.edm_grid(path.scheduler, 12)
    ddim = diffusion.sample_ddim(field, path, x0, times=grid).x
    expo = samplers.sample_exponential(field, path, x0, times=grid, order=1)
    assert expo.nfe == grid.numel() - 1
    assert float((ddim - expo.x).abs().max()) < 1e-12


def test_cosine_grid_on_the_linear_path_is_the_closed_form():
    grid = samplers.cosine_grid(LIN.scheduler, 10)
    s = torch.arange(11, dtype=torch.float64) / 10
    closed = torch.sin(math.pi * s / 2) / (torch.sin(math.pi * s / 2) + torch.cos(math.pi * s / 2))
    assert torch.allclose(grid, closed, atol=1e-12)


def test_butcher_tableaus_are_consistent():
    for method in solvers.FIXED_STEP_METHODS:
        tab = samplers.butcher_tableau(method)
        assert abs(sum(tab.b) - 1) < 1e-15 and tab.nfe_per_step == solvers.NFE_PER_STEP[method]
        for c, row in zip(tab.c, tab.a):
            assert abs(sum(row) - c) < 1e-15


def test_bad_input_is_refused():
    field, _ = gaussian_field()
    x0 = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly"):
        samplers.solve_on_grid(field, x0, [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="order"):
        samplers.sample_exponential(field, LIN, x0, times=solvers.time_grid(4), order=3)
    with pytest.raises(ValueError, match="increasing"):
        samplers.sample_exponential(field, LIN, x0, times=[1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="method"):
        samplers.butcher_tableau("dopri5")


def test_second_order_exponential_step_integrates_a_linear_in_mu_prediction_exactly():
    """x̂1 = a + b μ(t) (independent of x): the multistep step integrates its linear interpolant exactly, so
    the second step (the first with history, step ratio r ≠ 1) equals the exact flow from the first step's end."""
    a, b = torch.tensor([[0.7, -1.2]], dtype=torch.float64), torch.tensor([[0.3, 0.5]], dtype=torch.float64)

    def mu_of(t):
        return torch.log(t / (1 - t))

    def field(x, t):                                    # an x1-prediction
        return (a + b * mu_of(t)[:, None]).expand_as(x)

    grid = torch.tensor([0.2, 0.45, 0.8], dtype=torch.float64)
    x0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (t0, t1, t2), (m0, m1, m2) = grid.tolist(), mu_of(grid).tolist()
    x1 = (1 - t1) / (1 - t0) * x0 + t1 * (-math.expm1(-(m1 - m0))) * (a + b * m0)
    # ∫ e^μ (a + b μ) dμ = e^μ (a + b (μ − 1))
    integral = math.exp(m2) * (a + b * (m2 - 1)) - math.exp(m1) * (a + b * (m1 - 1))
    x2 = (1 - t2) * (x1 / (1 - t1) + integral)
    out = samplers.sample_exponential(field, LIN, x0, times=grid, order=2, prediction="x1")
    assert out.nfe == 2 and float((out.x - x2).abs().max()) < 1e-12
    first = samplers.sample_exponential(field, LIN, x0, times=grid, order=1, prediction="x1")
    assert float((first.x - x2).abs().max()) > 1e-3     # order 1 is not exact here


def test_second_order_exponential_integrator_has_order_two_on_a_log_snr_grid():
    field, exact = gaussian_field()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    errors = []
    for n in (16, 32, 64):
        grid = diffusion.time_from_log_snr(LIN.scheduler, torch.linspace(-4.0, 4.0, n + 1, dtype=torch.float64))
        t_a, t_b = float(grid[0]), float(grid[-1])
        x = samplers.sample_exponential(field, LIN, exact(x0, t_a), times=grid, order=2).x
        errors.append(float((x - exact(x0, t_b)).abs().max()))
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(s - 2) < 0.3 for s in slopes), (errors, slopes)


def edm_in_its_own_variables(field, x0, grid):
    """EDM's Algorithm 1 written out: the DDIM step from t = 0, Heun (fmlib's tableau) for dx̄/dρ = ε̂ on the
    ρ-grid (time τ = ρ/ρ_max ∈ [0, 1], decreasing), then an Euler step to ρ = 0."""
    rho = ((1 - grid) / grid)[1:-1]
    rho_max = float(rho[0])

    def eps_at(x, t):
        return LIN.convert(field(x, t), x, t, source="velocity", target="x0")

    def slope(xbar, tau):                               # dx̄/dτ = ρ_max ε̂(α x̄, t(ρ))
        t = 1 / (1 + rho_max * tau)
        return rho_max * eps_at(t[:, None] * xbar, t)

    xbar = diffusion.sample_ddim(field, LIN, x0, times=grid[:2]).x / grid[1]
    xbar = samplers.solve_on_grid(slope, xbar, rho / rho_max, method="heun").x
    t_last = torch.full((x0.shape[0],), float(grid[-2]), dtype=torch.float64)
    return xbar - rho[-1] * eps_at(t_last[:, None] * xbar, t_last)   # α = 1 at t = 1


def test_edm_sampler_is_heun_in_the_scale_free_state():
    mix = analytic.GaussianMixture.ring(4, 2.0, 0.3, dtype=torch.float64)
    field = analytic.MarginalField(LIN, mix)
    x0 = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grid = diffusion.edm_grid(LIN.scheduler, 10)
    out = diffusion.sample_edm(field, LIN, x0, times=grid)
    assert out.nfe == 2 * 10 - 2
    assert float((out.x - edm_in_its_own_variables(field, x0, grid)).abs().max()) < 1e-12
    heun_xt = samplers.solve_on_grid(field, x0, grid, method="heun").x
    assert float((out.x - heun_xt).abs().max()) > 1e-4   # Heun in (x, t) is another method


def test_edm_sampler_has_order_two_and_churn_is_seeded():
    field, exact = gaussian_field()
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    errors = [float((diffusion.sample_edm(field, LIN, x0, times=diffusion.edm_grid(LIN.scheduler, n)).x
                     - exact(x0, 1.0)).abs().max()) for n in (32, 64)]
    assert math.log2(errors[0] / errors[1]) > 1.7, errors
    grid = diffusion.edm_grid(LIN.scheduler, 8)
    runs = [diffusion.sample_edm(field, LIN, x0, times=grid, churn=0.3,
                                generator=torch.Generator().manual_seed(7)).x for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert float((runs[0] - diffusion.sample_edm(field, LIN, x0, times=grid).x).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="churn"):
        diffusion.sample_edm(field, LIN, x0, times=grid, churn=-0.1)
    with pytest.raises(ValueError, match="increasing"):
        diffusion.sample_edm(field, LIN, x0, times=grid.flip(0))
