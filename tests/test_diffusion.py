"""fmlib.diffusion against closed forms and fmlib.analytic's exact Gaussian-mixture fields."""

from __future__ import annotations

import math

import pytest
import torch

from fmlib import analytic, diffusion, paths, solvers

F64 = torch.float64


def path_of(name: str, **kw) -> paths.AffinePath:
    return paths.AffinePath(paths.get_scheduler(name, **kw))


@pytest.fixture
def mixture() -> analytic.GaussianMixture:
    return analytic.GaussianMixture.ring(4, 2.0, 0.3, dtype=F64)


def noise(n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_vp_sde_coefficients_are_minus_half_beta_and_beta():
    vp = paths.VPScheduler(0.1, 20.0)
    t = torch.linspace(0.05, 0.95, 7, dtype=F64)
    beta = 0.1 + 19.9 * (1 - t)
    c = diffusion.sde_coefficients(vp, t)
    torch.testing.assert_close(c.f, -0.5 * beta)
    torch.testing.assert_close(c.g2, beta)


def test_ve_sde_has_no_drift_and_g2_is_the_variance_rate():
    ve = paths.VEScheduler(0.01, 10.0)
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    c = diffusion.sde_coefficients(ve, t)
    sigma = ve(t).sigma
    torch.testing.assert_close(c.f, torch.zeros_like(t))
    torch.testing.assert_close(c.g2, 2 * math.log(1000.0) * sigma**2)  # d b²/ds


def test_linear_path_sde_coefficients_and_g2_is_sigma2_dlambda():
    lin = paths.CondOTScheduler()
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    c = diffusion.sde_coefficients(lin, t)
    torch.testing.assert_close(c.f, -1 / t)
    torch.testing.assert_close(c.g2, 2 * (1 - t) / t)
    torch.testing.assert_close(c.g2, (1 - t) ** 2 * diffusion.d_log_snr(lin, t))


@pytest.mark.parametrize("name", ["condot", "vp", "cosine", "ve"])
def test_d_log_snr_matches_autograd(name):
    sched = paths.get_scheduler(name)
    t = torch.linspace(0.1, 0.9, 9, dtype=F64, requires_grad=True)
    lam = sched.log_snr(t)
    (grad,) = torch.autograd.grad(lam.sum(), t)
    torch.testing.assert_close(diffusion.d_log_snr(sched, t.detach()), grad)


@pytest.mark.parametrize("name", ["condot", "vp", "cosine"])
def test_time_from_log_snr_inverts_log_snr(name):
    sched = paths.get_scheduler(name)
    t = torch.linspace(0.05, 0.95, 11, dtype=F64)
    torch.testing.assert_close(diffusion.time_from_log_snr(sched, sched.log_snr(t)), t, atol=1e-12, rtol=0)


def test_time_from_log_snr_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        diffusion.time_from_log_snr(paths.CondOTScheduler(), torch.tensor([float("nan")]))


def test_ddpm_log_snr_endpoints_closed_form():
    lam = diffusion.ddpm_log_snr(1e-4, 0.02, 1000)
    abar1 = 1 - 1e-4
    assert lam[0].item() == pytest.approx(math.log(abar1 / (1 - abar1)))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    abar = torch.prod(1 - betas).item()
    assert lam[-1].item() == pytest.approx(math.log(abar / (1 - abar)), rel=1e-9)
    with pytest.raises(ValueError):
        diffusion.ddpm_log_snr(0.02, 1e-4)


def test_rescaled_scheduler_keeps_log_snr_and_product_rule():
    base = paths.CosineScheduler()
    resc = diffusion.RescaledScheduler(base, lambda t: (1 + t, torch.ones_like(t)), label="1+t")
    t = torch.linspace(0.1, 0.9, 5, dtype=F64, requires_grad=True)
    o = resc(t)
    torch.testing.assert_close(resc.log_snr(t.detach()), base.log_snr(t.detach()))
    (da,) = torch.autograd.grad(o.alpha.sum(), t, retain_graph=True)
    (ds,) = torch.autograd.grad(o.sigma.sum(), t)
    torch.testing.assert_close(o.d_alpha.detach(), da)
    torch.testing.assert_close(o.d_sigma.detach(), ds)


# ---------------------------------------------------------------------------------------------------- samplers

@pytest.mark.parametrize("name", ["condot", "cosine", "vp"])
def test_ddim_equals_euler_of_the_linear_path_on_the_matched_grid(mixture, name):
    """DDIM on any schedule = Euler of the linear path's exact field on τ = α/(α+σ), state x/(α+σ)."""
    path = path_of(name)
    lin = path_of("condot")
    grid = solvers.time_grid(12, 0.0, 0.99) if name == "vp" else solvers.time_grid(12)
    o = path.scheduler(grid)
    tau, scale = o.alpha / (o.alpha + o.sigma), o.alpha + o.sigma
    x_start = noise() * scale[0]
    ddim = diffusion.sample_ddim(analytic.MarginalField(path, mixture), path, x_start, times=grid)
    field = analytic.MarginalField(lin, mixture)
    y = x_start / scale[0]
    for k in range(grid.numel() - 1):
        y = y + (tau[k + 1] - tau[k]) * field(y, float(tau[k]))
    torch.testing.assert_close(ddim.x / scale[-1], y, atol=1e-12, rtol=0)
    assert ddim.nfe == 12


def test_ddim_differs_from_euler_in_t_on_a_curved_schedule(mixture):
    cos = path_of("cosine")
    field = analytic.MarginalField(cos, mixture)
    x = noise()
    ddim = diffusion.sample_ddim(field, cos, x, times=solvers.time_grid(8)).x
    euler = solvers.solve_ode(field, x, steps=8).x
    assert (ddim - euler).abs().max() > 1e-2


@pytest.mark.parametrize("prediction", ["velocity", "x1", "score"])
def test_ddim_is_the_same_for_every_prediction_of_the_exact_field(mixture, prediction):
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    fields = {"velocity": field.velocity, "x1": field.posterior_x1, "score": field.score}
    grid = solvers.time_grid(10, 0.02, 1.0)
    ref = diffusion.sample_ddim(field.velocity, lin, noise(), times=grid).x
    got = diffusion.sample_ddim(fields[prediction], lin, noise(), times=grid, prediction=prediction).x
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)


