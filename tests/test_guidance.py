"""fmlib.guidance: the guided field interpolates/extrapolates linearly in w; label dropout has frequency p."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fmlib.guidance import GuidedField, drop_labels, guided_velocity
from fmlib.solvers import solve_ode

NUM_CLASSES = 3
NULL = NUM_CLASSES


class LabelledField(nn.Module):
    """v(x, t, y) = tanh(W x) (1 + t) + e_y with a distinct embedding row per label (row NULL for ∅)."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 2, generator=generator, dtype=torch.float64))
        self.embedding = nn.Parameter(torch.randn(NUM_CLASSES + 1, 2, generator=generator, dtype=torch.float64))
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return torch.tanh(x @ self.weight.T) * (1 + t[:, None]) + self.embedding[y]


@pytest.fixture
def setup(generator):
    model = LabelledField(generator)
    x = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    t = torch.rand(6, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, x, t, y


def test_scale_zero_is_unconditional_and_scale_one_is_conditional(setup):
    model, x, t, y = setup
    assert torch.equal(guided_velocity(model, x, t, y, scale=0.0, null_label=NULL),
                       model(x, t, torch.full_like(y, NULL)))
    assert torch.equal(guided_velocity(model, x, t, y, scale=1.0, null_label=NULL), model(x, t, y))


def test_guided_velocity_is_affine_in_the_scale(setup):
    model, x, t, y = setup
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NULL))
    for w in (-0.5, 0.3, 2.0, 7.5):
        guided = guided_velocity(model, x, t, y, scale=w, null_label=NULL)
        assert torch.allclose(guided, (1 - w) * uncond + w * cond, atol=1e-12)
    # affine: equal steps in w give equal steps in ṽ
    v1, v2, v3 = (guided_velocity(model, x, t, y, scale=w, null_label=NULL) for w in (1.0, 2.5, 4.0))
    assert torch.allclose(v2 - v1, v3 - v2, atol=1e-12)


def test_guided_velocity_calls_the_model_once(setup):
    model, x, t, y = setup
    model.calls.clear()
    guided_velocity(model, x, t, y, scale=3.0, null_label=NULL)
    guided_velocity(model, x, t, y, scale=1.0, null_label=NULL)
    assert model.calls == [12, 6]      # doubled batch for w ∉ {0, 1}, plain batch for w = 1


def test_guided_field_integrates_with_fixed_labels_and_broadcasts_a_single_label(setup):
    model, x, t, _ = setup
    field = GuidedField(model, torch.tensor(2), scale=2.0, null_label=NULL)
    y = torch.full((6,), 2)
    assert torch.equal(field(x, t), guided_velocity(model, x, t, y, scale=2.0, null_label=NULL))
    sol = solve_ode(GuidedField(model, y, scale=2.0, null_label=NULL), x, steps=4, method="midpoint")
    assert sol.x.shape == x.shape and sol.nfe == 8
    assert torch.equal(GuidedField(model, 1, scale=0.5, null_label=NULL)(x, t),
                       guided_velocity(model, x, t, torch.ones(6, dtype=torch.long), scale=0.5, null_label=NULL))


def test_guided_velocity_rejects_bad_arguments(setup):
    model, x, t, y = setup
    with pytest.raises(ValueError, match="scale"):
        guided_velocity(model, x, t, y, scale=float("nan"), null_label=NULL)
    with pytest.raises(ValueError, match="null_label"):
        guided_velocity(model, x, t, y, scale=1.0, null_label=-1)
    with pytest.raises(ValueError, match=r"shape \[6\]"):
        guided_velocity(model, x, t, y[:3], scale=1.0, null_label=NULL)
    with pytest.raises(ValueError, match="integer"):
        guided_velocity(model, x, t, y.double(), scale=1.0, null_label=NULL)
    with pytest.raises(ValueError, match="integer"):
        GuidedField(model, torch.tensor([0.5]), scale=1.0, null_label=NULL)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_labels_replaces_a_fraction_p_by_the_null_label(p, generator):
    n = 20_000
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    dropped = drop_labels(y, p=p, null_label=NULL, generator=generator)
    is_null = dropped == NULL
    assert abs(is_null.double().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(dropped[~is_null], y[~is_null])       # kept labels are unchanged
    assert dropped.dtype == y.dtype and dropped.shape == y.shape
    assert not torch.equal(dropped, y) and y.max() < NULL     # the input is not modified in place


def test_drop_labels_extremes_and_reproducibility():
    y = torch.arange(10) % NUM_CLASSES
    assert torch.equal(drop_labels(y, p=0.0, null_label=NULL), y)
    assert torch.equal(drop_labels(y, p=1.0, null_label=NULL), torch.full_like(y, NULL))
    a = drop_labels(y, p=0.5, null_label=NULL, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, drop_labels(y, p=0.5, null_label=NULL, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.1", None])
def test_drop_labels_rejects_a_bad_probability(p):
    with pytest.raises(ValueError, match="p must be a probability"):
        drop_labels(torch.zeros(4, dtype=torch.long), p=p, null_label=NULL)


def test_drop_labels_rejects_float_labels_and_bad_null_label():
    with pytest.raises(ValueError, match="integer"):
        drop_labels(torch.zeros(4), p=0.1, null_label=NULL)
    with pytest.raises(ValueError, match="null_label"):
        drop_labels(torch.zeros(4, dtype=torch.long), p=0.1, null_label=1.5)
