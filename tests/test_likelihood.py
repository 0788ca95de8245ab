"""fmlib.likelihood against Gaussian closed forms (scipy as the oracle), autograd Jacobians and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch import nn

from fmlib import likelihood
from fmlib.likelihood import (
    divergence_exact,
    divergence_hutchinson,
    log_likelihood,
    make_probes,
    standard_normal_log_prob,
)
from fmlib.solvers import NFE_PER_STEP, NFECounter


class TinyMLP(nn.Module):
    """v(x, t) = W2 tanh(W1 [x, t] + b1) + b2 with weights drawn from a generator (float64)."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim)).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.7)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return self.net(torch.cat([flat, t[:, None].to(x.dtype)], 1)).reshape(x.shape)


def condot_gaussian_field(m: float, s: float):
    """Exact marginal velocity of x_t = t x1 + (1 − t) x0, x0 ~ N(0, I), x1 ~ N(m, s² I):
    x_t ~ N(t m, σ_t² I) with σ_t² = t² s² + (1 − t)², u_t(x) = m + (σ_t σ'_t / σ_t²)(x − t m),
    σ_t σ'_t = t s² − (1 − t). Its time-1 flow maps x0 to m + s x0."""

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        var = t**2 * s**2 + (1 - t) ** 2
        return m + (t * s**2 - (1 - t)) / var * (x - t * m)

    return field


def linear_field(a: np.ndarray, b: np.ndarray):
    a_t, b_t = torch.tensor(a), torch.tensor(b)
    return lambda x, t: x @ a_t.T + b_t


def linear_flow_gaussian(a: np.ndarray, b: np.ndarray) -> scipy.stats._multivariate.multivariate_normal_frozen:
    """u(x) = A x + b for t ∈ [0, 1] maps x0 to e^A x0 + A⁻¹(e^A − I) b: N(0, I) ↦ N(A⁻¹(e^A − I) b, e^A e^Aᵀ)."""
    expm = scipy.linalg.expm(a)
    mean = np.linalg.solve(a, (expm - np.eye(len(b))) @ b)
    return scipy.stats.multivariate_normal(mean=mean, cov=expm @ expm.T)


# ------------------------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("shape", [(6, 3), (6, 1, 2, 2), (6,)])
def test_standard_normal_log_prob_matches_scipy(shape, generator):
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    flat = x.reshape(shape[0], -1).numpy()
    oracle = scipy.stats.multivariate_normal(mean=np.zeros(flat.shape[1])).logpdf(flat)
    assert np.allclose(standard_normal_log_prob(x).numpy(), np.atleast_1d(oracle), atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("method,steps,tol", [("rk4", 20, 1e-4), ("dopri5", None, 1e-6)])
def test_log_likelihood_of_a_linear_field_is_the_pushed_forward_gaussian(dim, method, steps, tol, generator):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(dim, dim)) * 0.8          # not symmetric in 2-D
    b = rng.normal(size=dim)
    oracle = linear_flow_gaussian(a, b)
    x1 = torch.tensor(oracle.rvs(size=16, random_state=rng).reshape(16, dim))
    result = log_likelihood(linear_field(a, b), x1, steps=steps, method=method, atol=1e-9, rtol=1e-9)
    assert np.allclose(result.log_prob.numpy(), oracle.logpdf(x1.numpy()), atol=tol)
    # delta = −∫ div u = −tr A, and x0 = e^{−A}(x1 − mean)
    assert torch.allclose(result.delta_log_prob, torch.full((16,), -np.trace(a), dtype=torch.float64), atol=tol)
    x0 = (x1.numpy() - oracle.mean) @ scipy.linalg.expm(-a).T
    assert np.allclose(result.x0.numpy(), x0, atol=tol)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("method,steps,tol", [("rk4", 20, 1e-4), ("dopri5", None, 1e-6)])
