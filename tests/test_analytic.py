"""fmlib.analytic: Gaussian mixtures and the exact marginal field of an affine path, checked against
torch.distributions / scipy, hand-derived Gaussian formulas, autograd, self-normalised importance sampling,
the continuity equation and a hand-written Euler loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from fmlib import analytic, paths

F64 = torch.float64
SCHEDULER_CASES = [("condot", {}), ("condot", {"sigma_min": 0.05}), ("vp", {}), ("ve", {"sigma_min": 0.05,
                                                                                       "sigma_max": 5.0}),
                   ("cosine", {})]
CASE_IDS = [f"{name}{kw}" for name, kw in SCHEDULER_CASES]


def make_path(name: str = "condot", kw: dict | None = None) -> paths.AffinePath:
    return paths.AffinePath(paths.get_scheduler(name, **(kw or {})))


def mixture_2d(dtype: torch.dtype = F64) -> analytic.GaussianMixture:
    return analytic.GaussianMixture(means=torch.tensor([[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], dtype=dtype),
                                    stds=torch.tensor([0.3, 0.5, 0.2], dtype=dtype),
                                    weights=torch.tensor([0.5, 0.3, 0.2], dtype=dtype))


def mixture_1d(dtype: torch.dtype = F64) -> analytic.GaussianMixture:
    return analytic.GaussianMixture(means=torch.tensor([[-1.5], [2.0]], dtype=dtype),
                                    stds=torch.tensor([0.4, 0.7], dtype=dtype),
                                    weights=torch.tensor([0.35, 0.65], dtype=dtype))


def gaussian(m: list[float], s: float, dtype: torch.dtype = F64) -> analytic.GaussianMixture:
    return analytic.GaussianMixture(means=torch.tensor([m], dtype=dtype), stds=torch.tensor([s], dtype=dtype),
                                    weights=torch.tensor([1.0], dtype=dtype))


def autograd_d_dt(fn, t: torch.Tensor) -> torch.Tensor:
    """d/dt of fn(t) elementwise ([B] -> [B]); zero where fn does not depend on t."""
    t = t.detach().clone().requires_grad_(True)
    y = fn(t)
    if not y.requires_grad:
        return torch.zeros_like(t)
    return torch.autograd.grad(y.sum(), t)[0]


# ---------------------------------------------------------------------------------------- GaussianMixture


def test_mixture_log_prob_matches_scipy(generator):
    mix = mixture_2d()
    x = torch.randn(50, 2, generator=generator, dtype=F64) * 2
    comps = np.stack([np.log(w) + stats.multivariate_normal(m, s**2 * np.eye(2)).logpdf(x.numpy())
                      for m, s, w in zip(mix.means.numpy(), mix.stds.numpy(), mix.weights.numpy())])
    np.testing.assert_allclose(mix.log_prob(x).numpy(), logsumexp(comps, axis=0), rtol=1e-12)


def test_mixture_mean_covariance_and_sample_moments(generator):
    mix = mixture_2d()
    w, m, s = mix.weights, mix.means, mix.stds
    mean = (w[:, None] * m).sum(0)
    second = sum(w[k] * (torch.outer(m[k], m[k]) + s[k] ** 2 * torch.eye(2, dtype=F64)) for k in range(3))
    torch.testing.assert_close(mix.mean(), mean)
    torch.testing.assert_close(mix.covariance(), second - torch.outer(mean, mean))
    n = 20000
    x = mix.sample(n, generator=generator)
    assert x.shape == (n, 2) and x.dtype == F64
    se = (torch.diagonal(mix.covariance()) / n).sqrt()
    assert torch.all((x.mean(0) - mix.mean()).abs() < 5 * se)
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), rtol=0.05, atol=0.05)


def test_ring_places_equal_weight_components_on_a_circle():
    ring = analytic.GaussianMixture.ring(5, 2.0, 0.1, dtype=F64)
    assert ring.n_components == 5 and ring.dim == 2 and ring.means.dtype == F64
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((5,), 2.0, dtype=F64))
    angles = torch.atan2(ring.means[:, 1], ring.means[:, 0]).remainder(2 * math.pi)
    torch.testing.assert_close(angles, torch.arange(5, dtype=F64) * (2 * math.pi / 5), atol=1e-12, rtol=0)
    torch.testing.assert_close(ring.weights, torch.full((5,), 0.2, dtype=F64))
    torch.testing.assert_close(ring.stds, torch.full((5,), 0.1, dtype=F64))
    for bad in [dict(n_components=0), dict(radius=-1.0), dict(std=float("nan")), dict(n_components=2.5)]:
        with pytest.raises(ValueError):
            analytic.GaussianMixture.ring(**{**dict(n_components=3, radius=1.0, std=0.1), **bad})


def test_to_changes_dtype_and_keeps_the_distribution():
    mix = mixture_2d()
    f32 = mix.to(dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in (f32.means, f32.stds, f32.weights))
    x = torch.randn(20, 2, dtype=F64)
    torch.testing.assert_close(f32.log_prob(x.float()).double(), mix.log_prob(x), atol=1e-5, rtol=0)
    assert mix.to("cpu").means.device.type == "cpu"
    with pytest.raises(ValueError, match="floating-point"):
        mix.to(dtype=torch.int64)


def test_from_points_is_the_empirical_distribution(generator):
    pts = torch.randn(5, 3, generator=generator)
    mix = analytic.GaussianMixture.from_points(pts)
    assert mix.dim == 3 and torch.all(mix.stds == 0) and torch.allclose(mix.weights, torch.full((5,), 0.2))
    draws = mix.sample(100, generator=generator)
    assert all(any(torch.equal(d, p) for p in pts) for d in draws)
    torch.testing.assert_close(mix.mean(), pts.mean(0))
    torch.testing.assert_close(mix.covariance(), torch.cov(pts.T, correction=0))
    with pytest.raises(ValueError, match="stds > 0"):
        mix.log_prob(pts)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(means=torch.zeros(2), stds=torch.ones(2), weights=torch.full((2,), 0.5)), "shape"),
    (dict(means=torch.zeros(2, 1), stds=torch.ones(3), weights=torch.full((2,), 0.5)), "stds"),
    (dict(means=torch.zeros(2, 1), stds=-torch.ones(2), weights=torch.full((2,), 0.5)), ">= 0"),
    (dict(means=torch.zeros(2, 1), stds=torch.ones(2), weights=torch.tensor([0.7, 0.7])), "sum to 1"),
    (dict(means=torch.zeros(2, 1), stds=torch.ones(2), weights=torch.tensor([1.0, 0.0])), "> 0"),
    (dict(means=torch.zeros(2, 1, dtype=torch.long), stds=torch.ones(2), weights=torch.full((2,), 0.5)), "float"),
])
def test_mixture_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analytic.GaussianMixture(**kwargs)


# ------------------------------------------------------------------- Gaussian data: independent closed forms


@pytest.mark.parametrize("t_value", [0.0, 0.3, 0.8, 1.0])
def test_condot_marginal_of_gaussian_data_is_gaussian_monte_carlo(t_value, generator):
    m, s, n = torch.tensor([0.7, -1.2], dtype=F64), 0.5, 40000
    path = make_path()
    x1 = m + s * torch.randn(n, 2, generator=generator, dtype=F64)
    xt = path.sample(torch.randn(n, 2, generator=generator, dtype=F64), x1, t_value).x_t
    var = t_value**2 * s**2 + (1 - t_value) ** 2
    mean_se = math.sqrt(var / n)
    var_se = var * math.sqrt(2 / (n - 1))
    assert torch.all((xt.mean(0) - t_value * m).abs() < 5 * mean_se)
    assert torch.all((xt.var(0) - var).abs() < 5 * var_se)


@pytest.mark.parametrize("t_value", [0.0, 0.25, 0.6, 1.0])
def test_log_prob_of_gaussian_data_matches_torch_distributions(t_value, generator):
    m, s = [0.7, -1.2], 0.5
    field = analytic.MarginalField(make_path(), gaussian(m, s))
    x = torch.randn(30, 2, generator=generator, dtype=F64) * 2
    ref = torch.distributions.Normal(t_value * torch.tensor(m, dtype=F64),
                                     math.sqrt(t_value**2 * s**2 + (1 - t_value) ** 2))
    torch.testing.assert_close(field.log_prob(x, t_value), ref.log_prob(x).sum(-1))


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_log_prob_of_mixture_matches_scipy_for_every_scheduler(name, kw, generator):
    mix, path = mixture_2d(), make_path(name, kw)
    field = analytic.MarginalField(path, mix)
    x = torch.randn(40, 2, generator=generator, dtype=F64) * 2
    t = torch.rand(40, generator=generator, dtype=F64)
    o = path.scheduler(t)
    ours = field.log_prob(x, t).numpy()
    for b in range(0, 40, 7):
        a, sg = o.alpha[b].item(), o.sigma[b].item()
        comps = [math.log(w) + stats.multivariate_normal(a * mk, (a**2 * sk**2 + sg**2) * np.eye(2)).logpdf(
            x[b].numpy()) for mk, sk, w in zip(mix.means.numpy(), mix.stds.numpy(), mix.weights.numpy())]
        assert ours[b] == pytest.approx(logsumexp(comps), rel=1e-10)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_velocity_of_gaussian_data_is_the_gaussian_path_velocity(name, kw, generator):
    """p_t = N(μ_t, S_t² I) with μ_t = α_t m, S_t² = α_t² s² + σ_t² is generated by u = μ'_t + (S'_t/S_t)(x − μ_t);
    μ'_t and S'_t are taken by autograd from α_t, σ_t (not from the scheduler's derivatives)."""
    m, s = torch.tensor([0.7, -1.2], dtype=F64), 0.6
    path = make_path(name, kw)
    field = analytic.MarginalField(path, gaussian(m.tolist(), s))
    t = torch.linspace(0.0, 0.97, 25, dtype=F64)
    x = torch.randn(25, 2, generator=generator, dtype=F64) * 2
    alpha = path.scheduler(t).alpha
    d_alpha = autograd_d_dt(lambda tt: path.scheduler(tt).alpha, t)
    std = (alpha**2 * s**2 + path.scheduler(t).sigma ** 2).sqrt()
    d_std = autograd_d_dt(lambda tt: (path.scheduler(tt).alpha ** 2 * s**2 + path.scheduler(tt).sigma ** 2).sqrt(), t)
    expected = d_alpha[:, None] * m + (d_std / std)[:, None] * (x - alpha[:, None] * m)
    torch.testing.assert_close(field.velocity(x, t), expected, rtol=1e-8, atol=1e-8)
    # the irreducible CFM variance of Gaussian data is constant in x: D s² (α'σ − σ'α)² / S_t²
    o = path.scheduler(t)
    var = 2 * s**2 * (o.d_alpha * o.sigma - o.d_sigma * o.alpha) ** 2 / std**2
    torch.testing.assert_close(field.conditional_velocity_variance(x, t), var, rtol=1e-8, atol=1e-10)


def test_condot_gaussian_data_variance_matches_the_chapter_formula(generator):
    s = 0.5
    field = analytic.MarginalField(make_path(), gaussian([0.7], s))
    t = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0], dtype=F64)
    x = torch.randn(5, 1, generator=generator, dtype=F64)
    torch.testing.assert_close(field.conditional_velocity_variance(x, t), s**2 / (s**2 * t**2 + (1 - t) ** 2))
    torch.testing.assert_close(field.velocity(x, 1.0), x)   # at t = 1: E[X1|x] = x, E[X0|x] = E[X0] = 0


