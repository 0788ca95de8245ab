"""Couplings against closed forms and independent oracles (POT's exact solver, brute force)."""

import itertools

import numpy as np
import ot
import pytest
import torch

from fmlib import couplings


def test_ot_assignment_recovers_a_permutation_of_the_batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, generator=g, dtype=torch.float64)
    perm = torch.randperm(64, generator=g)
    x1 = x0[perm]
    sigma = couplings.ot_assignment(x0, x1)
    assert torch.equal(x1[sigma], x0)          # zero cost: every x0 meets its own copy
    paired0, paired1 = couplings.ot_coupling(x0, x1)
    assert couplings.pairing_cost(paired0, paired1) == 0.0


def test_ot_assignment_matches_pot_exact_cost_and_brute_force():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
    cost = couplings.pairwise_sq_distances(x0, x1).numpy()
    best = min(sum(cost[i, p[i]] for i in range(7)) for p in itertools.permutations(range(7))) / 7
    w = np.full(7, 1 / 7)
    assert ot.emd2(w, w, cost) == pytest.approx(best, rel=1e-9)
    _, y = couplings.ot_coupling(x0, x1)
    assert couplings.pairing_cost(x0, y) == pytest.approx(best, rel=1e-6)


def test_one_dimensional_ot_pairs_sorted_orders():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(50, 1, generator=g), 3 * torch.rand(50, 1, generator=g)
    _, y = couplings.ot_coupling(x0, x1)
    order = torch.argsort(x0[:, 0])
    assert torch.all(torch.diff(y[order, 0]) >= 0)   # monotone rearrangement


def test_independent_keeps_pairs_and_images_are_flattened():
    x0, x1 = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    a, b = couplings.independent_coupling(x0, x1)
    assert a is x0 and b is x1
    assert couplings.pairwise_sq_distances(x0, x1).shape == (5, 5)
    _, y = couplings.ot_coupling(x0, x1)
    assert y.shape == x1.shape


