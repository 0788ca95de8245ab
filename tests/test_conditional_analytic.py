"""fmlib.analytic's class-conditional oracles (LabelledMixture, ConditionalField), checked against the
single-Gaussian closed forms, Bayes' rule with scipy densities, autograd, and quadrature of the tilted density."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fmlib import analytic, guidance, paths

F64 = torch.float64


def labelled(dtype: torch.dtype = F64) -> analytic.LabelledMixture:
    """Class 0: two components; class 1: one Gaussian N((1.5, −1), 0.5² I)."""
    mix = analytic.GaussianMixture(means=torch.tensor([[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], dtype=dtype),
                                   stds=torch.tensor([0.3, 0.5, 0.2], dtype=dtype),
                                   weights=torch.tensor([0.3, 0.5, 0.2], dtype=dtype))
    return analytic.LabelledMixture(mix, torch.tensor([0, 1, 0]))


def field(name: str = "condot") -> analytic.ConditionalField:
    return analytic.ConditionalField(paths.AffinePath(paths.get_scheduler(name)), labelled())


def points(n: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64) * 1.5, 0.05 + 0.9 * torch.rand(n, generator=g, dtype=F64)


def test_class_prior_and_given_renormalise():
    data = labelled()
    assert torch.allclose(data.class_prior(), torch.tensor([0.5, 0.5], dtype=F64))
    c0 = data.given(0)
    assert torch.allclose(c0.weights, torch.tensor([0.6, 0.4], dtype=F64)) and c0.n_components == 2
    assert data.given(data.null_label) is data.mixture and data.null_label == 2


@pytest.mark.parametrize("name", ["condot", "cosine"])
def test_single_gaussian_class_has_the_gaussian_velocity(name):
    f = field(name)
    x, t = points()
    o = f.path.scheduler(t)
    m, s2 = torch.tensor([1.5, -1.0], dtype=F64), 0.25
    gain = (o.d_alpha * o.alpha * s2 + o.d_sigma * o.sigma) / (o.alpha ** 2 * s2 + o.sigma ** 2)
    expected = o.d_alpha[:, None] * m + gain[:, None] * (x - o.alpha[:, None] * m)
    assert torch.allclose(f.velocity(x, t, 1), expected, atol=1e-12)


def test_class_posterior_is_bayes_rule_with_scipy_densities():
    f = field()
    x, t = points()
    o = f.path.scheduler(t)
    data = labelled()
    dens = np.zeros((x.shape[0], 3))
    for k in range(3):
        for b in range(x.shape[0]):
            var = float(o.alpha[b] ** 2 * data.mixture.stds[k] ** 2 + o.sigma[b] ** 2)
            dens[b, k] = float(data.mixture.weights[k]) * stats.multivariate_normal(
                (o.alpha[b] * data.mixture.means[k]).numpy(), var * np.eye(2)).pdf(x[b].numpy())
    expected = np.stack([dens[:, 0] + dens[:, 2], dens[:, 1]], 1) / dens.sum(1, keepdims=True)
    assert np.allclose(f.class_log_posterior(x, t).exp().numpy(), expected, atol=1e-12)


def test_classifier_score_is_the_gradient_of_the_class_posterior():
    f = field()
    x, t = points()
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    grad = guidance.classifier_log_prob_gradient(f.class_log_posterior, x, t, y)
    assert torch.allclose(f.classifier_score(x, t, y), grad, atol=1e-10)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 3.0, 7.0])
def test_exact_cfg_equals_classifier_guidance_with_the_exact_classifier(w):
    f = field()
    x, t = points()
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    cfg = guidance.guided_velocity(f, x, t, y, scale=w)            # null label taken from the field
    cg = guidance.ClassifierGuidedField(lambda xx, tt: f(xx, tt), f.class_log_posterior, f.path, y, scale=w)
    assert torch.allclose(cfg, cg(x, t), atol=1e-10)
    # and the CFG field is the velocity-from-score of the tilted density p_t(x) p_t(y|x)^w
    tilted_score = f.score(x, t, f.null_label) + w * f.classifier_score(x, t, y)
    assert torch.allclose(cfg, f.path.velocity_from_score(x, tilted_score, t), atol=1e-10)


def test_tilted_samples_match_quadrature_of_the_tilted_density():
    data = labelled()
    w = 3.0
    grid = torch.linspace(-5, 5, 401, dtype=F64)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    dens = data.tilted_log_density(xy, 0, w).exp()
    mean = (dens[:, None] * xy).sum(0) / dens.sum()
    samples = data.sample_tilted(40_000, 0, w, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (40_000, 2)
    assert torch.allclose(samples.mean(0), mean, atol=0.03)
    # w = 1 is the class-conditional distribution: its mean is 0.6 m_0 + 0.4 m_2
    s1 = data.sample_tilted(40_000, 0, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(s1.mean(0), torch.tensor([-1.0, 1.1], dtype=F64), atol=0.03)


def test_sample_returns_labels_of_the_components():
    data = labelled()
    x, y = data.sample(5000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5000, 2) and y.dtype == torch.long
    assert abs(float((y == 1).double().mean()) - 0.5) < 0.03
    assert torch.allclose(x[y == 1].mean(0), torch.tensor([1.5, -1.0], dtype=F64), atol=0.05)


def test_bad_labels_and_scales_are_rejected():
    mix = labelled().mixture
    with pytest.raises(ValueError, match="needs a component"):
        analytic.LabelledMixture(mix, torch.tensor([0, 2, 0]))
    with pytest.raises(ValueError, match="integer tensor"):
        analytic.LabelledMixture(mix, torch.tensor([0.0, 1.0, 0.0]))
    data = labelled()
    with pytest.raises(ValueError, match="scale ≥ 0"):
        data.sample_tilted(10, 0, -1.0)
    with pytest.raises(ValueError, match="label must be"):
        data.tilted_log_density(torch.zeros(2, 2, dtype=F64), 2, 1.0)
    with pytest.raises(ValueError, match="label must be"):
        field().velocity(torch.zeros(2, 2, dtype=F64), 0.5, 5)
    with pytest.raises(ValueError, match="scale must be a finite"):
        data.tilted_log_density(torch.zeros(2, 2, dtype=F64), 0, math.nan)