# -------------------------------------------------------------------------------- mixtures: oracles


def snis_velocity(path, mix, x, t_value, n, generator):
    """Self-normalised importance estimate of E[u_t(x | X1) | X_t = x] with X1 ~ q (and its standard error),
    for one point x [D]: weights N(x; α X1, σ² I)."""
    o = path.scheduler(torch.tensor(t_value, dtype=F64))
    x1 = mix.sample(n, generator=generator)
    logw = -0.5 * ((x - o.alpha * x1) ** 2).sum(1) / o.sigma**2
    w = torch.softmax(logw, 0)
    u = path.conditional_velocity(x.expand_as(x1), x1, t_value)
    est = (w[:, None] * u).sum(0)
    se = ((w[:, None] ** 2 * (u - est) ** 2).sum(0)).sqrt()
    second = (w * (u**2).sum(1)).sum()
    return est, se, second - (est**2).sum()


@pytest.mark.parametrize(("name", "kw"), [("condot", {}), ("cosine", {})])
def test_velocity_and_variance_match_importance_sampling_for_a_mixture(name, kw, generator):
    mix, path = mixture_1d(), make_path(name, kw)
    field = analytic.MarginalField(path, mix)
    for t_value, x_value in [(0.3, 0.2), (0.6, -0.8), (0.6, 1.0)]:
        x = torch.tensor([x_value], dtype=F64)
        est, se, var = snis_velocity(path, mix, x, t_value, 40000, generator)
        exact = field.velocity(x[None], t_value)[0]
        assert torch.all((exact - est).abs() < 5 * se + 1e-9), (t_value, exact, est, se)
        exact_var = field.conditional_velocity_variance(x[None], t_value)[0]
        assert exact_var.item() == pytest.approx(var.item(), rel=0.05)


