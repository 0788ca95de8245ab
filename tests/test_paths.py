"""fmlib.paths: schedulers against closed forms and autograd, path samples, every parametrization conversion,
singular times, and torchcfm as an independent oracle."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from fmlib import paths

SCHEDULER_CASES = [
    ("condot", {}),
    ("condot", {"sigma_min": 0.1}),
    ("vp", {"beta_min": 0.1, "beta_max": 20.0}),
    ("ve", {"sigma_min": 0.01, "sigma_max": 10.0}),
    ("cosine", {}),
]
CASE_IDS = [f"{name}{kw}" for name, kw in SCHEDULER_CASES]
QUANTITIES = ("velocity", "x0", "x1", "score")


def make_path(name: str, kw: dict) -> paths.AffinePath:
    return paths.AffinePath(paths.get_scheduler(name, **kw))


def interior_times(n: int, dtype: torch.dtype = torch.float64, lo: float = 0.05, hi: float = 0.95) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=dtype)


def autograd_derivative(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dy/dt elementwise (y_i depends on t_i only); zero for a y that does not depend on t."""
    if not y.requires_grad:
        return torch.zeros_like(t)
    return torch.autograd.grad(y.sum(), t, retain_graph=True)[0]


# --------------------------------------------------------------------------------------------- schedulers


def test_condot_endpoints_with_sigma_min():
    out = paths.CondOTScheduler(sigma_min=0.1)(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert out.alpha.tolist() == [0.0, 1.0]
    assert out.sigma.tolist() == pytest.approx([1.0, 0.1], abs=1e-15)
    assert out.d_alpha.tolist() == [1.0, 1.0] and out.d_sigma.tolist() == pytest.approx([-0.9, -0.9])


def test_condot_without_sigma_min_reaches_zero_noise_exactly():
    for dtype in (torch.float32, torch.float64):
        out = paths.CondOTScheduler()(torch.tensor([0.0, 1.0], dtype=dtype))
        assert out.alpha.tolist() == [0.0, 1.0] and out.sigma.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cosine_endpoints_are_exact_and_variance_preserving(dtype):
    sched = paths.CosineScheduler()
    ends = sched(torch.tensor([0.0, 1.0], dtype=dtype))
    assert ends.alpha.tolist() == [0.0, 1.0] and ends.sigma.tolist() == [1.0, 0.0]
    assert ends.d_alpha[1].item() == 0.0 and ends.d_sigma[0].item() == 0.0
    t = torch.linspace(0, 1, 101, dtype=dtype)
    out = sched(t)
    torch.testing.assert_close(out.alpha, torch.sin(math.pi * t / 2))
    torch.testing.assert_close(out.sigma, torch.cos(math.pi * t / 2), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.alpha**2 + out.sigma**2, torch.ones_like(t))


def test_vp_is_variance_preserving_with_the_documented_alpha():
    bmin, bmax = 0.1, 20.0
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    out = paths.VPScheduler(bmin, bmax)(t)
    torch.testing.assert_close(out.alpha**2 + out.sigma**2, torch.ones_like(t), rtol=0, atol=1e-14)
    s = 1 - t
    torch.testing.assert_close(out.alpha, torch.exp(-0.5 * (bmin * s + 0.5 * (bmax - bmin) * s**2)))
    assert out.alpha[0].item() == pytest.approx(math.exp(-0.5 * (bmin + 0.5 * (bmax - bmin))))
    assert out.alpha[-1].item() == 1.0 and out.sigma[-1].item() == 0.0
    assert out.d_sigma[-1].item() == -math.inf      # σ'_t → −∞ at the data end


def test_ve_has_unit_alpha_and_geometric_sigma():
    out = paths.VEScheduler(0.01, 10.0)(torch.linspace(0, 1, 11, dtype=torch.float64))
    assert torch.all(out.alpha == 1) and torch.all(out.d_alpha == 0)
    assert out.sigma[0].item() == pytest.approx(10.0) and out.sigma[-1].item() == pytest.approx(0.01)
    ratios = out.sigma[1:] / out.sigma[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.01 / 10.0) ** 0.1))


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scheduler_derivatives_equal_autograd(name, kw, dtype):
    sched = paths.get_scheduler(name, **kw)
    t = torch.linspace(0.0, 0.99, 67, dtype=dtype).requires_grad_(True)
    out = sched(t)
    d_alpha, d_sigma = (autograd_derivative(y, t) for y in (out.alpha, out.sigma))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.d_alpha.detach(), d_alpha, **tol)
    torch.testing.assert_close(out.d_sigma.detach(), d_sigma, **tol)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_scheduler_accepts_any_shape_and_keeps_dtype(name, kw):
    sched = paths.get_scheduler(name, **kw)
    for t in (torch.rand(3, 4, dtype=torch.float64), torch.tensor(0.3), torch.rand(5)):
        out = sched(t)
        for field in (out.alpha, out.sigma, out.d_alpha, out.d_sigma):
            assert field.shape == t.shape and field.dtype == t.dtype
    assert sched(0.5).alpha.shape == ()
    flat = sched(torch.linspace(0, 0.9, 12).reshape(3, 4))
    torch.testing.assert_close(flat.sigma.reshape(-1), sched(torch.linspace(0, 0.9, 12)).sigma)


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan")])
@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_scheduler_rejects_times_outside_unit_interval(name, kw, bad):
    with pytest.raises(ValueError, match="t"):
        paths.get_scheduler(name, **kw)(torch.tensor([0.5, bad]))


