"""fmlib.metrics against closed forms and independent oracles (scipy, brute-force loops, moment formulas)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from fmlib import metrics


def gaussian_w2(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    """W2 between N(m1, s1) and N(m2, s2): ‖m1 − m2‖² + tr(s1 + s2 − 2 (s1^{1/2} s2 s1^{1/2})^{1/2}), square-rooted."""
    r = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(r @ s2 @ r).real
    return math.sqrt(float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross)))


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------- W2


def test_w2_1d_equals_sorted_formula_exactly():
    """In 1-D the monotone (sorted) coupling is optimal: W2² = mean (x_(i) − y_(i))² for equal sizes."""
    x, y = randn(300, 1, seed=0), 0.5 + 2 * randn(300, 1, seed=1) ** 3
    sorted_formula = math.sqrt(((x.sort(0).values - y.sort(0).values) ** 2).mean().item())
    assert metrics.wasserstein2(x, y) == pytest.approx(sorted_formula, rel=1e-10, abs=1e-12)


def test_w2_1d_unequal_sizes_matches_quantile_integral():
    """Unequal sizes: W2² = ∫₀¹ (F⁻¹ − G⁻¹)², here by brute force on a fine grid of quantile levels."""
    x, y = randn(7, 1, seed=2), randn(5, 1, seed=3) + 1
    levels = (np.arange(35 * 40) + 0.5) / (35 * 40)  # midpoints: every cell lies inside one constant piece
    fx = np.sort(x[:, 0].numpy())[np.ceil(levels * 7).astype(int) - 1]
    fy = np.sort(y[:, 0].numpy())[np.ceil(levels * 5).astype(int) - 1]
    oracle = math.sqrt(np.mean((fx - fy) ** 2))
    assert metrics.wasserstein2(x, y) == pytest.approx(oracle, rel=1e-10)
    assert metrics.sliced_wasserstein2(x, y) == pytest.approx(oracle, rel=1e-10)


def test_w2_1d_gaussians_approach_closed_form():
    """N(0, 1) vs N(1, 2²): W2 = sqrt(1 + (2 − 1)²) = √2. With 200k points the empirical value (sorted formula,
    exact in 1-D by the test above) is within a few 1e-3 (its sampling error is ~ sqrt(5 / N) ≈ 5e-3)."""
    x, y = randn(200_000, 1, seed=4), 1 + 2 * randn(200_000, 1, seed=5)
    assert metrics.sliced_wasserstein2(x, y, n_projections=1) == pytest.approx(math.sqrt(2), abs=0.02)
    # and the exact solver on 1,000 points agrees within its own (larger) sampling error
    assert metrics.wasserstein2(x[:1000], y[:1000]) == pytest.approx(math.sqrt(2), abs=0.25)


def test_w2_2d_gaussians_approach_closed_form():
    """Empirical W2 of 1,500 vs 1,500 points of two 2-D Gaussians; sampling spread over seeds is ≈ 0.03."""
    m1, m2 = np.zeros(2), np.array([1.0, -0.5])
    a, b = np.array([[1.0, 0.0], [0.5, 0.8]]), np.array([[0.6, 0.0], [-0.3, 1.2]])
    x = torch.from_numpy(m1) + randn(1500, 2, seed=6) @ torch.from_numpy(a).T
    y = torch.from_numpy(m2) + randn(1500, 2, seed=7) @ torch.from_numpy(b).T
    exact = gaussian_w2(m1, a @ a.T, m2, b @ b.T)
    assert metrics.wasserstein2(x, y) == pytest.approx(exact, abs=0.12)


def test_w2_self_zero_translation_exact_and_no_solver_warning():
    x = randn(1000, 3, seed=8)
    shift = torch.tensor([3.0, -4.0, 12.0], dtype=torch.float64)
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # POT must not stop early with a warning
        assert metrics.wasserstein2(x, x) == 0.0
        assert metrics.wasserstein2(x, x[perm] + shift) == pytest.approx(13.0, rel=1e-9)


def test_w2_accepts_float32_numpy_and_grad_tensors():
    x = randn(50, 2, seed=9).float().requires_grad_(True)
    y = randn(50, 2, seed=10).numpy()
    assert metrics.wasserstein2(x, y) == pytest.approx(metrics.wasserstein2(x.detach().double(), y), rel=1e-6)


def test_w2_solver_failure_is_an_error(monkeypatch):
    import ot

    monkeypatch.setattr(ot, "emd2", lambda *a, **k: (1.0, {"result_code": 3, "warning": "numItermax reached"}))
    with pytest.raises(RuntimeError, match="optimal"):
        metrics.wasserstein2(randn(5, 2, seed=0), randn(5, 2, seed=1))


@pytest.mark.parametrize("fn", [metrics.wasserstein2, metrics.sliced_wasserstein2, metrics.energy_distance])
def test_point_metrics_reject_bad_input(fn):
    x = randn(10, 2, seed=0)
    with pytest.raises(ValueError, match="same dimension"):
        fn(x, randn(10, 3, seed=1))
    with pytest.raises(ValueError, match="NaN"):
        fn(x, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="at least"):
        fn(x, torch.empty(0, 2))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fn(x[:, 0], x[:, 0])
    with pytest.raises(ValueError, match="infinite"):
        fn(x, torch.full((10, 2), float("inf")))
    with pytest.raises(TypeError):
        fn(x, [[0.0, 1.0]])


# ------------------------------------------------------------------------------------------ sliced W2


def test_sliced_equals_exact_in_1d():
    x, y = randn(200, 1, seed=11), randn(200, 1, seed=12).exp()
    assert metrics.sliced_wasserstein2(x, y, n_projections=16) == pytest.approx(metrics.wasserstein2(x, y), rel=1e-10)


@pytest.mark.parametrize("dim", [2, 5])
def test_sliced_below_exact_in_higher_dims(dim):
    x, y = randn(300, dim, seed=13), randn(300, dim, seed=14) * 1.5 + 0.7
    sw, w = metrics.sliced_wasserstein2(x, y), metrics.wasserstein2(x, y)
    assert 0 < sw <= w
    # with one direction, a 1-D exact W2 of projections: also ≤ W2
    assert metrics.sliced_wasserstein2(x, y, n_projections=1, seed=3) <= w


def test_sliced_seeded_and_validated():
    x, y = randn(100, 3, seed=15), randn(100, 3, seed=16) + 1
    assert metrics.sliced_wasserstein2(x, y, seed=5) == metrics.sliced_wasserstein2(x, y, seed=5)
    assert metrics.sliced_wasserstein2(x, y, seed=5) != metrics.sliced_wasserstein2(x, y, seed=6)
    assert metrics.sliced_wasserstein2(x, x) == 0.0
    with pytest.raises(ValueError, match="n_projections"):
        metrics.sliced_wasserstein2(x, y, n_projections=0)


# ------------------------------------------------------------------------------------------ energy


def test_energy_matches_brute_force_double_loop():
    x, y = randn(5, 3, seed=17), randn(7, 3, seed=18) + 0.3

    def mean_dist(a, b):
        return sum(float(np.linalg.norm(ai - bj)) for ai in a.numpy() for bj in b.numpy()) / (len(a) * len(b))

    brute = 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)
    assert metrics.energy_distance(x, y) == pytest.approx(brute, rel=1e-12)
    assert metrics.energy_distance(y, x) == pytest.approx(brute, rel=1e-12)


def test_energy_is_square_of_scipy_in_1d():
    """scipy.stats.energy_distance returns sqrt(2E|X−Y| − E|X−X'| − E|Y−Y'|); we return the square."""
    x, y = randn(40, 1, seed=19), randn(60, 1, seed=20) * 2
    ours = metrics.energy_distance(x, y)
    assert ours == pytest.approx(scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2, rel=1e-10)


def test_energy_zero_identical_positive_otherwise():
    x = randn(200, 2, seed=21)
    assert metrics.energy_distance(x, x) == 0.0
    assert metrics.energy_distance(x, x + 0.1) > 0
    # chunked evaluation (more rows than one chunk) agrees with the definition
    big_x, big_y = randn(2100, 2, seed=22), randn(300, 2, seed=23) + 1
    d = torch.cdist(big_x, big_y).mean() * 2 - torch.cdist(big_x, big_x).mean() - torch.cdist(big_y, big_y).mean()
    assert metrics.energy_distance(big_x, big_y) == pytest.approx(float(d), rel=1e-8)


# ------------------------------------------------------------------------------------ compare_samples


def test_compare_samples_values_floors_and_order():
    data, ref = randn(3000, 2, seed=24), randn(3000, 2, seed=25)
    model = randn(3000, 2, seed=26) + torch.tensor([0.5, 0.0], dtype=torch.float64)
    out = metrics.compare_samples(model, data, ref, metrics=("energy", "sw2"))
    assert list(out) == ["energy", "sw2"]
    for name, rep in out.items():
        assert rep.name == name and rep.value > rep.floor > 0
    assert out["sw2"].value == metrics.sliced_wasserstein2(model, data)
    assert out["energy"].floor == metrics.energy_distance(ref, data)
    assert out["energy"].floor < 2e-3 and out["sw2"].floor < 0.06  # large samples of the same data: floor ≈ 0
    assert str(out["sw2"]).startswith("sw2 = ") and "floor" in str(out["sw2"])


def test_compare_samples_default_metrics_and_errors():
    data, ref, model = randn(200, 2, seed=27), randn(200, 2, seed=28), randn(200, 2, seed=29)
    out = metrics.compare_samples(model, data, ref)
    assert list(out) == ["w2", "sw2", "energy"]
    assert out["w2"].value == metrics.wasserstein2(model, data) and out["w2"].floor == metrics.wasserstein2(ref, data)
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.compare_samples(model, data, ref, metrics=("w1",))
    with pytest.raises(ValueError, match="same number"):
        metrics.compare_samples(model, data, ref[:100])
    with pytest.raises(ValueError, match="same dimension"):
        metrics.compare_samples(model, randn(200, 3, seed=0), ref)


# ------------------------------------------------------------------------------- Fréchet distance, KID


def features_with_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """n points whose sample mean and unbiased sample covariance are exactly ``mean`` and ``cov``."""
    z = randn(n, len(mean), seed=seed).numpy()
    z = z - z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: cov(z) = I
    return torch.from_numpy(mean + z @ np.linalg.cholesky(cov).T)


def test_frechet_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    ma, mb = rng.normal(size=d), rng.normal(size=d)
    qa, qb = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    ca, cb = qa @ qa.T / d + 0.1 * np.eye(d), qb @ qb.T / d + 0.1 * np.eye(d)
    fa, fb = features_with_moments(500, ma, ca, seed=30), features_with_moments(800, mb, cb, seed=31)
    closed = gaussian_w2(ma, ca, mb, cb) ** 2  # the Fréchet distance is the squared Gaussian W2
    assert metrics.frechet_distance(fa, fb) == pytest.approx(closed, rel=1e-8)
    # commuting (diagonal) covariances: Σ (σ_a − σ_b)² + ‖Δμ‖²
    sa, sb = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    fa, fb = features_with_moments(300, np.zeros(3), np.diag(sa), 32), features_with_moments(300, np.ones(3), np.diag(sb), 33)
    assert metrics.frechet_distance(fa, fb) == pytest.approx(3 + ((np.sqrt(sa) - np.sqrt(sb)) ** 2).sum(), rel=1e-8)


def test_frechet_zero_for_identical_and_errors():
    f = randn(400, 16, seed=34)
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    assert metrics.frechet_distance(f, f + 1) == pytest.approx(16.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(f[:1], f)
    with pytest.raises(ValueError, match="same dimension"):
        metrics.frechet_distance(f, f[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.frechet_distance(f, f * float("nan"))


def cubic_mmd2_1d(ma: tuple[float, float, float], mb: tuple[float, float, float]) -> float:
    """Population MMD² for k(u, v) = (uv + 1)³ = 1 + 3uv + 3u²v² + u³v³ from the first three moments."""
    return 3 * (ma[0] - mb[0]) ** 2 + 3 * (ma[1] - mb[1]) ** 2 + (ma[2] - mb[2]) ** 2


def uniform_moments(lo: float, hi: float) -> tuple[float, float, float]:
    return ((lo + hi) / 2, (lo * lo + lo * hi + hi * hi) / 3, (lo + hi) * (lo * lo + hi * hi) / 4)


def test_kid_unbiased_in_expectation_on_tiny_samples():
    """Average of many 4-vs-4-point estimates equals the population MMD² (moment formula) within 4 standard
    errors, both for one distribution (0) and for two; the biased V-statistic would miss by far more."""
    g = torch.Generator().manual_seed(35)
    reps, n = 3000, 4
    for (lo_b, hi_b) in ((-1.0, 1.0), (-0.5, 1.5)):
        a = torch.rand(reps, n, 1, generator=g, dtype=torch.float64) * 2 - 1
        b = torch.rand(reps, n, 1, generator=g, dtype=torch.float64) * (hi_b - lo_b) + lo_b
        est = np.array([metrics.kernel_distance(a[r], b[r]) for r in range(reps)])
        truth = cubic_mmd2_1d(uniform_moments(-1, 1), uniform_moments(lo_b, hi_b))
        se = est.std(ddof=1) / math.sqrt(reps)
        assert abs(est.mean() - truth) < 4 * se, (est.mean(), truth, se)
        # the V-statistic (diagonal included) has a positive bias that this test would detect
        k = lambda u, v: (u @ v.T + 1) ** 3
        v_stat = np.mean([float(k(a[r], a[r]).mean() + k(b[r], b[r]).mean() - 2 * k(a[r], b[r]).mean())
                          for r in range(200)])
        assert v_stat - truth > 10 * se


def test_kid_near_zero_same_distribution_positive_otherwise():
    a, b = randn(1000, 8, seed=36), randn(1000, 8, seed=37)
    same = metrics.kernel_distance(a, b)
    other = metrics.kernel_distance(a, b * 1.3 + 0.3)
    assert abs(same) < 0.01
    assert other > 0.1 > 10 * abs(same)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kernel_distance(a[:1], b)


# ------------------------------------------------------------------------------- feature classifier


@pytest.mark.parametrize("size", [8, 28])
def test_feature_classifier_shapes(size):
    net = metrics.FeatureClassifier(size, num_classes=10, feature_dim=32)
    x = torch.randn(3, 1, size, size)
    assert net.features(x).shape == (3, 32)
    assert net(x).shape == (3, 10)
    # normalised features: mean 0 and ‖φ‖² ≤ F, so the KID kernel (φᵀψ / F + 1)³ lies in [0, 8]
    with torch.no_grad():
        phi = net.features(x)
    assert phi.mean(1).abs().max() < 1e-5 and ((phi ** 2).sum(1) <= 32 * (1 + 1e-5)).all()
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(3, 1, size + 1, size + 1))


def test_train_feature_classifier_caches_and_compare_images():
    from fmlib import data

    digits = data.load_digits()
    kwargs = dict(name="test-digits-classifier", steps=150, batch_size=64, seed=0, progress=False)
    clf, acc = metrics.train_feature_classifier(digits.images, digits.labels, **kwargs)
    assert not clf.training and acc > 0.8
    clf2, acc2 = metrics.train_feature_classifier(digits.images, digits.labels, **kwargs)  # from the cache
    assert acc2 == acc
    for p, q in zip(clf.parameters(), clf2.parameters()):
        assert torch.equal(p, q)

    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(digits.images), generator=gen)
    data_a, data_b, data_c = (digits.images[perm[i * 500:(i + 1) * 500]] for i in range(3))
    noise = (torch.rand(500, 1, 8, 8, generator=gen) * 2 - 1)
    good = metrics.compare_images(data_c, data_a, data_b, clf)
    bad = metrics.compare_images(noise, data_a, data_b, clf)
    assert set(good) == {"fd", "kid"}
    assert good["fd"].floor == bad["fd"].floor and good["kid"].floor == bad["kid"].floor
    assert good["fd"].value < 3 * good["fd"].floor and bad["fd"].value > 10 * bad["fd"].floor
    assert abs(good["kid"].floor) < 0.01 and abs(good["kid"].value) < 0.01
    assert bad["kid"].value > 0.1
    with pytest.raises(ValueError, match="same number"):
        metrics.compare_images(noise, data_a, data_b[:100], clf)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        metrics.compare_images(noise[:, 0], data_a, data_b, clf)


def test_train_feature_classifier_validates():
    with pytest.raises(ValueError, match="labels"):
        metrics.train_feature_classifier(torch.zeros(20, 1, 8, 8), torch.zeros(19, dtype=torch.long), name="x")
    with pytest.raises(ValueError, match="square"):
        metrics.train_feature_classifier(torch.zeros(20, 1, 8, 6), torch.zeros(20, dtype=torch.long), name="x")


# ------------------------------------------------------------------------------------------ trajectories


def _curve(fn, n_times=2001):
    t = torch.linspace(0, 1, n_times, dtype=torch.float64)
    return fn(t)  # [T, B, D]


def test_straight_constant_speed_paths_have_zero_curvature_and_gap():
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    traj = _curve(lambda t: (1 - t)[:, None, None] * x0 + t[:, None, None] * x1, 11)
    assert metrics.trajectory_curvature(traj) == pytest.approx(0, abs=1e-12)
    assert metrics.straightness_gap(traj) == pytest.approx(0, abs=1e-12)


def test_straight_path_with_varying_speed_has_zero_curvature_but_a_gap():
    # x_t = t² e_1: chord e_1, velocity 2t e_1, gap = ∫ (2t − 1)² dt = 1/3
    traj = _curve(lambda t: torch.stack([t**2, torch.zeros_like(t)], -1)[:, None, :])
    assert metrics.trajectory_curvature(traj) == pytest.approx(0, abs=1e-12)
    assert metrics.straightness_gap(traj) == pytest.approx(1 / 3, rel=1e-3)


def test_half_circle_closed_forms():
    # x_t = (cos πt, sin πt): length π, chord ‖(−2, 0)‖ = 2 → curvature π/2 − 1
    traj = _curve(lambda t: torch.stack([torch.cos(math.pi * t), torch.sin(math.pi * t)], -1)[:, None, :])
    assert metrics.trajectory_curvature(traj) == pytest.approx(math.pi / 2 - 1, rel=1e-5)
    # ∫ ‖v‖² = π², ∫ v·c = c·(x_1 − x_0) = 4, ‖c‖² = 4 → ∫ ‖v − c‖² = π² − 8 + 4 = π² − 4
    assert metrics.straightness_gap(traj) == pytest.approx((math.pi**2 - 4) / 4, rel=1e-4)


def test_curvature_summaries_of_a_straight_path_and_a_half_circle():
    # sample 0: straight, length 2, chord 2 → r = 0; sample 1: half circle of radius 1, length π, chord 2 → r = π/2 − 1
    def paths(t):
        straight = torch.stack([2 * t - 1, torch.zeros_like(t)], -1)
        circle = torch.stack([torch.cos(math.pi * t), torch.sin(math.pi * t)], -1)
        return torch.stack([straight, circle], 1)

    traj = _curve(paths)
    r = math.pi / 2 - 1
    assert metrics.trajectory_curvature(traj, reduce="mean") == pytest.approx(r / 2, rel=1e-5)
    assert metrics.trajectory_curvature(traj, reduce="max") == pytest.approx(r, rel=1e-5)
    assert metrics.trajectory_curvature(traj, reduce="median") == pytest.approx(0, abs=1e-9)   # torch: the lower one
    assert metrics.trajectory_curvature(traj, reduce="pooled") == pytest.approx((2 + math.pi) / 4 - 1, rel=1e-5)
    with pytest.raises(ValueError, match="reduce"):
        metrics.trajectory_curvature(traj, reduce="sum")


def test_trajectory_metrics_flatten_images_and_validate():
    traj = torch.randn(4, 2, 1, 3, 3)
    assert math.isfinite(metrics.trajectory_curvature(traj)) and math.isfinite(metrics.straightness_gap(traj))
    with pytest.raises(ValueError, match=r"\[T, B, D\]"):
        metrics.straightness_gap(torch.randn(4, 2))
    with pytest.raises(ValueError, match="2 time points"):
        metrics.trajectory_curvature(torch.randn(1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        metrics.straightness_gap(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="zero chord"):
        metrics.trajectory_curvature(torch.zeros(3, 2, 2))


def test_gaussian_w2_formula_lives_in_one_function():
    from fmlib import latent, transport
    assert transport.gaussian_w2_squared is metrics.gaussian_w2_squared
    m, a = torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    value = metrics.gaussian_w2_squared(m, a, -m, torch.eye(2))
    assert latent.gaussian_w2(m, a, -m, torch.eye(2)) == pytest.approx(value ** 0.5, rel=1e-12)
    with pytest.raises(ValueError, match="positive semi-definite"):
        metrics.gaussian_w2_squared(m, -a, m, a)
