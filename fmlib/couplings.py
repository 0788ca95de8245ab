"""Couplings π(x0, x1) of a source batch and a data batch, for flow matching with any coupling.

Flow matching only needs pairs (X0, X1) whose marginals are the source p and the data q; the independent
coupling p ⊗ q is one choice. Given a batch x0 [B, ...] ~ p and x1 [B, ...] ~ q drawn independently, a
coupling here returns the same two batches re-paired:

* ``independent``: the pairs as drawn, (x0_i, x1_i);
* ``ot`` (minibatch optimal transport): (x0_i, x1_σ(i)) with σ the permutation minimising
  Σ_i ‖x0_i − x1_σ(i)‖², found exactly (:func:`ot_assignment`: network simplex, or Hungarian, ~O(B³));
* ``entropic``: x1_j drawn for each x0_i from row i of the entropic plan
  π_ε = argmin_π Σ_ij π_ij C_ij − ε H(π) with uniform marginals 1/B (Sinkhorn, POT); as ε → 0 it tends
  to the ``ot`` pairing and as ε → ∞ to the independent one.

Every pairing keeps the batch of x0 as it is and the marginal of each pair's x0; ``independent`` and ``ot``
use every x1 exactly once, so the x1 marginal is exact too, while ``entropic`` draws x1 with replacement
(each x1 is used once *on average*), as TorchCFM's plan sampler does.

:func:`coupled_pairs` dispatches on the name; :func:`class_conditional_ot_coupling` solves one assignment
per class, so that a label-conditional model never sees an x0 paired with an x1 of another class.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch
from torch import Tensor

from ._checks import check_batched, check_choice, check_same_shape

__all__ = ["COUPLINGS", "SMALL_ASSIGNMENT", "pairwise_sq_distances", "ot_assignment", "independent_coupling", "ot_coupling",
           "entropic_plan", "entropic_coupling", "class_conditional_ot_coupling", "coupled_pairs",
           "pairing_cost", "assignment_excess"]

COUPLINGS: tuple[str, ...] = ("independent", "ot", "entropic")
SMALL_ASSIGNMENT = 64
"""Batch size up to which :func:`ot_assignment` calls the Hungarian-type solver directly."""


def _check_pair(x0: Tensor, x1: Tensor) -> None:
    check_batched(x0, name="x0", min_dim=1)
    check_batched(x1, name="x1", min_dim=1)
    check_same_shape(x0=x0, x1=x1)
    if not (x0.is_floating_point() and x1.is_floating_point()):
        raise ValueError(f"x0 and x1 must be floating-point tensors, got {x0.dtype} and {x1.dtype}")
    if not bool(torch.isfinite(x0).all() and torch.isfinite(x1).all()):
        raise ValueError("x0 and x1 must be finite")


def pairwise_sq_distances(x0: Tensor, x1: Tensor) -> Tensor:
    """C_ij = ‖x0_i − x1_j‖² (samples flattened), shape [B, B], in float64 on the CPU.

    Formed from the differences (not ‖a‖² − 2⟨a, b⟩ + ‖b‖²), so it is exactly 0 on equal points.
    """
    _check_pair(x0, x1)
    a = x0.detach().reshape(x0.shape[0], -1).double().cpu()
    b = x1.detach().reshape(x1.shape[0], -1).double().cpu()
    return (a[:, None, :] - b[None, :, :]).square().sum(-1)


def _hungarian(cost: np.ndarray) -> Tensor:
    """The optimal permutation of a square cost matrix by scipy's ``linear_sum_assignment`` (int64, CPU)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(np.asarray(perm, dtype=np.int64))


