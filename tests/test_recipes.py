"""fmlib.recipes.train_mlp: seeded MLP runs on a custom loss, cached, in float32."""

import pytest
import torch

from fmlib import models, recipes

SIZE = recipes.MLPSize(hidden=16, depth=2, steps=5, batch_size=8, lr=1e-2)


def regression_loss(target):
    def loss_fn(model, batch, gen):
        x = torch.randn(batch, 1, generator=gen)
        t = torch.rand(batch, generator=gen)
        return (model(x, t) - target).pow(2).mean()
    return loss_fn


KEY = {"data": "regression target 1.0"}


def test_train_mlp_trains_loads_from_the_cache_and_keys_by_the_description():
    first = recipes.train_mlp(regression_loss(1.0), dim=1, size=SIZE, name="t", key=KEY,
                              progress=False)
    assert isinstance(first.model, models.MLP) and len(first.losses) == SIZE.steps
    assert not first.from_cache
    again = recipes.train_mlp(regression_loss(1.0), dim=1, size=SIZE, name="t", key=KEY,
                              progress=False)
    assert again.from_cache and again.key == first.key
    longer = recipes.train_mlp(regression_loss(1.0), dim=1, size=SIZE, name="t", key=KEY,
                               steps=7, progress=False)
    assert len(longer.losses) == 7 and longer.key != first.key


def test_runs_that_differ_only_in_name_start_from_the_same_network_and_stream():
    runs = [recipes.train_mlp(regression_loss(1.0), dim=1, size=SIZE, name=name, key=KEY,
                              cache=False, progress=False) for name in ("a", "b")]
    assert (runs[0].losses == runs[1].losses).all()
    with pytest.raises(ValueError, match="dim"):
        recipes.train_mlp(regression_loss(0.0), dim=0, size=SIZE, name="t", key={})