def test_snr_and_log_snr():
    sched = paths.CondOTScheduler()
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    snr = sched.snr(t)
    assert snr[0].item() == 0.0 and snr[-1].item() == math.inf
    torch.testing.assert_close(snr[1:3], (t[1:3] / (1 - t[1:3])) ** 2)
    torch.testing.assert_close(sched.log_snr(t[1:3]), torch.log(snr[1:3]))
    vp = paths.VPScheduler()
    tt = torch.linspace(0.01, 0.99, 7, dtype=torch.float64)
    assert torch.all(torch.diff(vp.log_snr(tt)) > 0)      # signal grows towards the data end


def test_get_scheduler_names_parameters_and_errors():
    assert set(paths.SCHEDULERS) == {"condot", "vp", "ve", "cosine"}
    assert isinstance(paths.get_scheduler("vp", beta_max=10.0), paths.VPScheduler)
    with pytest.raises(ValueError, match="condot"):
        paths.get_scheduler("linear")
    with pytest.raises(ValueError, match="bad parameters"):
        paths.get_scheduler("cosine", sigma_min=0.1)
    for name, kw in [("condot", {"sigma_min": 1.5}), ("condot", {"sigma_min": -0.1}), ("vp", {"beta_min": 0.0}),
                     ("vp", {"beta_min": 5.0, "beta_max": 1.0}), ("ve", {"sigma_min": 2.0, "sigma_max": 1.0}),
                     ("condot", {"sigma_min": float("nan")})]:
        with pytest.raises(ValueError):
            paths.get_scheduler(name, **kw)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_config_is_json_and_rebuilds_the_scheduler(name, kw):
    path = make_path(name, kw)
    config = json.loads(json.dumps(path.config()))
    assert config == path.config() == path.scheduler.config() and config["name"] == name
    rebuilt = paths.get_scheduler(**config)
    t = torch.linspace(0, 0.9, 5)
    torch.testing.assert_close(rebuilt(t).sigma, path.scheduler(t).sigma)
    for key, value in kw.items():
        assert f"{key}={value!r}" in repr(path.scheduler) and f"{key}={value!r}" in repr(path)