def test_eta_one_step_is_the_gaussian_posterior_of_the_forward_process():
    """For one data point x1 (exact x̂1 = x1) a DDPM step t → t' has the law q(x_t' | x_t, x1)."""
    path = path_of("cosine")
    t, tn = 0.3, 0.6
    x1 = torch.tensor([[1.5, -0.5]], dtype=F64)
    xt = torch.tensor([[0.2, 0.4]], dtype=F64)
    o, on = path.scheduler(torch.tensor(t, dtype=F64)), path.scheduler(torch.tensor(tn, dtype=F64))
    # q(x_t | x_t') with x_t = (α_t/α_t') x_t' + sqrt(σ_t² − (α_t σ_t'/α_t')²) ξ, x_t' ~ N(α_t' x1, σ_t'²)
    k = float(o.alpha / on.alpha)
    v_fwd = float(o.sigma**2 - (k * on.sigma) ** 2)
    prior_var = float(on.sigma**2)
    post_var = 1 / (1 / prior_var + k * k / v_fwd)
    post_mean = post_var * (on.alpha * x1 / prior_var + k * xt / v_fwd)
    n = 40_000
    field = lambda x, tt: x1.expand_as(x)  # noqa: E731 - exact x1-prediction for a point mass
    out = diffusion.sample_ddim(field, path, xt.expand(n, 2).clone(), times=torch.tensor([t, tn]),
                                prediction="x1", eta=1.0, generator=torch.Generator().manual_seed(1)).x
    torch.testing.assert_close(out.mean(0), post_mean[0], atol=5 * math.sqrt(post_var / n), rtol=0)
    assert out.var(0).mean().item() == pytest.approx(post_var, rel=0.03)


