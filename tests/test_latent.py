"""fmlib.latent against closed forms: PCA autoencoders, linear maps, Gaussian W2."""

import math

import pytest
import torch

from fmlib import analytic, latent, paths


def _gaussian_data(n=4000, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])[:d]
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ torch.linalg.qr(
        torch.randn(d, d, generator=g, dtype=torch.float64))[0].T + 1.5


def test_pca_reconstruction_is_sum_of_discarded_eigenvalues():
    x = _gaussian_data()
    for k in (1, 3, 5):
        ae, evals = latent.pca_autoencoder(x, k)
        rmse = latent.reconstruction_rmse(ae, x)
        assert rmse ** 2 == pytest.approx(float(evals[k:].sum()), rel=1e-9)


def test_pca_decoder_lipschitz_is_one_and_linear_map_gives_top_singular_value():
    x = _gaussian_data()
    ae, _ = latent.pca_autoencoder(x, 3)
    z = latent.encode(ae, x[:50])
    assert latent.lipschitz_estimate(ae.decode, z) == pytest.approx(1.0, abs=1e-10)
    a = torch.randn(7, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    norms = latent.jacobian_spectral_norms(lambda v: v @ a.T, torch.randn(5, 4, dtype=torch.float64))
    assert torch.allclose(norms, torch.linalg.svdvals(a)[0].expand(5), atol=1e-12)
    wide = a.T                                                  # 7 inputs, 4 outputs: reverse mode
    norms = latent.jacobian_spectral_norms(lambda v: v @ wide.T, torch.randn(5, 7, dtype=torch.float64))
    assert torch.allclose(norms, torch.linalg.svdvals(a)[0].expand(5), atol=1e-12)


def test_bounds_closed_form_and_errors():
    assert latent.latent_w2_bound(0.5, 1.0) == pytest.approx(math.sqrt(math.e ** 3 * 0.5))
    assert latent.pixel_w2_bound(0.1, 2.0, 0.3) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        latent.latent_w2_bound(-1.0, 1.0)
    with pytest.raises(ValueError):
        latent.pixel_w2_bound(0.1, float("nan"), 0.3)


def test_latent_scale_roundtrip_and_std():
    z = 5 * torch.randn(1000, 4, dtype=torch.float64) + 2
    for target in (0.2, 1.0, 5.0):
        sc = latent.LatentScale.fit(z, target_std=target)
        zn = sc.normalise(z)
        assert float(zn.pow(2).mean().sqrt()) == pytest.approx(target, rel=1e-9)
        assert torch.allclose(sc.denormalise(zn), z)
    with pytest.raises(ValueError):
        latent.LatentScale.fit(z, target_std=0.0)


def test_marginal_fm_loss_zero_for_exact_and_closed_form_for_shift():
    x1 = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = analytic.MarginalField(paths.AffinePath(paths.get_scheduler("condot")),
                                   analytic.GaussianMixture.from_points(x1))
    g = torch.Generator().manual_seed(0)
    assert latent.marginal_fm_loss(exact, exact, x1, n=500, generator=g) == 0.0
    shifted = lambda x, t: exact(x, t) + torch.tensor([0.3, 0.4], dtype=x.dtype)
    # ‖s‖² = 0.25 integrated over t ∈ [0, t_max]
    got = latent.marginal_fm_loss(shifted, exact, x1, n=500, t_max=0.9, generator=g)
    assert got == pytest.approx(0.25 * 0.9, rel=1e-9)


def test_autoencoder_shapes_and_errors():
    ae = latent.Autoencoder(64, 8, hidden=16)
    x = torch.randn(3, 1, 8, 8)
    assert ae.encode(x).shape == (3, 8) and latent.decode(ae, ae.encode(x), (1, 8, 8)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError):
        ae.encode(torch.randn(3, 10))
    with pytest.raises(ValueError):
        latent.Autoencoder(64, 0)


def test_gaussian_w2_commuting_and_singular_cases():
    a = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    m = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    got = latent.gaussian_w2(m, q @ torch.diag(a) @ q.T, torch.zeros(3, dtype=torch.float64),
                             q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(math.sqrt(1.0 + float((a.sqrt() - b.sqrt()).pow(2).sum())), abs=1e-7)
    # (a zero eigenvalue costs √(rounding) ≈ 1e-8 of accuracy)
    # against scipy's sqrtm on a non-commuting, non-singular pair
    import numpy as np
    import scipy.linalg
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4, 4, generator=g, dtype=torch.float64), torch.randn(4, 4, generator=g, dtype=torch.float64)
    A, B = (x @ x.T).numpy(), (y @ y.T).numpy()
    ra = scipy.linalg.sqrtm(A)
    ref = np.trace(A + B - 2 * np.real(scipy.linalg.sqrtm(ra @ B @ ra)))
    z = torch.zeros(4, dtype=torch.float64)
    assert latent.gaussian_w2(z, torch.from_numpy(A), z, torch.from_numpy(B)) == pytest.approx(math.sqrt(ref), rel=1e-8)
    with pytest.raises(ValueError):
        latent.gaussian_w2(z, torch.eye(3), z, torch.eye(4))


def test_kl_to_standard_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    mean, logvar = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g,
                                                                                    dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(latent.kl_to_standard_normal(mean, logvar), ref, atol=1e-12)
    assert latent.kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    with pytest.raises(ValueError):
        latent.kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 4))