def test_point_mass_variance_by_exact_enumeration(generator):
    """For point-mass data the posterior over X1 is a categorical with scipy-computed weights; the conditional
    velocity is then deterministic per point, so Var is the weighted spread of the u_t(x | x^(i))."""
    pts = torch.tensor([[-1.0, 0.0], [2.0, 1.0], [0.0, -2.0], [0.5, 0.5]], dtype=F64)
    path = make_path()
    field = analytic.MarginalField(path, analytic.GaussianMixture.from_points(pts))
    x = torch.randn(6, 2, generator=generator, dtype=F64)
    for t_value in (0.0, 0.4, 0.9):
        sig = 1 - t_value
        logw = np.array([[stats.multivariate_normal(t_value * p.numpy(), sig**2 * np.eye(2)).logpdf(xb.numpy())
                          for p in pts] for xb in x])
        w = torch.from_numpy(np.exp(logw - logsumexp(logw, axis=1, keepdims=True)))
        u = torch.stack([path.conditional_velocity(x, p.expand_as(x), t_value) for p in pts], dim=1)  # [B, N, D]
        mean = (w[:, :, None] * u).sum(1)
        var = (w * ((u - mean[:, None]) ** 2).sum(-1)).sum(1)
        torch.testing.assert_close(field.velocity(x, t_value), mean)
        torch.testing.assert_close(field.conditional_velocity_variance(x, t_value), var)
        log_p = torch.from_numpy(logsumexp(logw, axis=1) - math.log(4))
        torch.testing.assert_close(field.log_prob(x, t_value), log_p)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_score_is_the_gradient_of_log_prob(name, kw, generator):
    field = analytic.MarginalField(make_path(name, kw), mixture_2d())
    x = (torch.randn(32, 2, generator=generator, dtype=F64) * 2).requires_grad_(True)
    t = torch.linspace(0.0, 1.0, 32, dtype=F64)
    grad, = torch.autograd.grad(field.log_prob(x, t).sum(), x)
    torch.testing.assert_close(field.score(x, t), grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_posteriors_velocity_and_score_agree_through_the_path_conversions(name, kw, generator):
    path = make_path(name, kw)
    field = analytic.MarginalField(path, mixture_2d())
    x = torch.randn(64, 2, generator=generator, dtype=F64) * 2
    t = torch.rand(64, generator=generator, dtype=F64) * 0.9 + 0.05
    e1, e0, u, score = field.posterior_x1(x, t), field.posterior_x0(x, t), field.velocity(x, t), field.score(x, t)
    o = path.scheduler(t)
    torch.testing.assert_close(o.alpha[:, None] * e1 + o.sigma[:, None] * e0, x)
    torch.testing.assert_close(o.d_alpha[:, None] * e1 + o.d_sigma[:, None] * e0, u)
    torch.testing.assert_close(path.velocity_from_x1(x, e1, t), u)
    torch.testing.assert_close(path.velocity_from_x0(x, e0, t), u)
    torch.testing.assert_close(path.score_from_x0(x, e0, t), score)          # Tweedie
    torch.testing.assert_close(path.velocity_from_score(x, score, t), u)
    torch.testing.assert_close(field(x, t), u)


@pytest.mark.parametrize("mix_fn", [mixture_1d, mixture_2d], ids=["1d", "2d"])
@pytest.mark.parametrize(("name", "kw"), [("condot", {}), ("vp", {}), ("cosine", {})])
def test_marginal_velocity_and_density_satisfy_the_continuity_equation(mix_fn, name, kw, generator):
    """∂_t log p_t + ∇·u_t + u_t·∇log p_t = 0 (the continuity equation divided by p_t): ∂_t by central differences,
    divergence and gradient by autograd."""
    mix = mix_fn()
    field = analytic.MarginalField(make_path(name, kw), mix)
    n, dim, h = 24, mix.dim, 1e-5
    x = (torch.randn(n, dim, generator=generator, dtype=F64) * 1.5).requires_grad_(True)
    t = torch.rand(n, generator=generator, dtype=F64) * 0.8 + 0.1
    dlogp_dt = (field.log_prob(x, t + h) - field.log_prob(x, t - h)).detach() / (2 * h)
    u = field.velocity(x, t)
    div = sum(torch.autograd.grad(u[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(dim))
    grad_logp, = torch.autograd.grad(field.log_prob(x, t).sum(), x)
    residual = dlogp_dt + div + (u * grad_logp).sum(1)
    scale = dlogp_dt.abs() + div.abs() + 1.0
    assert torch.all(residual.abs() < 1e-6 * scale), residual.abs().max()


# ------------------------------------------------------------------------------------ point-mass data


def test_marginal_velocity_of_a_training_set_memorises_it(generator):
    """Euler-integrating the exact marginal velocity of point-mass data from noise lands on training points."""
    pts = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5], [0.5, -2.0], [-1.0, -1.0]], dtype=F64)
    field = analytic.MarginalField(make_path(), analytic.GaussianMixture.from_points(pts))
    x = torch.randn(300, 2, generator=generator, dtype=F64)
    steps = 100
    with torch.no_grad():
        for k in range(steps):
            x = x + field.velocity(x, k / steps) / steps
    nearest = torch.cdist(x, pts).min(dim=1)
    assert nearest.values.max() < 1e-3
    assert set(nearest.indices.tolist()) == set(range(5))           # every training point is reached


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conditional_velocity_variance_is_nonnegative_and_finite(dtype, generator):
    data = [mixture_2d(dtype), analytic.GaussianMixture.from_points(torch.randn(40, 2, generator=generator).to(dtype))]
    x = torch.randn(500, 2, generator=generator).to(dtype) * 3
    t = torch.rand(500, generator=generator).to(dtype) * 0.999
    for name in ("condot", "cosine", "ve"):
        for mix in data:
            var = analytic.MarginalField(make_path(name), mix).conditional_velocity_variance(x, t)
            assert var.dtype == dtype and torch.isfinite(var).all() and torch.all(var >= 0)