def test_entropic_plan_has_uniform_marginals_and_limits():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g) + 1
    plan = couplings.entropic_plan(x0, x1, epsilon=0.05)
    assert torch.allclose(plan.sum(0), torch.full((32,), 1 / 32, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(plan.sum(1), torch.full((32,), 1 / 32, dtype=torch.float64), atol=1e-7)
    # small epsilon: the plan concentrates on the exact assignment; large: near the independent plan
    cost = couplings.pairwise_sq_distances(x0, x1)
    exact = couplings.pairing_cost(*couplings.ot_coupling(x0, x1))
    plan_cost = {eps: float((couplings.entropic_plan(x0, x1, epsilon=eps) * cost).sum()) for eps in (0.01, 0.1, 1.0)}
    independent = float(cost.mean())
    assert exact < plan_cost[0.01] < plan_cost[0.1] < plan_cost[1.0] < independent
    assert plan_cost[0.01] < 1.1 * exact
    flat = couplings.entropic_plan(x0, x1, epsilon=1e3)
    assert torch.allclose(flat, torch.full_like(flat, 1 / 32 ** 2), rtol=1e-2)
    # it matches POT's log-domain solver (an independent algorithm) on the unscaled cost on the unscaled cost with the rescaled regularisation
    cost = couplings.pairwise_sq_distances(x0, x1).numpy()
    ref = ot.sinkhorn(np.full(32, 1 / 32), np.full(32, 1 / 32), cost, 0.05 * cost.mean(), method="sinkhorn_log",
                      stopThr=1e-10, numItermax=20000)
    assert np.allclose(plan.numpy(), ref, atol=1e-7)


def test_entropic_coupling_draws_rows_of_the_plan():
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(4, 2, generator=g), torch.arange(4.0)[:, None].expand(4, 2).contiguous()
    plan = couplings.entropic_plan(x0, x1, epsilon=0.5)
    counts = torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(1000):
        a, b = couplings.entropic_coupling(x0, x1, epsilon=0.5, generator=g)
        assert a is x0
        counts[torch.arange(4), b[:, 0].long()] += 1
    # frequencies of j given i match π(i, j) / π(i, ·) within 5 binomial standard errors
    rows = plan / plan.sum(1, keepdim=True)
    assert torch.all((counts / 1000 - rows).abs() < 5 * (rows * (1 - rows) / 1000).sqrt() + 1e-3)


def test_class_conditional_ot_never_crosses_classes():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(40, 2, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    x1 = torch.randn(40, 2, generator=g) + 3 * labels[:, None]
    _, y, lab = couplings.class_conditional_ot_coupling(x0, x1, labels)
    assert torch.equal(lab, labels)
    for c in range(3):
        idx = labels == c
        _, ref = couplings.ot_coupling(x0[idx], x1[idx])
        assert torch.equal(y[idx], ref)


def test_assignment_excess_is_zero_for_a_monotone_map_and_positive_for_a_rotation():
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(200, 2, generator=g, dtype=torch.float64)
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)   # symmetric PD: the OT map
    assert couplings.assignment_excess(x0, x0 @ a) == pytest.approx(0.0, abs=1e-12)
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # same law, not optimal
    assert couplings.assignment_excess(x0, x0 @ rot) > 0.5


@pytest.mark.parametrize("bad", [
    lambda: couplings.ot_coupling(torch.randn(3, 2), torch.randn(4, 2)),
    lambda: couplings.ot_coupling(torch.randn(3, 2), torch.full((3, 2), float("nan"))),
    lambda: couplings.entropic_plan(torch.randn(3, 2), torch.randn(3, 2), epsilon=0),
    lambda: couplings.coupled_pairs("sinkhorn", torch.randn(3, 2), torch.randn(3, 2)),
    lambda: couplings.class_conditional_ot_coupling(torch.randn(3, 2), torch.randn(3, 2), torch.zeros(4)),
    lambda: couplings.assignment_excess(torch.zeros(3, 2), torch.zeros(3, 2)),
])
def test_bad_input_raises(bad):
    """Each bad call raises ValueError with a message, never a silent wrong number."""
    with pytest.raises(ValueError):
        bad()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_unconverged_sinkhorn_raises():
    g = torch.Generator().manual_seed(7)
    x0, x1 = torch.randn(16, 2, generator=g), 5 + torch.randn(16, 2, generator=g)
    with pytest.raises(RuntimeError, match="did not converge"):
        couplings.entropic_plan(x0, x1, epsilon=1e-5)


def test_ot_assignment_cost_equals_scipy_hungarian_on_point_clouds():
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(8)
    for n in (16, 200):
        x0, x1 = torch.randn(n, 2, generator=g), 2 + torch.rand(n, 2, generator=g)
        cost = couplings.pairwise_sq_distances(x0, x1).numpy()
        rows, cols = linear_sum_assignment(cost)
        sigma = couplings.ot_assignment(x0, x1)
        assert sorted(sigma.tolist()) == list(range(n))          # a permutation
        assert float(cost[np.arange(n), sigma.numpy()].sum()) == pytest.approx(float(cost[rows, cols].sum()),
                                                                               rel=1e-12)


def test_ot_assignment_with_ties_still_returns_a_permutation():
    x0 = torch.zeros(6, 2)                       # every pairing costs the same
    x1 = torch.ones(6, 2)
    assert sorted(couplings.ot_assignment(x0, x1).tolist()) == list(range(6))


@pytest.mark.parametrize("n", [couplings.SMALL_ASSIGNMENT, couplings.SMALL_ASSIGNMENT + 1, 200])
def test_both_assignment_solvers_reach_pots_exact_cost(n):
    # batches up to SMALL_ASSIGNMENT use the Hungarian-type solver, larger ones the network simplex
    g = torch.Generator().manual_seed(n)
    x0, x1 = torch.randn(n, 2, generator=g), torch.rand(n, 2, generator=g)
    perm = couplings.ot_assignment(x0, x1)
    assert sorted(perm.tolist()) == list(range(n))
    w = np.full(n, 1 / n)
    exact = ot.emd2(w, w, couplings.pairwise_sq_distances(x0, x1).numpy())
    assert couplings.pairing_cost(x0, x1[perm]) == pytest.approx(exact, rel=1e-9)