def ot_assignment(x0: Tensor, x1: Tensor) -> Tensor:
    """The permutation σ [B] (int64, on x1's device) minimising Σ_i ‖x0_i − x1_σ(i)‖².

    Exact. For uniform weights on B points each, an optimal transport plan between the two empirical measures
    can always be taken to be a permutation (Birkhoff), so this is the exact minibatch OT. Solved by POT's
    network simplex (``ot.emd``) on the squared-distance matrix, whose optimal vertex is a permutation
    matrix; should it return a non-permutation plan (ties) or stop early, scipy's ``linear_sum_assignment``
    (Hungarian-type, O(B³)) solves the same problem instead. The network simplex is the faster of the two
    on Euclidean costs (a few times at B = 1024); both grow roughly cubically in B. Batches of at most
    :data:`SMALL_ASSIGNMENT` points go to ``linear_sum_assignment`` directly: there the network simplex's
    set-up costs more than the solve (a training step that couples many small groups pays it per group).

    Raises:
        ValueError: shapes differ, no batch axis, non-floating or non-finite input.
    """
    import ot

    cost = pairwise_sq_distances(x0, x1).numpy()
    n = cost.shape[0]
    if n <= SMALL_ASSIGNMENT:
        return _hungarian(cost).to(device=x1.device)
    weights = np.full(n, 1.0 / n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, log = ot.emd(weights, weights, cost, numItermax=int(max(1_000_000, 50 * n * n)), log=True)
    cols = plan.argmax(axis=1)
    is_permutation = (log.get("result_code") == 1 and not caught
                      and np.allclose(plan[np.arange(n), cols], 1.0 / n) and len(set(cols.tolist())) == n)
    if not is_permutation:
        return _hungarian(cost).to(device=x1.device)
    return torch.from_numpy(np.asarray(cols, dtype=np.int64)).to(device=x1.device)


def independent_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """The pairs as drawn: (x0_i, x1_i). A sample of p ⊗ q when the two batches are independent."""
    _check_pair(x0, x1)
    return x0, x1


def ot_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Minibatch OT: (x0_i, x1_σ(i)) with σ = :func:`ot_assignment` (x0, x1)."""
    return x0, x1[ot_assignment(x0, x1)]


def _check_epsilon(epsilon: object) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (0 < float(epsilon) < float("inf")):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    return float(epsilon)


def entropic_plan(x0: Tensor, x1: Tensor, *, epsilon: float) -> Tensor:
    """The entropic OT plan π [B, B] (float64, CPU) with uniform marginals 1/B:

        π_ε = argmin_{π ∈ Π(1/B, 1/B)} Σ_ij π_ij C_ij + ε Σ_ij π_ij log π_ij,  C_ij = ‖x0_i − x1_j‖²,

    where ε is given *relative to the mean cost*: the solver gets ε · mean(C), so that ``epsilon`` means the
    same at any scale of the data. Solved by POT's Sinkhorn iterations on the kernel exp(−C / (ε mean C)) in
    float64 (fast; for ε ≲ 0.005 the iterations become slow or the kernel underflows, which raises below);
    rows and columns of π then sum to 1/B within 1e-4 / B, or a ``RuntimeError`` says it did not converge.

    Raises:
        ValueError: epsilon not a finite positive number, bad batches.
        RuntimeError: Sinkhorn did not reach the marginals within 1e-4 / B (ε too small for 100,000 iterations).
    """
    import ot

    eps = _check_epsilon(epsilon)
    cost = pairwise_sq_distances(x0, x1).numpy()
    n = cost.shape[0]
    weights = np.full(n, 1.0 / n)
    scale = float(cost.mean()) or 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence (and underflow, NaN) is checked below, with a clear error
        plan = ot.sinkhorn(weights, weights, cost / scale, eps, method="sinkhorn", numItermax=100_000,
                           stopThr=1e-9)
    plan = torch.from_numpy(np.asarray(plan, dtype=np.float64))
    error = max(float((plan.sum(0) - 1.0 / n).abs().max()), float((plan.sum(1) - 1.0 / n).abs().max()))
    if not error <= 1e-4 / n:
        raise RuntimeError(f"Sinkhorn did not converge for epsilon={eps:g} (marginal error {error:.3g} on "
                           f"{n} points): use a larger epsilon, or the exact 'ot' coupling")
    return plan


def entropic_coupling(x0: Tensor, x1: Tensor, *, epsilon: float,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(x0_i, x1_{j_i}) with j_i ~ π_ε(i, ·) / π_ε(i, ·).sum(), one draw per row of :func:`entropic_plan`.

    Each x0 is kept once; x1 is drawn with replacement (its marginal is right on average, not in every batch).
    ``generator``: a CPU generator (the draw happens on the CPU).
    """
    plan = entropic_plan(x0, x1, epsilon=epsilon)
    rows = (plan / plan.sum(1, keepdim=True)).clamp_min(0)
    j = torch.multinomial(rows, 1, generator=generator).squeeze(1)
    return x0, x1[j.to(x1.device)]


def class_conditional_ot_coupling(x0: Tensor, x1: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Minibatch OT within each class: x1 is permuted only among rows with the same label.

    Returns (x0, x1_paired, labels_paired) where labels_paired[i] is the label of x1_paired[i]. Since the
    permutation never crosses classes, labels_paired equals ``labels``: the label still describes the data
    point it is paired with (a plain :func:`ot_coupling` would pair x0_i with an x1 of another class, and a
    label-conditional model would then be trained on a mismatched label).

    Raises:
        ValueError: ``labels`` is not a [B] tensor, or bad batches.
    """
    _check_pair(x0, x1)
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != x1.shape[0]:
        raise ValueError(f"labels must be a [{x1.shape[0]}] tensor, got "
                         f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
    perm = torch.arange(x1.shape[0], device=x1.device)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).squeeze(1)
        perm[idx] = idx[ot_assignment(x0[idx], x1[idx]).to(idx.device)]
    return x0, x1[perm], labels[perm]


def coupled_pairs(name: str, x0: Tensor, x1: Tensor, *, epsilon: float = 0.05,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Re-pair the batches with the coupling ``name`` ∈ :data:`COUPLINGS` (``epsilon`` only for entropic)."""
    check_choice(name, COUPLINGS, what="coupling")
    if name == "independent":
        return independent_coupling(x0, x1)
    if name == "ot":
        return ot_coupling(x0, x1)
    return entropic_coupling(x0, x1, epsilon=epsilon, generator=generator)


def pairing_cost(x0: Tensor, x1: Tensor) -> float:
    """The mean squared distance of the given pairs, (1/B) Σ_i ‖x0_i − x1_i‖² (the transport cost of the
    coupling (x0_i, x1_i)), as a float."""
    _check_pair(x0, x1)
    diff = (x0.detach().double() - x1.detach().double()).reshape(x0.shape[0], -1)
    return float(diff.square().sum(1).mean())


def assignment_excess(x0: Tensor, x1: Tensor) -> float:
    """How far the given pairing (x0_i, x1_i) is from optimal on the same points:

        pairing_cost(x0, x1) / min_σ (1/B) Σ_i ‖x0_i − x1_σ(i)‖² − 1  ≥ 0,

    which is 0 exactly when the identity pairing is an optimal assignment (for a map T and x1_i = T(x0_i):
    when T is optimal on these points, i.e. the pairs are cyclically monotone).

    Raises:
        ValueError: bad batches, or all optimal costs zero (x1 is a permutation of x0 with zero cost).
    """
    best = pairing_cost(x0, x1[ot_assignment(x0, x1)])
    if best <= 0:
        raise ValueError("the optimal assignment has zero cost: the relative excess is undefined")
    return pairing_cost(x0, x1) / best - 1.0
