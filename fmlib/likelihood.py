"""Exact log-likelihood of a continuous normalizing flow, and divergence estimators.

For a flow dψ_t/dt = u_t(ψ_t) with density p_t = [ψ_t]_# p_0, the instantaneous change of variables gives

    d/dt log p_t(ψ_t(x)) = −div u_t(ψ_t(x)),   so   log p_1(x1) = log p_0(x0) − ∫_0^1 div u_t(x_t) dt,

where x_t solves the ODE backwards from x_1 = x1 to x_0. fmlib integrates the augmented state
(x_t, ∫_t^1 div u_s(x_s) ds) from t = 1 down to t = 0 with a chosen solver.

Divergences:
    exact        div u(x) = Σ_i ∂u_i/∂x_i, one autograd pass per coordinate (cost grows with D);
    hutchinson   div u(x) ≈ (1/K) Σ_k ε_kᵀ (∂u/∂x) ε_k with E[ε εᵀ] = I (Rademacher or Gaussian probes),
                 one vector–Jacobian product per probe; unbiased, variance 2‖S‖_F² − 2 Σ S_ii² (Rademacher)
                 or 2‖S‖_F² (Gaussian) per probe, S = (J+Jᵀ)/2 the symmetric part of J = ∂u/∂x (εᵀJε = εᵀSε;
                 for symmetric J this is 2‖J‖_F² − 2 Σ J_ii²). Probes are drawn once per solve and held
                 fixed in t.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import as_time, check_batched, check_choice
from .solvers import NFECounter, State, VelocityField, _check_velocity_output, _integrate, _prepare_solve

__all__ = [
    "standard_normal_log_prob",
    "divergence_exact",
    "jacobian",
    "divergence_hutchinson",
    "make_probes",
    "LikelihoodResult",
    "log_likelihood",
    "DIVERGENCES",
    "PROBE_KINDS",
]


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """log N(x; 0, I) summed over all non-batch coordinates: shape [B] from x [B, ...].

    log N(x; 0, I) = −½ ‖x‖² − (D/2) log 2π with D the number of non-batch coordinates.
    """
    check_batched(x, name="x", min_dim=1)
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * flat.pow(2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def _velocity_with_input(velocity: VelocityField, x: Tensor, t: Tensor,
                         create_graph: bool) -> tuple[Tensor, Tensor]:
    """Call v on an input that autograd can differentiate against: returns (x_in, v) under enable_grad.

    With ``create_graph=False`` the input is a detached copy (nothing upstream is kept); with ``True`` it is
    ``x`` itself when ``x`` is already part of a graph, so gradients flow back through x as well.
    """
    check_batched(x, name="x", min_dim=1)
    t = as_time(t, x.shape[0], like=x)
    x_in = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
    v = _check_velocity_output(velocity(x_in, t), x)
    return x_in, v


def _grad_or_zero(output: Tensor, x_in: Tensor, grad_output: Tensor | None, create_graph: bool) -> Tensor:
    """∂(grad_outputᵀ output)/∂x_in, zero where output does not depend on x_in."""
    if not output.requires_grad:
        return torch.zeros_like(x_in)
    (g,) = torch.autograd.grad(output, x_in, grad_outputs=grad_output, retain_graph=True,
                               create_graph=create_graph, allow_unused=True)
    return torch.zeros_like(x_in) if g is None else g


def _jacobian_rows(v: Tensor, x_in: Tensor, create_graph: bool) -> Iterator[Tensor]:
    """Rows i = 0, …, D − 1 of the per-sample Jacobian ∂v/∂x, each [B, D] (flattened coordinates): pass i is
    the reverse-mode product e_iᵀ (∂v/∂x) of Σ_b v_i(x_b), which is every sample's row i when samples do not
    interact."""
    v_flat = v.reshape(v.shape[0], -1)
    for i in range(v_flat.shape[1]):
        yield _grad_or_zero(v_flat[:, i].sum(), x_in, None, create_graph).reshape(v.shape[0], -1)


def _finish(v: Tensor, div: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    return (v, div) if create_graph else (v.detach(), div.detach())


def divergence_exact(velocity: VelocityField, x: Tensor, t: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return (v, div v) at (x, t): v [B, ...] and the exact divergence [B], via D autograd passes.

    div v(x) = Σ_{i=1}^{D} ∂v_i/∂x_i over the D non-batch coordinates; pass i is the reverse-mode product
    e_iᵀ (∂v/∂x) summed over the batch, which yields every sample's row i at once provided samples do not
    interact (no batch normalisation in the model). The velocity is called once. x [B, ...]; t a number, 0-d
    or [B] tensor in [0, 1].

    ``create_graph=True`` keeps the graph so the divergence can be differentiated w.r.t. parameters
    (maximum-likelihood training); with ``False`` both outputs are detached and no graph is kept. Works in
    ``torch.no_grad()`` too (the autograd passes run under a local ``enable_grad``).
    """
    with torch.enable_grad():
        x_in, v = _velocity_with_input(velocity, x, t, create_graph)
        div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for i, row in enumerate(_jacobian_rows(v, x_in, create_graph)):
            div = div + row[:, i]
    return _finish(v, div, create_graph)