def test_variational_autoencoder_encodes_the_posterior_mean():
    torch.manual_seed(0)
    vae = latent.Autoencoder(64, 5, hidden=16, variational=True)
    x = torch.randn(7, 1, 8, 8)
    mean, logvar = vae.posterior(x)
    assert mean.shape == logvar.shape == (7, 5)
    assert torch.equal(vae.encode(x), mean) and torch.equal(vae.encode(x), vae.encode(x))
    assert latent.decode(vae, latent.encode(vae, x), (1, 8, 8)).shape == (7, 1, 8, 8)
    with pytest.raises(ValueError, match="no posterior"):
        latent.Autoencoder(64, 5, hidden=16).posterior(x)
    with pytest.raises(ValueError):
        latent.Autoencoder(64, 5, variational="yes")


def test_autoencoder_loss_closed_forms():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    ae = latent.Autoencoder(6, 2, hidden=8)
    got = latent.autoencoder_loss(x)(ae, 40, torch.Generator().manual_seed(1)).detach()
    idx = torch.randint(0, 40, (40,), generator=torch.Generator().manual_seed(1))
    assert float(got) == pytest.approx(float((ae(x[idx]) - x[idx]).square().mean().detach()), rel=1e-6)
    # variational: same draws by hand, reconstruction / d + β KL / d
    vae = latent.Autoencoder(6, 2, hidden=8, variational=True)
    got = latent.autoencoder_loss(x, kl_weight=0.5)(vae, 40, torch.Generator().manual_seed(1)).detach()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 40, (40,), generator=g)
    mean, logvar = vae.posterior(x[idx])
    z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=g)
    want = ((vae.decode(z) - x[idx]).square().sum(1) + 0.5 * latent.kl_to_standard_normal(mean, logvar)).mean() / 6
    assert float(got) == pytest.approx(float(want.detach()), rel=1e-6)
    with pytest.raises(ValueError):
        latent.autoencoder_loss(x, kl_weight=-1.0)


def test_train_autoencoder_kl_option_is_its_own_cached_run():
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    plain = latent.train_autoencoder(x, 2, name="ae-test", steps=5, progress=False)
    kl = latent.train_autoencoder(x, 2, name="ae-test", steps=5, kl_weight=1e-2, progress=False)
    assert not plain.model.variational and kl.model.variational and plain.key != kl.key
    assert latent.train_autoencoder(x, 2, name="ae-test", steps=5, kl_weight=1e-2, progress=False).from_cache


def test_matched_steps_rounds_to_a_multiple_and_checks_input():
    assert latent.matched_steps(10.0, 0.004) == 2500
    assert latent.matched_steps(10.0, 0.0041, multiple=100) == 2400
    assert latent.matched_steps(0.01, 1.0) == 100            # at least one multiple
    for bad in ((0.0, 1.0), (1.0, -1.0), (float("nan"), 1.0)):
        with pytest.raises(ValueError):
            latent.matched_steps(*bad)
    with pytest.raises(ValueError):
        latent.matched_steps(1.0, 1.0, multiple=0)


def test_step_seconds_times_each_run_without_changing_it():
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(50) % 4
    from fmlib import models
    model = models.MLP(dim=3, hidden=8, depth=1, num_classes=4)
    before = [p.clone() for p in model.parameters()]
    out = latent.step_seconds({"flow": (model, latent.latent_flow_loss(z, labels), 16),
                               "ae": (latent.Autoencoder(3, 2, hidden=4), latent.autoencoder_loss(z), 16)},
                              n_steps=2, rounds=2)
    assert set(out) == {"flow", "ae"} and all(v > 0 for v in out.values())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError):
        latent.step_seconds({})
    with pytest.raises(ValueError):
        latent.latent_flow_loss(z, labels[:10])


def test_batched_jacobians_and_fm_loss_equal_one_batch():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64)
    fn = lambda v: torch.tanh(v @ a.T)
    z = torch.randn(11, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(latent.jacobian_spectral_norms(fn, z, batch_size=4),
                          latent.jacobian_spectral_norms(fn, z, batch_size=100), atol=1e-12)
    x1 = torch.randn(30, 2, generator=g, dtype=torch.float64)
    exact = analytic.MarginalField(paths.AffinePath(paths.get_scheduler("condot")),
                                   analytic.GaussianMixture.from_points(x1))
    model = lambda x, t: 0.5 * x
    one = latent.marginal_fm_loss(model, exact, x1, n=50, generator=torch.Generator().manual_seed(0))
    many = latent.marginal_fm_loss(model, exact, x1, n=50, generator=torch.Generator().manual_seed(0), batch_size=7)
    assert one == pytest.approx(many, rel=1e-12)
    with pytest.raises(ValueError):
        latent.marginal_fm_loss(model, exact, x1, n=5, batch_size=0)