def test_point_masses_at_sigma_zero_raise_and_alpha_zero_is_fine():
    pts = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    field = analytic.MarginalField(make_path(), analytic.GaussianMixture.from_points(pts))
    x = torch.randn(3, 2)
    for method in ("log_prob", "posterior_x1", "posterior_x0", "velocity", "score", "conditional_velocity_variance"):
        with pytest.raises(ValueError, match="point masses"):
            getattr(field, method)(x, torch.tensor([0.5, 1.0, 0.2]))
    # t = 0 (α_0 = 0): p_0 = N(0, I), E[X1 | x] = E[X1], u_0(x) = E[X1] − x
    torch.testing.assert_close(field.log_prob(x, 0.0), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1))
    torch.testing.assert_close(field.posterior_x1(x, 0.0), pts.mean(0).expand_as(x))
    torch.testing.assert_close(field.velocity(x, 0.0), pts.mean(0) - x)
    # with σ_min > 0 the point-mass marginal has a density at t = 1
    smin_field = analytic.MarginalField(make_path("condot", {"sigma_min": 0.1}),
                                        analytic.GaussianMixture.from_points(pts))
    assert torch.isfinite(smin_field.velocity(x, 1.0)).all()


def test_vp_velocity_at_t_one_raises_but_density_and_score_are_defined():
    field = analytic.MarginalField(make_path("vp"), mixture_1d())
    x = torch.randn(4, 1, dtype=F64)
    with pytest.raises(ValueError, match="infinite"):
        field.velocity(x, 1.0)
    torch.testing.assert_close(field.log_prob(x, 1.0), mixture_1d().log_prob(x))
    torch.testing.assert_close(field.posterior_x0(x, 1.0), torch.zeros_like(x))
    assert torch.isfinite(field.score(x, 1.0)).all()