# ------------------------------------------------------------------------------------------- path samples


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_dx_t_is_the_time_derivative_of_the_conditional_flow(name, kw, generator):
    path = make_path(name, kw)
    x0, x1 = torch.randn(2, 16, 3, generator=generator, dtype=torch.float64)
    t = torch.rand(16, generator=generator, dtype=torch.float64) * 0.98
    t.requires_grad_(True)
    sample = path.sample(x0, x1, t)
    columns = [torch.autograd.grad(sample.x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(3)]
    torch.testing.assert_close(sample.dx_t.detach(), torch.stack(columns, dim=1))


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_sample_matches_the_definition(name, kw, generator):
    path = make_path(name, kw)
    x0, x1 = torch.randn(2, 8, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(8, generator=generator, dtype=torch.float64)
    out = path.scheduler(t)
    sample = path.sample(x0, x1, t)
    torch.testing.assert_close(sample.x_t, out.alpha[:, None] * x1 + out.sigma[:, None] * x0)
    torch.testing.assert_close(sample.dx_t, out.d_alpha[:, None] * x1 + out.d_sigma[:, None] * x0)
    assert sample.x0 is x0 and sample.x1 is x1 and torch.equal(sample.t, t)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_conditional_velocity_at_x_t_equals_dx_t(name, kw, generator):
    path = make_path(name, kw)
    x0, x1 = torch.randn(2, 32, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(32, generator=generator, dtype=torch.float64) * 0.97
    sample = path.sample(x0, x1, t)
    torch.testing.assert_close(path.conditional_velocity(sample.x_t, x1, t), sample.dx_t)


def test_conditional_velocity_of_the_ot_path_by_hand(generator):
    smin = 0.1
    path = paths.AffinePath(paths.CondOTScheduler(sigma_min=smin))
    x, x1 = torch.randn(2, 10, 1, generator=generator, dtype=torch.float64)
    t = torch.linspace(0, 1, 10, dtype=torch.float64)
    expected = (x1 - (1 - smin) * x) / (1 - (1 - smin) * t[:, None])
    torch.testing.assert_close(path.conditional_velocity(x, x1, t), expected)


def test_sample_broadcasts_scalar_time_over_image_batches(generator):
    path = make_path("cosine", {})
    x0, x1 = torch.randn(2, 4, 1, 8, 8, generator=generator)
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.3])):
        sample = path.sample(x0, x1, t)
        assert sample.x_t.shape == x1.shape and sample.t.shape == (4,) and sample.x_t.dtype == torch.float32
        torch.testing.assert_close(sample.x_t, math.sin(0.3 * math.pi / 2) * x1 + math.cos(0.3 * math.pi / 2) * x0)


def test_python_float_times_keep_float64_precision():
    x = torch.zeros(3, 2, dtype=torch.float64)
    path = make_path("condot", {})
    assert path.sample(x, x, 0.9).t.tolist() == [0.9] * 3
    o = path.scheduler(torch.tensor(0.9, dtype=torch.float64))
    expected = (o.d_sigma / o.sigma).item()
    assert path.velocity_from_x1(x + 1, x, 0.9)[0, 0].item() == expected