def test_log_likelihood_of_the_condot_gaussian_marginal_field_is_the_data_density(dim, method, steps, tol, generator):
    m, s = 1.5, 0.5
    x1 = m + s * torch.randn(32, dim, generator=generator, dtype=torch.float64)
    result = log_likelihood(condot_gaussian_field(m, s), x1, steps=steps, method=method, atol=1e-9, rtol=1e-9)
    oracle = scipy.stats.multivariate_normal(mean=np.full(dim, m), cov=s**2 * np.eye(dim)).logpdf(x1.numpy())
    assert np.allclose(result.log_prob.numpy(), np.atleast_1d(oracle), atol=tol)
    assert torch.allclose(result.x0, (x1 - m) / s, atol=tol)
    assert torch.allclose(result.source_log_prob, standard_normal_log_prob(result.x0))
    assert torch.allclose(result.log_prob, result.source_log_prob + result.delta_log_prob)


def test_log_likelihood_error_shrinks_with_the_solver_order(generator):
    m, s = 1.5, 0.5
    x1 = m + s * torch.randn(16, 2, generator=generator, dtype=torch.float64)
    exact = -((x1 - m) ** 2).sum(1) / (2 * s**2) - math.log(2 * math.pi * s**2)
    field = condot_gaussian_field(m, s)
    errors = {method: (log_likelihood(field, x1, steps=20, method=method).log_prob - exact).abs().max().item()
              for method in ("euler", "midpoint", "rk4")}
    assert errors["rk4"] < errors["midpoint"] < errors["euler"]
    assert errors["rk4"] < 1e-4