def test_stable_far_from_the_data_and_near_the_data_end():
    field = analytic.MarginalField(make_path(), analytic.GaussianMixture.from_points(torch.tensor([[0.0], [1.0]])))
    far = torch.tensor([[1e3], [-1e3]])
    assert torch.isfinite(field.velocity(far, 0.5)).all() and torch.isfinite(field.log_prob(far, 0.5)).all()
    # float32 at t = 0.999 (σ = 1e-3): responsibilities stay sharp and exact
    x = torch.tensor([[0.999 * 1.0 + 1e-3 * 0.3], [1e-3 * -0.2]])
    u = field.velocity(x, 0.999)
    torch.testing.assert_close(u, torch.tensor([[1.0 - 0.3], [0.2]]), rtol=1e-3, atol=1e-3)


def test_chunked_evaluation_equals_one_chunk(monkeypatch, generator):
    field = analytic.MarginalField(make_path("cosine"), mixture_2d())
    x = torch.randn(37, 2, generator=generator, dtype=F64)
    t = torch.rand(37, generator=generator, dtype=F64)
    whole = [field.log_prob(x, t), field.velocity(x, t), field.conditional_velocity_variance(x, t)]
    monkeypatch.setattr(analytic, "_CHUNK_ELEMENTS", 20)       # 3 rows per chunk
    parts = [field.log_prob(x, t), field.velocity(x, t), field.conditional_velocity_variance(x, t)]
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


def test_works_in_float32_and_moves_the_mixture_to_the_input_dtype(generator):
    field = analytic.MarginalField(make_path(), mixture_2d(F64))
    x = torch.randn(8, 2, generator=generator)
    u32 = field.velocity(x, torch.full((8,), 0.5))
    assert u32.dtype == torch.float32
    torch.testing.assert_close(u32, field.velocity(x.double(), 0.5).float(), rtol=1e-5, atol=1e-5)


def test_marginal_field_rejects_bad_inputs():
    field = analytic.MarginalField(make_path(), mixture_2d())
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        field.velocity(torch.randn(4, 3, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="dims"):
        field.velocity(torch.randn(4, dtype=F64), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        field.log_prob(torch.randn(4, 2, dtype=F64), 1.5)
    with pytest.raises(ValueError, match="shape"):
        field.score(torch.randn(4, 2, dtype=F64), torch.rand(3))
    with pytest.raises(TypeError):
        analytic.MarginalField(make_path(), "data")
    assert "K=3, D=2" in repr(field)