def test_sample_rejects_bad_inputs():
    path = make_path("condot", {})
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="shapes must match"):
        path.sample(x, torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="shape"):
        path.sample(x, x, torch.rand(3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        path.sample(x, x, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        path.sample(x, x, torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    with pytest.raises(ValueError, match="infinite"):      # VP's σ'_1 = −∞: no conditional velocity at t = 1
        make_path("vp", {}).sample(x, x, 1.0)


# -------------------------------------------------------------------------------------------- conversions


def conditional_quantities(path: paths.AffinePath, sample: paths.PathSample) -> dict[str, torch.Tensor]:
    """The four parametrizations of one path sample, from their definitions."""
    sigma = path.scheduler(sample.t).sigma[:, None]
    return {"velocity": sample.dx_t, "x0": sample.x0, "x1": sample.x1, "score": -sample.x0 / sigma}


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_convert_maps_every_conditional_quantity_to_every_other(name, kw, generator):
    path = make_path(name, kw)
    x0, x1 = torch.randn(2, 40, 3, generator=generator, dtype=torch.float64)
    sample = path.sample(x0, x1, interior_times(40))
    truth = conditional_quantities(path, sample)
    for source, target in itertools.product(QUANTITIES, QUANTITIES):
        got = path.convert(truth[source], sample.x_t, sample.t, source=source, target=target)
        torch.testing.assert_close(got, truth[target], rtol=1e-9, atol=1e-9, msg=f"{source} -> {target}")
    torch.testing.assert_close(path.target(sample, "score"), truth["score"])
    assert path.target(sample, "epsilon") is sample.x0 and path.target(sample, "velocity") is sample.dx_t


NAMED_ROUND_TRIPS = [  # (forward, backward): backward(x, forward(x, p, t), t) == p
    ("x1_from_velocity", "velocity_from_x1"),
    ("x0_from_velocity", "velocity_from_x0"),
    ("x0_from_x1", "x1_from_x0"),
    ("x1_from_x0", "x0_from_x1"),
    ("score_from_velocity", "velocity_from_score"),
    ("velocity_from_score", "score_from_velocity"),
]


@pytest.mark.parametrize(("forward", "backward"), NAMED_ROUND_TRIPS)
@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_named_conversions_round_trip(forward, backward, name, kw, dtype, generator):
    path = make_path(name, kw)
    x, p = torch.randn(2, 30, 2, generator=generator).to(dtype)
    t = interior_times(30, dtype)
    there = getattr(path, forward)(x, p, t)
    back = getattr(path, backward)(x, there, t)
    assert there.dtype == dtype and back.shape == p.shape
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(back, p, **tol)


@pytest.mark.parametrize(("name", "kw"), SCHEDULER_CASES, ids=CASE_IDS)
def test_convert_round_trips_for_all_pairs_and_agrees_with_named_methods(name, kw, generator):
    path = make_path(name, kw)
    x, p = torch.randn(2, 25, 2, generator=generator, dtype=torch.float64)
    t = interior_times(25)
    for source, target in itertools.product(PARAMS := paths.PARAMETRIZATIONS, PARAMS):
        there = path.convert(p, x, t, source=source, target=target)
        back = path.convert(there, x, t, source=target, target=source)
        torch.testing.assert_close(back, p, rtol=1e-8, atol=1e-8, msg=f"{source} <-> {target}")
    named = {("x1", "velocity"): path.velocity_from_x1, ("x0", "velocity"): path.velocity_from_x0,
             ("velocity", "x1"): path.x1_from_velocity, ("velocity", "x0"): path.x0_from_velocity,
             ("x1", "x0"): path.x0_from_x1, ("x0", "x1"): path.x1_from_x0, ("x0", "score"): path.score_from_x0,
             ("score", "velocity"): path.velocity_from_score, ("velocity", "score"): path.score_from_velocity}
    for (source, target), method in named.items():
        assert torch.equal(method(x, p, t), path.convert(p, x, t, source=source, target=target))
    assert torch.equal(path.convert(p, x, t, source="epsilon", target="velocity"),
                       path.convert(p, x, t, source="x0", target="velocity"))


def test_conversions_against_the_closed_forms_of_the_docstring(generator):
    path = make_path("vp", {})
    x, p = torch.randn(2, 20, 2, generator=generator, dtype=torch.float64)
    t = interior_times(20)
    o = path.scheduler(t)
    a, s, da, ds = (c[:, None] for c in (o.alpha, o.sigma, o.d_alpha, o.d_sigma))
    forms = {
        "velocity_from_x1": (ds / s) * x + (da - ds * a / s) * p,
        "velocity_from_x0": (da / a) * x + (ds - da * s / a) * p,
        "x1_from_velocity": (s * p - ds * x) / (da * s - ds * a),
        "x0_from_velocity": (a * p - da * x) / (ds * a - da * s),
        "x0_from_x1": (x - a * p) / s,
        "x1_from_x0": (x - s * p) / a,
        "score_from_x0": -p / s,
        "velocity_from_score": (da / a) * x + (s**2 * da / a - s * ds) * p,
    }
    for method, expected in forms.items():
        torch.testing.assert_close(getattr(path, method)(x, p, t), expected, msg=method)


SINGULAR = [  # (scheduler case, source, target, t) where the conversion's denominator vanishes
    (("condot", {}), "x1", "velocity", 1.0),
    (("condot", {}), "x1", "x0", 1.0),
    (("condot", {}), "x0", "score", 1.0),
    (("condot", {}), "velocity", "score", 1.0),
    (("condot", {}), "x0", "velocity", 0.0),
    (("condot", {}), "epsilon", "x1", 0.0),
    (("condot", {}), "score", "velocity", 0.0),
    (("cosine", {}), "x1", "velocity", 1.0),
    (("cosine", {}), "x0", "velocity", 0.0),
    (("vp", {}), "x1", "velocity", 1.0),
    (("vp", {}), "velocity", "x1", 1.0),     # σ'_1 = −∞
    (("condot", {"sigma_min": 0.1}), "x0", "velocity", 0.0),
]


@pytest.mark.parametrize(("case", "source", "target", "t"), SINGULAR)
def test_singular_conversions_raise(case, source, target, t):
    path = make_path(*case)
    x = torch.randn(4, 2)
    times = torch.tensor([0.5, t, 0.3, 0.7])
    with pytest.raises(ValueError, match="singular"):
        path.convert(x, x, times, source=source, target=target)


def test_named_singular_conversions_raise_and_regular_ends_are_finite():
    path = make_path("condot", {})
    x = torch.randn(4, 2)
    for method, t in [("conditional_velocity", 1.0), ("velocity_from_x1", 1.0), ("x0_from_x1", 1.0),
                      ("score_from_x0", 1.0), ("score_from_velocity", 1.0), ("velocity_from_x0", 0.0),
                      ("x1_from_x0", 0.0), ("velocity_from_score", 0.0)]:
        with pytest.raises(ValueError, match="singular"):
            getattr(path, method)(x, x, t)
    for source, target, t in [("velocity", "x1", 1.0), ("velocity", "x0", 0.0), ("velocity", "x1", 0.0),
                              ("score", "x0", 1.0), ("x1", "velocity", 0.0), ("x0", "velocity", 1.0)]:
        assert torch.isfinite(path.convert(x, x, t, source=source, target=target)).all()
    sample = path.sample(x, x, torch.tensor([0.2, 1.0, 0.4, 0.5]))
    with pytest.raises(ValueError, match="σ_t"):
        path.target(sample, "score")
    # at t = 0 of the linear path x = x0, whatever the velocity
    torch.testing.assert_close(path.convert(2 * x, x, 0.0, source="velocity", target="x0"), x)


def test_ot_path_with_sigma_min_has_a_conditional_velocity_at_t_one(generator):
    path = make_path("condot", {"sigma_min": 0.1})
    x, x1 = torch.randn(2, 6, 2, generator=generator)
    assert torch.isfinite(path.conditional_velocity(x, x1, 1.0)).all()


def test_convert_rejects_unknown_names_and_shape_mismatch():
    path = make_path("condot", {})
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="unknown source parametrization 'noise'"):
        path.convert(x, x, 0.5, source="noise", target="velocity")
    with pytest.raises(ValueError, match="unknown target parametrization"):
        path.convert(x, x, 0.5, source="velocity", target="v")
    with pytest.raises(ValueError, match="shapes must match"):
        path.convert(torch.randn(3, 3), x, 0.5, source="x1", target="velocity")
    sample = path.sample(x, x, 0.5)
    with pytest.raises(ValueError, match="unknown parametrization"):
        path.target(sample, "flow")
    with pytest.raises(TypeError):
        paths.AffinePath("condot")


# ----------------------------------------------------------------------------------------- torchcfm oracle


def test_matches_torchcfm_independent_cfm_on_the_linear_path(generator):
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    x0, x1 = torch.randn(2, 64, 3, generator=generator)
    t = torch.rand(64, generator=generator)
    t_ref, xt_ref, ut_ref = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(x0, x1, t=t)
    ours = make_path("condot", {}).sample(x0, x1, t)
    torch.testing.assert_close(ours.x_t, xt_ref)
    torch.testing.assert_close(ours.dx_t, ut_ref)


def test_matches_torchcfm_target_cfm_for_sigma_min(generator):
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    smin = 0.1
    x0, x1 = torch.randn(2, 64, 2, generator=generator)
    t = torch.rand(64, generator=generator)
    matcher = cfm.TargetConditionalFlowMatcher(sigma=smin)
    torch.manual_seed(0)
    _, xt_ref, ut_ref, eps = matcher.sample_location_and_conditional_flow(x0, x1, t=t, return_noise=True)
    path = make_path("condot", {"sigma_min": smin})
    ours = path.sample(eps, x1, t)        # torchcfm's noise ε plays the role of our source sample x0
    torch.testing.assert_close(ours.x_t, xt_ref)
    torch.testing.assert_close(ours.dx_t, ut_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(path.conditional_velocity(xt_ref, x1, t), ut_ref, rtol=1e-5, atol=1e-5)


def test_matches_torchcfm_variance_preserving_cfm_on_the_cosine_path(generator):
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    x0, x1 = torch.randn(2, 64, 2, generator=generator)
    t = torch.rand(64, generator=generator)
    _, xt_ref, ut_ref = cfm.VariancePreservingConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
        x0, x1, t=t)
    ours = make_path("cosine", {}).sample(x0, x1, t)
    torch.testing.assert_close(ours.x_t, xt_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.dx_t, ut_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["x0", "x1"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_sample_rejects_non_finite_points(which, bad):
    path = paths.AffinePath(paths.CondOTScheduler())
    pts = {"x0": torch.randn(4, 2), "x1": torch.randn(4, 2)}
    pts[which][1, 0] = bad
    with pytest.raises(ValueError, match=f"{which} contain"):
        path.sample(pts["x0"], pts["x1"], 0.5)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1, 1e-3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_derivative_shortcut_of_condot_has_the_bits_of_the_general_formula(sigma_min, dtype, generator):
    # the sample of a scheduler with constant α', σ' forms dx_t from two numbers; same bits as from [B] tensors
    scheduler = paths.CondOTScheduler(sigma_min)
    x0, x1 = (torch.randn(64, 3, generator=generator, dtype=dtype) for _ in range(2))
    t = torch.rand(64, generator=generator, dtype=dtype)
    out = scheduler(t)
    assert scheduler.constant_derivatives() == (1.0, -(1.0 - sigma_min))
    assert torch.equal(out.d_alpha, torch.ones_like(t)) and torch.equal(out.d_sigma, torch.full_like(t, sigma_min - 1))
    alpha, sigma = scheduler.alpha_sigma(t)
    assert torch.equal(alpha, out.alpha) and torch.equal(sigma, out.sigma)
    assert out.alpha.data_ptr() != t.data_ptr()  # __call__'s outputs are the caller's to modify
    sample = paths.AffinePath(scheduler).sample(x0, x1, t)
    col = lambda c: c[:, None]  # noqa: E731
    assert torch.equal(sample.x_t, col(out.alpha) * x1 + col(out.sigma) * x0)
    assert torch.equal(sample.dx_t, col(out.d_alpha) * x1 + col(out.d_sigma) * x0)
    assert paths.CosineScheduler().constant_derivatives() is None
