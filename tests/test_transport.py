"""Kinetic energy, Gaussian OT closed forms and the coupled / reflow recipes."""

import math

import numpy as np
import ot.gaussian
import pytest
import torch

from fmlib import couplings, transport, zoo


def test_kinetic_energy_of_a_straight_constant_speed_path_is_its_squared_length():
    times = torch.linspace(0, 1, 11, dtype=torch.float64)
    a, b = torch.tensor([[0.0, 1.0], [2.0, 2.0]]), torch.tensor([[3.0, 5.0], [2.0, -1.0]])
    traj = a + times[:, None, None] * (b - a)
    assert transport.kinetic_energy(traj, times) == pytest.approx(float((b - a).square().sum(1).mean()))


def test_kinetic_energy_of_a_half_circle_converges_from_below_to_pi_squared():
    # x_t = (cos πt, sin πt): speed π, so ∫ ‖ẋ‖² dt = π² while the chord gives only 4
    values = []
    for n in (8, 64, 512):
        times = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        traj = torch.stack([torch.cos(math.pi * times), torch.sin(math.pi * times)], -1)[:, None, :]
        values.append(transport.kinetic_energy(traj, times))
    assert values[0] < values[1] < values[2] < math.pi ** 2
    assert values[2] == pytest.approx(math.pi ** 2, rel=1e-5)


def test_kinetic_energy_uses_the_time_steps_of_a_non_uniform_grid():
    times = torch.tensor([0.0, 0.1, 1.0], dtype=torch.float64)
    traj = (3 * times)[:, None, None].expand(3, 1, 1)          # constant speed 3 on an uneven grid
    assert transport.kinetic_energy(traj, times) == pytest.approx(9.0)
    with pytest.raises(ValueError):
        transport.kinetic_energy(traj, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError):
        transport.kinetic_energy(traj, torch.tensor([0.0, 1.0]))


def _random_spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)


def test_gaussian_w2_and_map_match_pot_bures_formulas():
    m0, m1 = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    s0, s1 = _random_spd(3, 0), _random_spd(3, 1)
    w2 = transport.gaussian_w2_squared(m0, s0, m1, s1)
    ref = ot.gaussian.bures_wasserstein_distance(m0.numpy(), m1.numpy(), s0.numpy(), s1.numpy())
    assert w2 == pytest.approx(float(ref) ** 2, rel=1e-8)
    a, b = transport.gaussian_ot_map(m0, s0, m1, s1)
    a_ref, b_ref = ot.gaussian.bures_wasserstein_mapping(m0.numpy(), m1.numpy(), s0.numpy(), s1.numpy())
    assert np.allclose(a.numpy(), a_ref, atol=1e-8) and np.allclose(b.numpy(), b_ref.ravel(), atol=1e-8)
    assert torch.allclose(a, a.T) and float(torch.linalg.eigvalsh(a).min()) > 0   # gradient of a convex map
    assert torch.allclose(a @ s0 @ a, s1, atol=1e-8)                              # pushes S0 to S1
    # the map's own cost E‖T(X) − X‖² is W2²
    cost = (a - torch.eye(3, dtype=torch.float64)) @ s0 @ (a - torch.eye(3, dtype=torch.float64)).T
    mean_shift = (a @ m0 + b) - m0
    assert float(torch.trace(cost) + mean_shift.square().sum()) == pytest.approx(w2, rel=1e-8)


def test_isotropic_gaussian_w2_closed_form():
    d, s = 4, 0.3
    m = torch.arange(4.0, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    assert transport.gaussian_w2_squared(torch.zeros(d), eye, m, s ** 2 * eye) == pytest.approx(
        float(m.square().sum()) + d * (1 - s) ** 2)


@pytest.mark.parametrize("bad", [
    lambda: transport.gaussian_w2_squared(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)),
    lambda: transport.gaussian_w2_squared(torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2)),
    lambda: transport.gaussian_ot_map(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.eye(2)),
    lambda: transport.gaussian_w2_squared(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)),
])
def test_bad_gaussians_raise(bad):
    with pytest.raises(ValueError):
        bad()


def test_reflow_pairs_of_a_constant_field_are_translations():
    x0 = torch.randn(10, 2)
    shift = torch.tensor([1.0, -2.0])
    a, b = transport.reflow_pairs(lambda x, t: shift.expand_as(x), x0, steps=3)
    assert a is x0 and torch.allclose(b, x0 + shift)


def test_coupled_flow_delegates_to_the_zoo_and_ot_training_lowers_the_loss_floor(monkeypatch):
    monkeypatch.setenv("FMLIB_MAX_STEPS", "40")
    size = zoo.ToySize(hidden=16, depth=2, steps=40, batch_size=64, lr=2e-3)
    indep = transport.coupled_toy_flow("8gaussians", "independent", size=size, progress=False)
    assert indep.key == zoo.toy_flow("8gaussians", size=size, progress=False).key
    ot_run = transport.coupled_toy_flow("8gaussians", "ot", size=size, progress=False)
    assert ot_run.key != indep.key and ot_run.losses.shape == (40,)
    # OT pairs are shorter, so the regression target is smaller from the first steps on
    assert float(np.mean(ot_run.losses[:10])) < float(np.mean(indep.losses[:10]))
    with pytest.raises(ValueError):
        transport.coupled_toy_flow("8gaussians", "sinkhorn", size=size, progress=False)