def test_last_step_to_sigma_zero_returns_the_x1_prediction(mixture):
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    x = noise(50)
    out = diffusion.sample_ddim(field.posterior_x1, lin, x, times=torch.tensor([0.5, 1.0]), prediction="x1",
                                eta=1.0, churn=0.5, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 1
    assert torch.isfinite(out.x).all()


@pytest.mark.parametrize("eta,churn", [(0.0, 0.0), (1.0, 0.0), (0.5, 0.0), (0.0, 0.4)])
def test_stochastic_samplers_of_the_exact_field_reach_the_data_moments(mixture, eta, churn):
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    out = diffusion.sample_ddim(field, lin, x, times=solvers.time_grid(60), eta=eta, churn=churn,
                                generator=torch.Generator().manual_seed(4)).x
    torch.testing.assert_close(out.pow(2).sum(1).mean(), torch.tensor(4.0 + 2 * 0.09, dtype=F64), atol=0.2, rtol=0)


def test_recursion_coefficients_reproduce_the_deterministic_sampler():
    """x̄_N = Π a x̄_0 + Σ w_k x̂1_k for DDIM(η = 0.5 without noise contribution): check with constant x̂1."""
    cos = paths.CosineScheduler()
    grid = solvers.time_grid(6, 0.1, 0.9)
    a = diffusion.ddim_recursion_coefficients(cos, grid)
    rho = (cos(grid).sigma / cos(grid).alpha)
    torch.testing.assert_close(a, rho[1:] / rho[:-1])
    w = diffusion.prediction_weights(a)
    torch.testing.assert_close(w.sum(), 1 - a.prod())
    torch.testing.assert_close(w[-1], 1 - a[-1])
    a2 = torch.tensor([0.5, 0.25, 0.8], dtype=F64)
    torch.testing.assert_close(diffusion.prediction_weights(a2),
                               torch.tensor([0.5 * 0.25 * 0.8, 0.75 * 0.8, 0.2], dtype=F64))


def test_more_noise_moves_weight_to_later_predictions():
    cos = paths.CosineScheduler()
    grid = solvers.time_grid(20, 0.05, 0.95)
    last = [diffusion.prediction_weights(diffusion.ddim_recursion_coefficients(cos, grid, eta=e))[-5:].sum()
            for e in (0.0, 0.5, 1.0)]
    assert last[0] < last[1] < last[2]


def test_sampler_rejects_bad_input(mixture):
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    with pytest.raises(ValueError, match="increasing"):
        diffusion.sample_ddim(field, lin, noise(), times=torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError, match="eta"):
        diffusion.sample_ddim(field, lin, noise(), times=solvers.time_grid(3), eta=-1)
    with pytest.raises(ValueError, match="prediction"):
        diffusion.sample_ddim(field, lin, noise(), times=solvers.time_grid(3), prediction="noise")


# ---------------------------------------------------------------------------------------------------- SDE family

def test_sde_drift_eta_one_is_the_reverse_sde_drift(mixture):
    """η = 1: drift = −f x + g² ∇log p_t with the exact score."""
    vp = path_of("vp")
    field = analytic.MarginalField(vp, mixture)
    drift, diffusion_g = diffusion.sde_drift(vp, field, eta=1.0)
    x = noise(30)
    t = torch.full((30,), 0.4, dtype=F64)
    c = diffusion.sde_coefficients(vp.scheduler, t)
    expected = -c.f[:, None] * x + c.g2[:, None] * field.score(x, t)
    torch.testing.assert_close(drift(x, t), expected)
    torch.testing.assert_close(diffusion_g(t), c.g2.sqrt())


def test_sde_family_preserves_marginals_fokker_planck(mixture):
    """∂_t p = −div(b p) + (η²g²/2) Δp at sample points, with b the η-drift (finite differences in t and x)."""
    path = path_of("cosine")
    field = analytic.MarginalField(path, mixture)
    eta = 0.7
    drift, g = diffusion.sde_drift(path, field, eta=eta)
    x = noise(20).requires_grad_(True)
    t = 0.45
    tb = torch.full((20,), t, dtype=F64)
    p = field.log_prob(x, tb).exp()
    h = 1e-5
    dp_dt = (field.log_prob(x, t + h).exp() - field.log_prob(x, t - h).exp()) / (2 * h)
    flux = drift(x, tb) * p[:, None]
    div = sum(torch.autograd.grad(flux[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(2))
    grad_p = torch.autograd.grad(p.sum(), x, create_graph=True)[0]
    lap = sum(torch.autograd.grad(grad_p[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    rhs = -div + 0.5 * g(tb) ** 2 * lap
    torch.testing.assert_close(dp_dt, rhs.detach(), atol=1e-6, rtol=1e-5)


def test_sde_drift_errors_where_g_is_infinite(mixture):
    lin = path_of("condot")
    drift, g = diffusion.sde_drift(lin, analytic.MarginalField(lin, mixture), eta=1.0)
    with pytest.raises(ValueError, match="t_start"):
        g(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="eta"):
        diffusion.sde_drift(lin, analytic.MarginalField(lin, mixture), eta=-0.1)


def test_euler_maruyama_with_the_sde_family_reaches_the_data(mixture):
    vp = path_of("vp")
    field = analytic.MarginalField(vp, mixture)
    drift, g = diffusion.sde_drift(vp, field, eta=1.0)
    x = torch.randn(3000, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    out = solvers.solve_sde(drift, g, x, steps=400, t_end=0.999, generator=torch.Generator().manual_seed(6)).x
    assert out.pow(2).sum(1).mean().item() == pytest.approx(4.18, abs=0.25)


# ---------------------------------------------------------------------------------------------------- weightings

def test_epsilon_weights_closed_forms_on_the_linear_path():
    lin = path_of("condot")
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    torch.testing.assert_close(diffusion.epsilon_weight(lin, t, "velocity"), 1 / t**2)
    torch.testing.assert_close(diffusion.epsilon_weight(lin, t, "x1"), ((1 - t) / t) ** 2)
    torch.testing.assert_close(diffusion.epsilon_weight(lin, t, "score"), 1 / (1 - t) ** 2)
    torch.testing.assert_close(diffusion.epsilon_weight(lin, t, "epsilon"), torch.ones_like(t))


@pytest.mark.parametrize("parametrization", ["velocity", "x1", "score"])
def test_epsilon_weight_relates_the_errors_of_converted_predictions(parametrization):
    path = path_of("vp")
    t = torch.full((6,), 0.35, dtype=F64)
    x = noise(6)
    eps_hat, eps = noise(6, 1), noise(6, 2)
    pred_hat = path.convert(eps_hat, x, t, source="x0", target=parametrization)
    pred = path.convert(eps, x, t, source="x0", target=parametrization)
    ratio = (pred_hat - pred).pow(2).sum(1) / (eps_hat - eps).pow(2).sum(1)
    torch.testing.assert_close(ratio, diffusion.epsilon_weight(path, t, parametrization))


def test_flow_matching_weight_is_v_mse_on_the_cosine_schedule_up_to_a_constant():
    """Linear path, uniform t: W(λ) = e^{−λ/2}/2; cosine velocity (= −π/2 v-prediction): W = e^{−λ/2}/π."""
    t = torch.linspace(0.05, 0.95, 9, dtype=F64)
    lin, cos = path_of("condot"), path_of("cosine")
    w_lin = diffusion.effective_weight(lin, t, "velocity")
    torch.testing.assert_close(w_lin, 0.5 * torch.exp(-0.5 * lin.scheduler.log_snr(t)))
    w_cos = diffusion.effective_weight(cos, t, "velocity")
    lam = cos.scheduler.log_snr(t)
    torch.testing.assert_close(w_cos, (math.pi / 4) * torch.exp(-0.5 * lam))


def test_reweighting_turns_a_loss_into_the_requested_epsilon_weight():
    lin = path_of("condot")
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    weighting = diffusion.reweighting(lin, "velocity", lambda lam: torch.sigmoid(-lam))
    torch.testing.assert_close(weighting(t) * diffusion.epsilon_weight(lin, t, "velocity"),
                               torch.sigmoid(-lin.scheduler.log_snr(t)))


def test_time_samplers_have_their_laws():
    g = torch.Generator().manual_seed(0)
    t = diffusion.sample_time_logit_normal(20_000, mean=0.5, std=0.8, generator=g)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.03)
    assert logit.std().item() == pytest.approx(0.8, abs=0.03)
    lin = paths.CondOTScheduler()
    t = diffusion.sample_time_log_normal(20_000, lin, generator=g).double()
    log_rho = torch.log((1 - t) / t)
    assert log_rho.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_rho.std().item() == pytest.approx(1.2, abs=0.03)


@pytest.mark.parametrize("grid_fn", [diffusion.edm_grid, diffusion.uniform_log_snr_grid])
def test_grids_are_increasing_with_the_requested_levels(grid_fn):
    lin = paths.CondOTScheduler()
    grid = grid_fn(lin, 10)
    assert grid.numel() == 11 and grid[0] == 0 and grid[-1] == 1
    assert bool((grid.diff() > 0).all())
    rho = (1 - grid[1:-1]) / grid[1:-1]
    assert rho[0].item() == pytest.approx(80.0, rel=1e-9)
    assert rho[-1].item() == pytest.approx(0.002, rel=1e-6)


def test_edm_epsilon_weight_is_edm_weight_times_rho_squared():
    lam = torch.linspace(-6, 6, 7, dtype=F64)
    rho = torch.exp(-lam / 2)
    edm = (rho**2 + 0.25) / (rho * 0.5) ** 2          # EDM's λ(σ) on the denoiser error
    torch.testing.assert_close(diffusion.edm_epsilon_weight(lam), edm * rho**2)


def test_toy_flow_with_loss_edm_like_trains_and_rejects_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("FMLIB_CACHE_DIR", str(tmp_path))
    run, path, pred = diffusion.toy_flow_with_loss("moons", "EDM-like", steps=3, progress=False)
    assert pred == "velocity" and isinstance(path.scheduler, paths.CondOTScheduler)
    assert len(run.losses) == 3 and all(math.isfinite(float(v)) for v in run.losses)
    with pytest.raises(ValueError, match="loss recipe"):
        diffusion.toy_flow_with_loss("moons", "huber")


# ---------------------------------------------------------------------------------------------------- EDM (Heun + churn)

class _AffineVE(paths.Scheduler):
    """α = 1, σ_t = 0.1 + 5 (1 − t): affine in t, so Heun in (x̄, ρ) = (x, σ) is Heun in (x, t)."""

    name = "affine-ve"

    def __call__(self, t):
        t = torch.as_tensor(t, dtype=torch.get_default_dtype()) if not torch.is_tensor(t) else t
        return paths.SchedulerOutput(alpha=torch.ones_like(t), sigma=0.1 + 5.0 * (1 - t),
                                     d_alpha=torch.zeros_like(t), d_sigma=torch.full_like(t, -5.0))


def edm_times(steps: int) -> torch.Tensor:
    return diffusion.edm_grid(paths.CondOTScheduler(), steps + 1)[1:]


def test_edm_without_churn_is_heun_where_the_noise_level_is_affine_in_t(mixture):
    path = paths.AffinePath(_AffineVE())
    field = analytic.MarginalField(path, mixture)
    grid = solvers.time_grid(7)
    x = 5.1 * noise()
    edm = diffusion.sample_edm(field, path, x, times=grid)
    heun = solvers.solve_ode(field, x, steps=7, method="heun")
    torch.testing.assert_close(edm.x, heun.x, atol=1e-12, rtol=0)
    assert edm.nfe == heun.nfe == 14


def test_edm_without_churn_is_heun_of_dxbar_drho_on_the_edm_grid(mixture):
    """s_churn = 0 (or churn confined to a ρ range the grid misses): the deterministic Heun step in (x̄, ρ)."""
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    grid = edm_times(6)
    o = lin.scheduler(grid)
    rho = (o.sigma / o.alpha).tolist()
    x = o.sigma[0] * noise()
    xb = x / o.alpha[0]
    for k in range(6):
        d = field.posterior_x0(xb * o.alpha[k], float(grid[k]))
        xn = xb + (rho[k + 1] - rho[k]) * d
        if rho[k + 1] > 0:
            xn = xb + (rho[k + 1] - rho[k]) * 0.5 * (d + field.posterior_x0(xn * o.alpha[k + 1], float(grid[k + 1])))
        xb = xn
    out = diffusion.sample_edm(field, lin, x, times=grid, record=True)
    torch.testing.assert_close(out.x, xb, atol=1e-12, rtol=0)
    assert out.nfe == 11 and out.trajectory.shape == (7, *x.shape)
    missed = diffusion.sample_edm(field, lin, x, times=grid, s_churn=40.0, s_tmin=100.0, s_tmax=200.0,
                                  generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(missed.x, xb, atol=1e-12, rtol=0)


def test_edm_heun_is_second_order_on_a_gaussian():
    """Data N(m, s² I): the exact flow is x̄_ρ − m ∝ sqrt(s² + ρ²); halving the step quarters the error."""
    m, s2 = 0.7, 0.25
    gauss = analytic.GaussianMixture(means=torch.tensor([[m, m]], dtype=F64),
                                     stds=torch.tensor([s2**0.5], dtype=F64), weights=torch.ones(1, dtype=F64))
    lin = path_of("condot")
    field = analytic.MarginalField(lin, gauss)
    errors = []
    for steps in (8, 16, 32):
        grid = diffusion.edm_grid(lin.scheduler, steps + 1, sigma_max=10.0)[1:-1]   # end at ρ = 0.002
        o = lin.scheduler(grid)
        x = o.sigma[0] * noise(50)
        rho0, rho1 = float(o.sigma[0] / o.alpha[0]), float(o.sigma[-1] / o.alpha[-1])
        exact = (m + (x / o.alpha[0] - m) * math.sqrt((s2 + rho1**2) / (s2 + rho0**2))) * o.alpha[-1]
        errors.append(float((diffusion.sample_edm(field, lin, x, times=grid).x - exact).abs().max()))
    orders = [math.log2(errors[k] / errors[k + 1]) for k in range(2)]
    assert all(1.7 < p < 2.5 for p in orders), errors


def test_edm_with_churn_samples_an_exact_gaussian():
    """Stochastic EDM on the exact field of N(m, s² I): the samples have mean m and variance s²."""
    m, s2 = -0.5, 0.36
    gauss = analytic.GaussianMixture(means=torch.tensor([[m, m]], dtype=F64),
                                     stds=torch.tensor([s2**0.5], dtype=F64), weights=torch.ones(1, dtype=F64))
    lin = path_of("condot")
    field = analytic.MarginalField(lin, gauss)
    grid = edm_times(160)                               # γ = 0.25: converged to ~1 % at 160 steps
    n = 20_000
    x = lin.scheduler(grid[0]).sigma * torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = diffusion.sample_edm(field, lin, x, times=grid, s_churn=40.0, s_tmin=0.05, s_tmax=50.0,
                               generator=torch.Generator().manual_seed(3))
    assert out.nfe == 319
    torch.testing.assert_close(out.x.mean(0), torch.full((2,), m, dtype=F64), atol=5 * math.sqrt(s2 / n), rtol=0)
    torch.testing.assert_close(out.x.var(0), torch.full((2,), s2, dtype=F64), atol=0.03 * s2, rtol=0)
    det = diffusion.sample_edm(field, lin, x, times=grid)
    assert (out.x - det.x).abs().mean() > 0.1          # churn changes the samples, not their law


def test_edm_sampler_rejects_bad_input(mixture):
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    grid = edm_times(4)
    for kw in ({"s_churn": -1.0}, {"s_noise": -0.1}, {"s_tmin": 2.0, "s_tmax": 1.0}, {"prediction": "foo"},
               {"churn": -0.1}, {"churn": 0.3, "s_churn": 1.0}):
        with pytest.raises(ValueError):
            diffusion.sample_edm(field, lin, noise(), times=grid, **kw)
    with pytest.raises(ValueError, match="increasing"):
        diffusion.sample_edm(field, lin, noise(), times=grid.flip(0))


def test_predict_x1_x0_recomposes_x_and_checks_shape(mixture):
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    x = noise()
    x1, x0 = diffusion.predict_x1_x0(lin, field, x, 0.4, "velocity")
    torch.testing.assert_close(0.4 * x1 + 0.6 * x0, x)
    torch.testing.assert_close(x1, field.posterior_x1(x, 0.4))
    with pytest.raises(ValueError, match="shape"):
        diffusion.predict_x1_x0(lin, lambda x, t: x[:, :1], x, 0.4, "velocity")


def test_grid_from_log_snr_places_nodes_at_the_levels():
    lin = paths.CondOTScheduler()
    lam = torch.tensor([-2.0, 0.0, 3.0], dtype=F64)
    grid = diffusion.grid_from_log_snr(lin, lam)
    assert grid[0] == 0.0 and grid[-1] == 1.0
    torch.testing.assert_close(lin.log_snr(grid[1:-1]), lam)
    with pytest.raises(ValueError, match="increasing"):
        diffusion.grid_from_log_snr(lin, lam.flip(0))


# ---------------------------------------------------------------------------------------------------- per_sample_loss

def test_per_sample_loss_vanishes_for_the_exact_field_of_one_point_and_its_derivative_is_exact():
    point = analytic.GaussianMixture.from_points(torch.tensor([[1.0, -2.0]], dtype=F64))
    cos = path_of("cosine")
    ones = lambda p, t: torch.ones_like(t)  # noqa: E731
    loss, dloss = diffusion.per_sample_loss(cos, point, ones, 500, theta=0.0, generator=torch.Generator().manual_seed(0))
    assert loss.shape == dloss.shape == (500,)
    assert loss.abs().max() < 1e-20 and dloss.abs().max() < 1e-10   # E[ε | x̄] = ε for one data point
    ring = analytic.GaussianMixture.ring(4, 2.0, 0.3, dtype=F64)
    w = lambda p, t: diffusion.epsilon_weight(p, t, "velocity")  # noqa: E731
    h = 1e-6
    lo, hi = (diffusion.per_sample_loss(cos, ring, w, 300, theta=th, generator=torch.Generator().manual_seed(1))[0]
              for th in (0.2 - h, 0.2 + h))
    _, d = diffusion.per_sample_loss(cos, ring, w, 300, theta=0.2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d, (hi - lo) / (2 * h), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        diffusion.per_sample_loss(cos, ring, w, 0)


def test_edm_sampler_from_pure_noise_starts_with_the_ddim_step(mixture):
    # A grid from α = 0 (t = 0): the first step is DDIM's (one NFE), then EDM's steps from the next node.
    lin = path_of("condot")
    field = analytic.MarginalField(lin, mixture)
    x = noise()
    grid = diffusion.edm_grid(lin.scheduler, 6)
    assert float(grid[0]) == 0.0
    full = diffusion.sample_edm(field, lin, x, times=grid, record=True)
    after_first = diffusion.sample_ddim(field, lin, x, times=grid[:2]).x
    rest = diffusion.sample_edm(field, lin, after_first, times=grid[1:])
    assert torch.allclose(full.x, rest.x, atol=1e-12, rtol=0)
    assert full.nfe == 1 + rest.nfe == 2 * 6 - 2
    assert full.trajectory.shape[0] == grid.numel()
    # a constant churn γ (sample_ddim's parameter) is EDM's s_churn = γ N when γ ≤ √2 − 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = diffusion.sample_edm(field, lin, x, times=grid, churn=0.25, generator=g1).x
    b = diffusion.sample_edm(field, lin, x, times=grid, s_churn=0.25 * 6, generator=g2).x
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