def jacobian(velocity: VelocityField, x: Tensor, t: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return (v, J) at (x, t): v [B, ...] and the Jacobian J [B, D, D], J[b, i, j] = ∂v_i/∂x_j (x_b).

    i and j index the D non-batch coordinates of x flattened in row-major order; tr J[b] is the divergence
    of :func:`divergence_exact`, and ½ (J + Jᵀ) is the matrix whose entries set the variance of
    :func:`divergence_hutchinson`. Row i comes from one reverse-mode pass e_iᵀ (∂v/∂x) summed over the batch
    (D passes, samples must not interact). Memory is B·D² numbers: meant for low-dimensional fields.
    ``create_graph`` as in :func:`divergence_exact`.
    """
    with torch.enable_grad():
        x_in, v = _velocity_with_input(velocity, x, t, create_graph)
        jac = torch.stack(list(_jacobian_rows(v, x_in, create_graph)), dim=1)
    return _finish(v, jac, create_graph)


PROBE_KINDS: tuple[str, ...] = ("rademacher", "gaussian")
"""Known probe kinds of :func:`make_probes`."""


def _check_n_probes(n_probes: object) -> int:
    if isinstance(n_probes, bool) or not isinstance(n_probes, numbers.Integral) or n_probes < 1:
        raise ValueError(f"n_probes must be an int ≥ 1, got {n_probes!r}")
    return int(n_probes)


def make_probes(shape: tuple[int, ...], n_probes: int, *, kind: str = "rademacher",
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``n_probes`` probe vectors with E[ε εᵀ] = I: shape [n_probes, *shape]. kind: ``rademacher`` | ``gaussian``.

    Rademacher: independent ±1 entries with probability ½ each; Gaussian: independent N(0, 1) entries. The
    draws use ``generator`` on the generator's own device and are then moved to ``device``.
    """
    check_choice(kind, PROBE_KINDS, what="probe kind")
    n_probes = _check_n_probes(n_probes)
    size = (n_probes, *tuple(int(s) for s in shape))
    draw_device = generator.device if generator is not None else device
    if kind == "rademacher":
        bits = torch.randint(0, 2, size, generator=generator, device=draw_device)
        probes = bits.to(dtype) * 2 - 1
    else:
        probes = torch.randn(size, generator=generator, device=draw_device, dtype=dtype)
    return probes.to(device=device, dtype=dtype)


def divergence_hutchinson(velocity: VelocityField, x: Tensor, t: Tensor, probes: Tensor, *,
                          create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return (v, estimate) with estimate [B] = mean over probes ε [K, B, ...] of εᵀ (∂v/∂x) ε.

    Each probe costs one vector–Jacobian product εᵀ(∂v/∂x) (one reverse pass for the whole batch); the
    velocity is called once. With E[ε εᵀ] = I the estimate is unbiased: E[εᵀ J ε] = tr J. Its variance per
    probe is 2(‖S‖_F² − Σ S_ii²) for Rademacher and 2‖S‖_F² for Gaussian probes, S = (J + Jᵀ)/2; the
    mean over K probes divides it by K. ``create_graph`` as in :func:`divergence_exact`.

    Raises:
        ValueError: probes not of shape [K, *x.shape] with K ≥ 1.
    """
    if not torch.is_tensor(probes) or probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape:
        shape = tuple(probes.shape) if torch.is_tensor(probes) else type(probes).__name__
        raise ValueError(f"probes must have shape [K, {', '.join(map(str, x.shape))}], got {shape}")
    _check_n_probes(probes.shape[0])
    with torch.enable_grad():
        x_in, v = _velocity_with_input(velocity, x, t, create_graph)
        probes = probes.to(dtype=v.dtype, device=v.device)
        total = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for eps in probes:
            eps_jac = _grad_or_zero(v, x_in, eps, create_graph)          # εᵀ ∂v/∂x, shape of x
            total = total + (eps_jac * eps).reshape(eps.shape[0], -1).sum(1)
    return _finish(v, total / probes.shape[0], create_graph)


@dataclass
class LikelihoodResult:
    """``log_prob`` [B] = log p_1(x1); ``x0`` [B, ...] the point the flow maps to x1; ``source_log_prob`` [B]
    = log p_0(x0); ``delta_log_prob`` [B] = −∫_0^1 div u_t dt; ``nfe`` velocity evaluations."""

    log_prob: Tensor
    x0: Tensor
    source_log_prob: Tensor
    delta_log_prob: Tensor
    nfe: int


DIVERGENCES: tuple[str, ...] = ("exact", "hutchinson")
"""Known ``divergence`` names of :func:`log_likelihood`."""


def log_likelihood(
    velocity: VelocityField,
    x1: Tensor,
    *,
    steps: int | None,
    method: str = "rk4",
    divergence: str = "exact",
    n_probes: int = 1,
    probe: str = "rademacher",
    source_log_prob: Callable[[Tensor], Tensor] = standard_normal_log_prob,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> LikelihoodResult:
    """log p_1(x1) of the flow of ``velocity`` with source density ``source_log_prob``.

    Integrates the augmented ODE from t = 1 (x_1 = x1, a_1 = 0) down to t = 0,

        dx_t/dt = u_t(x_t),   da_t/dt = −div u_t(x_t)      so  a_t = ∫_t^1 div u_s(x_s) ds,

    with the stepping code of :func:`fmlib.solvers.solve_ode`, and returns
    log p_1(x1) = log p_0(x_0) − a_0 (``delta_log_prob`` = −a_0). Shapes: x1 [B, ...]; every output [B]
    except ``x0`` [B, ...]. ``nfe`` counts velocity calls: steps × (1, 2, 2, 4) for euler/midpoint/heun/rk4;
    the exact divergence adds D reverse passes per call, Hutchinson K.

    ``steps`` as in :func:`fmlib.solvers.solve_ode` (None for dopri5). ``divergence``: ``exact`` |
    ``hutchinson`` (with ``n_probes`` probes of kind ``probe``). With ``create_graph=True`` the result is
    differentiable w.r.t. the velocity's parameters (maximum-likelihood training of a CNF).

    ``create_graph=False`` (evaluation): x1 is detached, every step works on detached tensors and the
    results carry no graph, so memory does not grow with the number of steps; it works inside
    ``torch.no_grad()``. ``create_graph=True`` (training): the graph of the whole solve is kept and
    ``-result.log_prob.mean()`` can be backpropagated; it needs grad mode enabled. Hutchinson probes are
    drawn once per call with ``generator`` and held fixed in t.

    Raises:
        ValueError: unknown divergence/probe/method names, bad step counts, n_probes < 1, create_graph=True
            under ``torch.no_grad()``.
        FloatingPointError: the state becomes NaN or infinite during the solve.
    """
    steps, _, _ = _prepare_solve(method, steps, 1.0, 0.0, atol, rtol)
    check_choice(divergence, DIVERGENCES, what="divergence")
    check_choice(probe, PROBE_KINDS, what="probe kind")
    n_probes = _check_n_probes(n_probes)
    check_batched(x1, name="x1", min_dim=1)
    if x1.shape[0] == 0:
        raise ValueError(f"x1 is an empty batch (shape {tuple(x1.shape)}): give at least one point")
    if not x1.is_floating_point():
        raise ValueError(f"x1 must be a floating-point tensor, got {x1.dtype}")
    if create_graph and not torch.is_grad_enabled():
        raise ValueError("create_graph=True needs grad mode: call log_likelihood outside torch.no_grad()")
    x = x1 if create_graph else x1.detach()
    counter = NFECounter(velocity)
    if divergence == "exact":
        def div_fn(xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return divergence_exact(counter, xt, t, create_graph=create_graph)
    else:
        probes = make_probes(tuple(x.shape), n_probes, kind=probe, generator=generator, device=x.device,
                             dtype=x.dtype)

        def div_fn(xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return divergence_hutchinson(counter, xt, t, probes, create_graph=create_graph)

    def augmented(state: State, t: Tensor) -> State:
        v, div = div_fn(state[0], t)
        return v, -div

    a1 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    (x0, a0), _, _ = _integrate(augmented, (x, a1), method=method, steps=steps, t_start=1.0, t_end=0.0,
                                atol=atol, rtol=rtol)
    source = source_log_prob(x0)
    if not torch.is_tensor(source) or source.shape != (x.shape[0],):
        shape = tuple(source.shape) if torch.is_tensor(source) else type(source).__name__
        raise ValueError(f"source_log_prob must return shape [{x.shape[0]}], got {shape}")
    if not create_graph:
        source = source.detach()
    delta = -a0
    return LikelihoodResult(log_prob=source + delta, x0=x0, source_log_prob=source, delta_log_prob=delta,
                            nfe=counter.nfe)