def test_reflow_round_trains_on_the_teachers_pairs(monkeypatch):
    monkeypatch.setenv("FMLIB_MAX_STEPS", "20")
    size = zoo.ToySize(hidden=16, depth=2, steps=20, batch_size=32, lr=2e-3)
    monkeypatch.setattr(zoo, "toy_size", lambda: size)
    teacher = zoo.toy_flow("moons", size=size, progress=False)
    student = transport.reflow_toy_flow(teacher, n_pairs=128, ode_steps=4, steps=20, round_name="t-reflow",
                                        progress=False)
    again = transport.reflow_toy_flow(teacher, n_pairs=128, ode_steps=4, steps=20, round_name="t-reflow",
                                      progress=False)
    assert again.from_cache and again.key == student.key
    assert student.key != transport.reflow_toy_flow(teacher, n_pairs=64, ode_steps=4, steps=20,
                                                    round_name="t-reflow", progress=False).key
    assert couplings.COUPLINGS == ("independent", "ot", "entropic")


def test_coupling_batch_streams_pairs_and_shares_the_default_checkpoint(monkeypatch):
    monkeypatch.setenv("FMLIB_MAX_STEPS", "12")
    size = zoo.ToySize(hidden=16, depth=2, steps=12, batch_size=32, lr=2e-3)
    default = transport.coupled_toy_flow("moons", "ot", size=size, progress=False)
    same = transport.coupled_toy_flow("moons", "ot", coupling_batch=32, size=size, progress=False)
    assert same.key == default.key and same.from_cache
    calls = []
    real = couplings.coupled_pairs
    monkeypatch.setattr(couplings, "coupled_pairs", lambda name, x0, x1, **kw: calls.append(x0.shape[0])
                        or real(name, x0, x1, **kw))
    small = transport.coupled_toy_flow("moons", "ot", coupling_batch=8, size=size, progress=False)
    assert small.key != default.key and small.losses.shape == (12,)
    assert calls[1:] == [8] * (4 * 12)           # after the name check: four problems of 8 per step of 32
    calls.clear()
    transport.coupled_toy_flow("moons", "ot", coupling_batch=96, size=size, progress=False)
    assert calls[1:] == [96] * 4                 # one problem of 96 every three steps
    with pytest.raises(ValueError):
        transport.coupled_toy_flow("moons", "ot", coupling_batch=0, size=size, progress=False)


def _labelled_ring():
    from fmlib import analytic
    return analytic.LabelledMixture(analytic.GaussianMixture.ring(4, radius=3.0, std=0.3),
                                    labels=torch.arange(4))


def test_conditional_couplings_train_and_validate(monkeypatch):
    monkeypatch.setenv("FMLIB_MAX_STEPS", "10")
    size = zoo.ToySize(hidden=16, depth=2, steps=10, batch_size=64, lr=2e-3)
    data = _labelled_ring()
    runs = {c: transport.coupled_toy_conditional_flow(data, c, size=size, progress=False)
            for c in transport.CONDITIONAL_COUPLINGS}
    assert len({r.key for r in runs.values()}) == 3
    model = runs["ot_within_classes"].model
    assert model(torch.zeros(5, 2), torch.full((5,), 0.5), torch.arange(5) % 4).shape == (5, 2)
    # OT pairs are shorter than independent ones, so the regression target is smaller from the start
    assert float(np.mean(runs["ot"].losses[:5])) < float(np.mean(runs["independent"].losses[:5]))
    with pytest.raises(ValueError):
        transport.coupled_toy_conditional_flow(data, "entropic", size=size, progress=False)
    with pytest.raises(TypeError):
        transport.coupled_toy_conditional_flow(data.mixture, "ot", size=size, progress=False)


def test_label_blind_ot_shifts_the_sources_of_each_class_and_within_class_ot_does_not():
    # the mechanism behind the conditional experiment, on one large batch
    g = torch.Generator().manual_seed(3)
    data = _labelled_ring()
    x1, y = data.sample(512, generator=g)
    x0 = torch.randn(512, 2, generator=g)
    perm = couplings.ot_assignment(x0, x1)
    blind_labels = y[perm]                       # the label of the data point each x0 is paired with
    _, _, within_labels = couplings.class_conditional_ot_coupling(x0, x1, y)
    blind = max(float(x0[blind_labels == c].mean(0).norm()) for c in range(4))
    within = max(float(x0[within_labels == c].mean(0).norm()) for c in range(4))
    assert blind > 0.8 and within < 0.3
