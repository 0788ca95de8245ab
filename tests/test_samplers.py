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
