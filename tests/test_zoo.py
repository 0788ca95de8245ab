"""fmlib.zoo: profile-sized recipes that train once and are reused from the checkpoint cache."""

import pytest
import torch

from fmlib import models, paths, zoo


def test_sizes_follow_the_profile(monkeypatch):
    monkeypatch.setenv("FMLIB_PROFILE", "quick")
    quick_toy, quick_img = zoo.toy_size(), zoo.image_size("digits")
    monkeypatch.setenv("FMLIB_PROFILE", "full")
    full_toy, full_img = zoo.toy_size(), zoo.image_size("digits")
    assert isinstance(quick_toy, zoo.ToySize) and isinstance(quick_img, zoo.ImageSize)
    assert full_toy.steps > quick_toy.steps and full_toy.hidden >= quick_toy.hidden
    assert full_img.steps > quick_img.steps and len(zoo.image_size("mnist").channel_mults) == 3
    with pytest.raises(ValueError, match="unknown image dataset"):
        zoo.image_size("cifar")


def test_toy_flow_trains_once_then_loads_from_the_cache():
    first = zoo.toy_flow("moons", steps=30, hidden=32, depth=2, progress=False)
    assert not first.from_cache and len(first.losses) == 30
    assert isinstance(first.model, models.MLP)
    again = zoo.toy_flow("moons", steps=30, hidden=32, depth=2, progress=False)
    assert again.from_cache
    x, t = torch.randn(5, 2), torch.rand(5)
    with torch.no_grad():
        assert torch.equal(first.model(x, t), again.model(x, t))
    other = zoo.toy_flow("moons", steps=30, hidden=32, depth=2, scheduler="vp", progress=False)
    assert not other.from_cache and other.key != first.key  # a different path is a different model


def test_toy_flow_x1_parametrization_predicts_data_scale_outputs():
    result = zoo.toy_flow("8gaussians", parametrization="x1", steps=20, hidden=32, depth=2, progress=False)
    with torch.no_grad():
        out = result.model(torch.randn(4, 2), torch.full((4,), 0.5))
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_image_flow_small_run_and_class_conditioning():
    size = zoo.ImageSize(base_channels=8, channel_mults=(1, 2), steps=3, batch_size=8, lr=1e-3)
    result = zoo.image_flow("digits", size=size, conditional=True, progress=False)
    assert isinstance(result.model, models.UNet) and len(result.losses) == 3
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([3, result.model.null_label])
    with torch.no_grad():
        assert result.model(x, t, y).shape == (2, 1, 8, 8)
    assert zoo.image_flow("digits", size=size, conditional=True, progress=False).from_cache


def test_unknown_names_are_errors():
    with pytest.raises(ValueError):
        zoo.toy_flow("nonexistent-dataset", steps=2, progress=False)
    with pytest.raises((ValueError, KeyError)):
        zoo.toy_flow("moons", scheduler="nonexistent", steps=2, progress=False)
    assert paths.get_scheduler("condot") is not None


def test_toy_flow_trains_in_float32_without_autocast(monkeypatch):
    """2-D recipes set amp=False: on a GPU the trainer's bf16 autocast would round losses compared with
    closed forms; image recipes keep the default."""
    seen = {}

    def fake_train(model, loss_fn, config, **kwargs):
        seen[kwargs["name"]] = config.amp
        raise RuntimeError("stop")

    monkeypatch.setattr(zoo, "train", fake_train)
    for call in (lambda: zoo.toy_flow("moons", steps=1), lambda: zoo.image_flow("digits", steps=1)):
        with pytest.raises(RuntimeError, match="stop"):
            call()
    assert seen == {"toy-moons-condot-velocity": False, "img-digits-condot-velocity": True}


def test_autoencoder_recipe_trains_on_the_split_and_names_the_kl_variant(monkeypatch):
    monkeypatch.setenv("FMLIB_PROFILE", "full")
    full_steps = zoo.autoencoder_steps("mnist")
    monkeypatch.setenv("FMLIB_PROFILE", "quick")
    assert zoo.autoencoder_steps("mnist") < full_steps
    plain = zoo.autoencoder("digits", 4, steps=5, progress=False)
    kl = zoo.autoencoder("digits", 4, kl_weight=1e-3, steps=5, progress=False)
    assert plain.model.latent_dim == 4 and plain.model.data_dim == 64 and not plain.model.variational
    assert kl.model.variational and kl.key != plain.key and kl.path.name.startswith("ae-digits-4-kl")
    assert zoo.autoencoder("digits", 4, steps=5, progress=False).from_cache
    with pytest.raises(ValueError, match="unknown image dataset"):
        zoo.autoencoder("cifar", 4, steps=5)