def test_custom_source_log_prob_is_used(generator):
    # with u = 0 the flow is the identity and log p_1 = log p_0
    x1 = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    src = scipy.stats.multivariate_normal(mean=[1.0, -1.0], cov=[[2.0, 0.3], [0.3, 1.0]])
    result = log_likelihood(lambda x, t: torch.zeros_like(x), x1, steps=2, method="euler",
                            source_log_prob=lambda x: torch.tensor(src.logpdf(x.numpy())))
    assert np.allclose(result.log_prob.numpy(), src.logpdf(x1.numpy()))
    assert torch.equal(result.delta_log_prob, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_log_likelihood_counts_one_velocity_call_per_stage(method, generator):
    counter = NFECounter(TinyMLP(2, 8, generator))
    result = log_likelihood(counter, torch.randn(4, 2, dtype=torch.float64, generator=generator), steps=3,
                            method=method)
    assert result.nfe == counter.nfe == 3 * NFE_PER_STEP[method]


# ------------------------------------------------------------------------------------------- divergences

def jacobian_per_sample(velocity, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[B, D, D] Jacobians of the flattened velocity, one independent autograd.functional call per sample."""
    rows = []
    for xi, ti in zip(x, t):
        f = lambda z: velocity(z.reshape(1, *x.shape[1:]), ti.reshape(1)).reshape(-1)  # noqa: E731
        rows.append(torch.autograd.functional.jacobian(f, xi.reshape(-1)))
    return torch.stack(rows)


def tiny_mlp_and_inputs(shape: tuple[int, ...], generator: torch.Generator):
    """A float64 TinyMLP for inputs of ``shape`` and a random batch (x, t) for it."""
    net = TinyMLP(int(np.prod(shape[1:])), 16, generator)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    return net, x, torch.rand(shape[0], generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 2)])
def test_divergence_exact_equals_the_trace_of_the_autograd_jacobian(shape, generator):
    net, x, t = tiny_mlp_and_inputs(shape, generator)
    v, div = divergence_exact(net, x, t)
    jac = jacobian_per_sample(net, x, t)
    assert torch.allclose(div, torch.diagonal(jac, dim1=1, dim2=2).sum(1), atol=1e-12)
    assert torch.allclose(v, net(x, t)) and v.shape == shape
    assert not v.requires_grad and not div.requires_grad


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 2)])
def test_jacobian_matches_torch_autograd_functional(shape, generator):
    net, x, t = tiny_mlp_and_inputs(shape, generator)
    v, jac = likelihood.jacobian(net, x, t)
    dim = int(np.prod(shape[1:]))
    assert jac.shape == (shape[0], dim, dim) and v.shape == shape and not jac.requires_grad
    torch.testing.assert_close(jac, jacobian_per_sample(net, x, t), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.diagonal(jac, dim1=1, dim2=2).sum(1), divergence_exact(net, x, t)[1])


def test_jacobian_of_a_linear_field_is_its_matrix_and_keeps_a_graph_on_request(generator):
    a = np.array([[0.5, -1.0, 0.2], [0.3, 0.1, 0.0], [-0.4, 0.7, -0.2]])
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    _, jac = likelihood.jacobian(linear_field(a, np.zeros(3)), x, 0.5)
    torch.testing.assert_close(jac, torch.tensor(a).expand(4, 3, 3))
    net = TinyMLP(3, 8, generator)
    _, jac = likelihood.jacobian(net, x, torch.full((4,), 0.5, dtype=torch.float64), create_graph=True)
    assert jac.requires_grad  # differentiable w.r.t. the parameters (e.g. a Jacobian-norm penalty)
    jac.square().sum().backward()
    first, last = net.net[0].weight.grad, net.net[2].weight.grad   # (the output bias does not enter J)
    assert first is not None and last is not None and first.abs().sum() > 0


def test_divergence_works_under_no_grad_and_leaves_the_grad_mode_alone(generator):
    net = TinyMLP(3, 8, generator)
    x, t = torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    probes = make_probes((4, 3), 2, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        _, div = divergence_exact(net, x, t)
        _, est = divergence_hutchinson(net, x, t, probes)
        assert not torch.is_grad_enabled()
    assert torch.allclose(div, divergence_exact(net, x, t)[1]) and est.shape == (4,)


def test_divergence_of_a_field_independent_of_x_is_zero(generator):
    x = torch.randn(3, 2, generator=generator)
    _, div = divergence_exact(lambda x, t: torch.ones_like(x) * t[:, None], x, torch.full((3,), 0.5))
    _, est = divergence_hutchinson(lambda x, t: torch.ones_like(x), x, 0.5, make_probes((3, 2), 3))
    assert torch.equal(div, torch.zeros(3)) and torch.equal(est, torch.zeros(3))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_standard_errors(kind, generator):
    net, n_points, repeats = TinyMLP(3, 16, generator), 4, 4000
    x = torch.randn(n_points, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(n_points, generator=generator, dtype=torch.float64)
    _, exact = divergence_exact(net, x, t)
    probes = make_probes((repeats * n_points, 3), 1, kind=kind, generator=generator, dtype=torch.float64)
    _, single = divergence_hutchinson(net, x.repeat(repeats, 1), t.repeat(repeats), probes)
    single = single.reshape(repeats, n_points)
    standard_error = single.std(0) / math.sqrt(repeats)
    assert (standard_error > 0).all()
    assert ((single.mean(0) - exact).abs() < 4 * standard_error).all()


def test_hutchinson_with_k_probes_is_the_mean_of_single_probe_estimates(generator):
    net = TinyMLP(3, 8, generator)
    x, t = torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.full((4,), 0.6, dtype=torch.float64)
    probes = make_probes((4, 3), 5, kind="gaussian", generator=generator, dtype=torch.float64)
    _, mean_est = divergence_hutchinson(net, x, t, probes)
    singles = torch.stack([divergence_hutchinson(net, x, t, p[None])[1] for p in probes])
    assert torch.allclose(mean_est, singles.mean(0), atol=1e-12)


def _quadratic_form_samples(jac: torch.Tensor, kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n single-probe Hutchinson estimates εᵀJε of the linear field v(x) = J x (the Jacobian is J everywhere)."""
    probes = make_probes((n, jac.shape[0]), 1, kind=kind, generator=generator, dtype=torch.float64)
    return divergence_hutchinson(lambda x, t: x @ jac.T, torch.zeros(n, jac.shape[0], dtype=torch.float64),
                                 torch.zeros(n, dtype=torch.float64), probes)[1]


def _assert_variance(samples: torch.Tensor, expected: float) -> None:
    centred = samples - samples.mean()
    var = centred.pow(2).mean()
    standard_error = ((centred.pow(4).mean() - var**2) / samples.numel()).sqrt()
    assert abs(var.item() - expected) < 4 * standard_error.item(), (var.item(), expected, standard_error.item())


def test_rademacher_variance_formula_on_a_fixed_symmetric_matrix(generator):
    g = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    jac = (g + g.T) / 2
    samples = _quadratic_form_samples(jac, "rademacher", 40_000, generator)
    expected = 2 * (jac.pow(2).sum() - torch.diagonal(jac).pow(2).sum()).item()   # 2(‖J‖_F² − Σ J_ii²)
    _assert_variance(samples, expected)
    assert abs(samples.mean().item() - torch.trace(jac).item()) < 4 * math.sqrt(expected / samples.numel())


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_variance_of_a_non_symmetric_jacobian_uses_its_symmetric_part(kind, generator):
    jac = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    sym = (jac + jac.T) / 2
    samples = _quadratic_form_samples(jac, kind, 40_000, generator)
    off_diagonal = 2 * (sym.pow(2).sum() - torch.diagonal(sym).pow(2).sum()).item()
    expected = off_diagonal if kind == "rademacher" else 2 * sym.pow(2).sum().item()
    _assert_variance(samples, expected)


def test_rademacher_estimate_is_exact_for_a_diagonal_jacobian(generator):
    jac = torch.diag(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    samples = _quadratic_form_samples(jac, "rademacher", 100, generator)
    assert torch.allclose(samples, torch.full((100,), -0.5, dtype=torch.float64), atol=1e-14)


def test_make_probes_have_identity_second_moment_and_the_right_values(generator):
    rad = make_probes((2000, 3), 4, generator=generator)
    assert rad.shape == (4, 2000, 3) and rad.dtype == torch.float32
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    gauss = make_probes((2000, 3), 4, kind="gaussian", generator=generator, dtype=torch.float64)
    for probes in (rad.double(), gauss):
        flat = probes.reshape(-1, 3)
        second_moment = flat.T @ flat / flat.shape[0]
        assert torch.allclose(second_moment, torch.eye(3, dtype=torch.float64), atol=0.05)
    again = make_probes((5, 2), 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, make_probes((5, 2), 2, generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------ Hutchinson log-likelihood

@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_log_likelihood_is_unbiased(probe, generator):
    net, n_points, repeats = TinyMLP(2, 8, generator), 3, 1500
    x1 = torch.randn(n_points, 2, generator=generator, dtype=torch.float64)
    exact = log_likelihood(net, x1, steps=6, method="midpoint").log_prob
    estimates = log_likelihood(net, x1.repeat(repeats, 1), steps=6, method="midpoint", divergence="hutchinson",
                               probe=probe, generator=generator).log_prob.reshape(repeats, n_points)
    standard_error = estimates.std(0) / math.sqrt(repeats)
    assert (standard_error > 0).all()
    assert ((estimates.mean(0) - exact).abs() < 4 * standard_error).all()


def test_more_probes_reduce_the_spread_of_the_hutchinson_log_likelihood(generator):
    net = TinyMLP(2, 8, generator)
    x1 = torch.randn(1, 2, generator=generator, dtype=torch.float64).repeat(400, 1)
    spread = {k: log_likelihood(net, x1, steps=4, method="midpoint", divergence="hutchinson", n_probes=k,
                                generator=generator).log_prob.std().item() for k in (1, 16)}
    assert spread[16] < 0.5 * spread[1]          # theory: a factor 1/4


# ------------------------------------------------------------------------------------------ gradients

def _flat_grad(model: nn.Module, loss_fn) -> torch.Tensor:
    model.zero_grad()
    loss_fn().backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _finite_difference(model: nn.Module, loss_fn, eps: float = 1e-6) -> torch.Tensor:
    grads = []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = loss_fn().item()
                flat[i] = old - eps
                down = loss_fn().item()
                flat[i] = old
                grads.append((up - down) / (2 * eps))
    return torch.tensor(grads, dtype=torch.float64)


@pytest.mark.parametrize("options", [
    dict(steps=3, method="rk4"),
    # a freshly seeded generator draws the same probes on every call: a deterministic function to check
    dict(steps=2, method="midpoint", divergence="hutchinson", n_probes=2, probe="gaussian"),
], ids=["exact-rk4", "hutchinson-midpoint"])
def test_create_graph_gives_the_finite_difference_gradient_of_the_log_likelihood(options, generator):
    model = TinyMLP(2, 6, generator)
    x1 = torch.randn(4, 2, generator=generator, dtype=torch.float64)

    def loss(create_graph: bool = False):
        return log_likelihood(model, x1, generator=torch.Generator().manual_seed(0), create_graph=create_graph,
                              **options).log_prob.sum()

    analytic = _flat_grad(model, lambda: loss(create_graph=True))
    numeric = _finite_difference(model, loss)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-7), (analytic - numeric).abs().max()


def test_create_graph_with_dopri5_matches_a_fine_rk4_gradient(generator):
    model = TinyMLP(2, 6, generator)
    x1 = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    kwargs = dict(create_graph=True, atol=1e-9, rtol=1e-9)
    adaptive = _flat_grad(model, lambda: log_likelihood(model, x1, steps=None, method="dopri5", **kwargs).log_prob.sum())
    fine = _flat_grad(model, lambda: log_likelihood(model, x1, steps=40, method="rk4", **kwargs).log_prob.sum())
    assert torch.allclose(adaptive, fine, atol=1e-6)


def test_gradient_with_respect_to_x1_is_the_score_of_the_data_density(generator):
    m, s = 1.5, 0.5
    x1 = (m + s * torch.randn(8, 2, generator=generator, dtype=torch.float64)).requires_grad_(True)
    result = log_likelihood(condot_gaussian_field(m, s), x1, steps=20, method="rk4", create_graph=True)
    (score,) = torch.autograd.grad(result.log_prob.sum(), x1)
    assert torch.allclose(score, -(x1.detach() - m) / s**2, atol=1e-4)


def test_without_create_graph_no_graph_is_kept_and_no_grad_works(generator):
    model = TinyMLP(2, 6, generator)
    x1 = torch.randn(4, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    for divergence in ("exact", "hutchinson"):
        result = log_likelihood(model, x1, steps=3, method="heun", divergence=divergence, generator=generator)
        for tensor in (result.log_prob, result.x0, result.delta_log_prob, result.source_log_prob):
            assert tensor.grad_fn is None and not tensor.requires_grad
    with torch.no_grad():
        quiet = log_likelihood(model, x1, steps=3, method="heun")
        assert not torch.is_grad_enabled()
    assert torch.allclose(quiet.log_prob, log_likelihood(model, x1, steps=3, method="heun").log_prob)
    with pytest.raises(ValueError, match="no_grad"), torch.no_grad():
        log_likelihood(model, x1, steps=3, method="heun", create_graph=True)


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=4, divergence="trace"), "divergence 'trace'.*exact.*hutchinson"),
    (dict(steps=4, probe="uniform"), "probe kind 'uniform'.*rademacher.*gaussian"),
    (dict(steps=4, method="rk45"), "rk45.*euler.*dopri5"),
    (dict(steps=4, n_probes=0), "n_probes"),
    (dict(steps=4, n_probes=1.5), "n_probes"),
    (dict(steps=None), "steps"),
    (dict(steps=0), "steps"),
    (dict(steps=5, method="dopri5"), "dopri5"),
    (dict(steps=2, source_log_prob=lambda x: x), r"source_log_prob must return shape \[3\]"),
])
def test_log_likelihood_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_likelihood(lambda x, t: x, torch.zeros(3, 2), **kwargs)


def test_divergences_reject_bad_shapes_and_probe_counts():
    x, t = torch.zeros(3, 2), torch.zeros(3)
    with pytest.raises(ValueError, match=r"probes must have shape \[K, 3, 2\]"):
        divergence_hutchinson(lambda x, t: x, x, t, torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="n_probes"):
        divergence_hutchinson(lambda x, t: x, x, t, torch.zeros(0, 3, 2))
    with pytest.raises(ValueError, match="shape"):
        divergence_exact(lambda x, t: x[:, :1], x, t)
    with pytest.raises(ValueError, match="n_probes"):
        make_probes((3, 2), 0)
    with pytest.raises(ValueError, match="rademacher"):
        make_probes((3, 2), 1, kind="normal")
    assert likelihood.DIVERGENCES == ("exact", "hutchinson")
