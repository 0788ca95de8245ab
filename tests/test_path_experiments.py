"""fmlib.path_experiments against closed forms: straight and circular trajectories, constant velocities, the
linear path's conversions and a point-mass data set whose posterior is exact."""

from __future__ import annotations

import math

import pytest
import torch

from fmlib import path_experiments as pe
from fmlib import paths

LIN = paths.AffinePath(paths.CondOTScheduler())


def test_curvature_summary_is_zero_for_straight_lines_and_pi_over_2_minus_1_for_half_circles():
    s = torch.linspace(0, 1, 201)[:, None, None]
    starts = torch.randn(1, 7, 2, dtype=torch.float64)
    ends = torch.randn(1, 7, 2, dtype=torch.float64)
    straight = (1 - s) * starts + s * ends
    for value in pe.curvature_summary(straight).values():
        assert abs(value) < 1e-6
    angle = math.pi * torch.linspace(0, 1, 2001, dtype=torch.float64)
    half_circle = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)[:, None, :].expand(-1, 3, -1)
    summary = pe.curvature_summary(half_circle)
    assert set(summary) == set(pe.CURVATURE_SUMMARIES)
    for value in summary.values():       # length pi, chord 2
        assert abs(value - (math.pi / 2 - 1)) < 1e-5


def test_evaluate_sampler_on_a_constant_velocity_is_exact_and_straight():
    shift = torch.tensor([1.5, -0.5])
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    data = z + shift                     # the flow of v = shift maps z onto data exactly
    ev = pe.evaluate_sampler(lambda x, t: shift.expand_as(x), z, data, data.clone(), fine_steps=10,
                             euler_steps=(1, 3))
    assert ev.w2 < 1e-5 and ev.floor < 1e-5
    assert all(w < 1e-5 for w in ev.euler_w2.values()) and set(ev.euler_w2) == {1, 3}
    assert ev.gap < 1e-10 and abs(ev.curvature["pooled"]) < 1e-6
    assert ev.trajectory.shape == (11, 300, 2) and torch.allclose(ev.samples, data, atol=1e-5)


@pytest.mark.parametrize("bad", [(), (0,), (1.5,), (True,)])
def test_evaluate_sampler_rejects_bad_step_lists(bad):
    z = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="euler_steps"):
        pe.evaluate_sampler(lambda x, t: x, z, z, z, fine_steps=2, euler_steps=bad)
    with pytest.raises(ValueError, match="fine_steps"):
        pe.evaluate_sampler(lambda x, t: x, z, z, z, fine_steps=0, euler_steps=(1,))


def test_velocity_from_prediction_is_the_closed_form_conversion():
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    model = lambda x, t: 0.3 * x + 1.0      # noqa: E731 (any prediction)
    assert pe.velocity_from_prediction(model, LIN, "velocity") is model
    v_x1 = pe.velocity_from_prediction(model, LIN, "x1")(x, t)
    assert torch.allclose(v_x1, (model(x, t) - x) / (1 - t)[:, None])           # (x1_hat - x)/(1 - t)
    v_x0 = pe.velocity_from_prediction(model, LIN, "x0")(x, t)
    assert torch.allclose(v_x0, (x - model(x, t)) / t[:, None])                 # (x - x0_hat)/t


def test_sample_from_prediction_reaches_a_point_mass_from_an_exact_x1_model():
    target = torch.tensor([0.4, -0.7], dtype=torch.float64)
    model = lambda x, t: target.expand_as(x)  # noqa: E731 (E[X1 | x] for data = one point)
    z = torch.randn(50, 2, dtype=torch.float64)
    ends = pe.sample_from_prediction(model, LIN, "x1", z, steps=8, clamp=None)
    assert torch.allclose(ends, target.expand_as(ends), atol=1e-10)
    far = pe.sample_from_prediction(lambda x, t: 5 * target.expand_as(x), LIN, "x1", z, steps=8)
    assert far.max() <= 1.0 and far.min() >= -1.0                               # clamped to [-1, 1]


def test_loss_by_time_velocity_error_is_the_native_loss_times_the_squared_coefficient():
    x0 = torch.randn(64, 2, dtype=torch.float64)
    x1 = torch.randn(64, 2, dtype=torch.float64)
    models = {"x0": lambda x, t: 0.5 * x, "x1": lambda x, t: -0.2 * x + 0.1, "velocity": lambda x, t: x}
    grid = [0.1, 0.5, 0.8]
    native, vel_err = pe.loss_by_time(models, LIN, x0, x1, grid)
    for k, tv in enumerate(grid):
        assert vel_err["x0"][k] == pytest.approx(native["x0"][k] / tv**2, rel=1e-9)
        assert vel_err["x1"][k] == pytest.approx(native["x1"][k] / (1 - tv) ** 2, rel=1e-9)
        assert vel_err["velocity"][k] == pytest.approx(native["velocity"][k], rel=1e-9)


def test_conversion_gap_is_zero_against_itself_and_the_offset_against_a_shifted_reference():
    x0 = torch.randn(32, 3, dtype=torch.float64)
    x1 = torch.randn(32, 3, dtype=torch.float64)
    model = lambda x, t: 0.7 * x  # noqa: E731
    own = pe.velocity_from_prediction(model, LIN, "x0")
    assert pe.conversion_gap(model, own, LIN, "x0", x0, x1, 0.3) < 1e-12
    shifted = lambda x, t: own(x, t) - 2.0  # noqa: E731
    assert pe.conversion_gap(model, shifted, LIN, "x0", x0, x1, 0.3) == pytest.approx(2.0)
