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


# ----------------------------------------------------------- the model's null label is the default

def test_the_models_null_label_is_the_default():
    from fmlib.models import MLP

    torch.manual_seed(0)
    model = MLP(dim=2, hidden=16, depth=1, num_classes=NUM_CLASSES)
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 0])
    explicit = guided_velocity(model, x, t, y, scale=2.5, null_label=model.null_label)
    assert torch.equal(guided_velocity(model, x, t, y, scale=2.5), explicit)
    assert torch.equal(GuidedField(model, y, scale=2.5)(x, t), explicit)
    with pytest.raises(ValueError, match="no null label"):
        guided_velocity(MLP(dim=2, hidden=16, depth=1), x, t, y, scale=2.0)
    with pytest.raises(ValueError, match="no null label"):
        GuidedField(lambda a, b, c: a, 0, scale=2.0)


# --------------------------------------------------------------------------------- classifier guidance

def _path(name):
    from fmlib import paths

    return paths.AffinePath(paths.get_scheduler(name))


@pytest.mark.parametrize("name, closed_form", [("condot", lambda t: (1 - t) / t),
                                               ("cosine", lambda t: (math.pi / 2) / torch.tan(math.pi * t / 2))])
def test_score_coefficient_closed_forms(name, closed_form):
    from fmlib.guidance import score_coefficient

    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    b = score_coefficient(_path(name), t, like=torch.zeros(3, 2, dtype=torch.float64))
    assert torch.allclose(b, closed_form(t), atol=1e-12)


def test_score_coefficient_is_infinite_at_t0_and_says_so():
    from fmlib.guidance import score_coefficient

    with pytest.raises(ValueError, match="singular"):
        score_coefficient(_path("condot"), 0.0, like=torch.zeros(2, 2))


def test_classifier_log_prob_gradient_of_a_linear_classifier():
    """logits = W x: ∇ log softmax_y = W_y − Σ_c p_c W_c."""
    from fmlib.guidance import classifier_log_prob_gradient

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, generator=g, dtype=torch.float64)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 0])
    with torch.no_grad():
        grad = classifier_log_prob_gradient(lambda xx, tt: xx @ weight.T, x, 0.5, y)
    p = torch.softmax(x @ weight.T, dim=1)
    assert torch.allclose(grad, weight[y] - p @ weight, atol=1e-12)
    with pytest.raises(ValueError, match="labels must lie"):
        classifier_log_prob_gradient(lambda xx, tt: xx @ weight.T, x, 0.5, torch.tensor([0, 1, 2, 3, 0]))


def test_noisy_classifier_learns_separated_classes_and_clean_only_is_another_run():
    from fmlib.guidance import NoisyClassifier, train_noisy_classifier

    def sample(n, gen):
        y = torch.randint(0, 2, (n,), generator=gen)
        return torch.randn(n, 2, generator=gen) * 0.3 + (4.0 * y - 2.0)[:, None], y

    common = dict(name="test-clf", key={"data": "two blobs at ±2"}, steps=150, batch_size=128, progress=False)
    noisy = train_noisy_classifier(_path("condot"), sample, 2, **common)
    clean = train_noisy_classifier(_path("condot"), sample, 2, clean_only=True, **common)
    assert isinstance(noisy.model, NoisyClassifier) and noisy.key != clean.key
    x, y = sample(500, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = (noisy.model(x, 1.0).argmax(1) == y).double().mean()
        # at t = 0 the point carries no class information: the noisy classifier is near the prior (1/2, 1/2)
        p0 = torch.softmax(noisy.model(torch.randn(500, 2), 0.0), 1)
    assert accuracy > 0.95
    assert (p0[:, 0] - 0.5).abs().mean() < 0.2
    with pytest.raises(ValueError, match="num_classes"):
        NoisyClassifier(2, 1)


def test_toy_conditional_flow_is_a_conditional_model_keyed_by_its_data():
    from fmlib import analytic, zoo

    def data(shift):
        mix = analytic.GaussianMixture(torch.tensor([[shift, 0.0], [-1.0, 0.0]]), torch.full((2,), 0.3),
                                       torch.full((2,), 0.5))
        return analytic.LabelledMixture(mix, torch.tensor([0, 1]))

    common = dict(name="test-cond", steps=5, hidden=16, depth=1, batch_size=32, progress=False)
    run = zoo.toy_conditional_flow(data(1.0), **common)
    other = zoo.toy_conditional_flow(data(2.0), **common)
    assert run.model.null_label == 2 and run.key != other.key
    x = torch.randn(3, 2)
    assert guided_velocity(run.model, x, 0.5, torch.tensor([0, 1, 0]), scale=2.0).shape == (3, 2)
    with pytest.raises(TypeError, match="LabelledMixture"):
        zoo.toy_conditional_flow("moons", **common)


def test_noisy_image_classifier_shapes_time_dependence_and_errors():
    from fmlib.guidance import NoisyImageClassifier, classifier_log_prob_gradient

    torch.manual_seed(0)
    clf = NoisyImageClassifier(1, 10, width=8)
    x = torch.randn(5, 1, 8, 8)
    assert clf(x, 0.5).shape == (5, 10) and clf(torch.randn(2, 1, 28, 28), 0.5).shape == (2, 10)
    with torch.no_grad():  # the time embedding enters: other t, other logits
        assert not torch.allclose(clf(x, 0.1), clf(x, 0.9))
        grad = classifier_log_prob_gradient(clf, x, 0.5, torch.arange(5))
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="shape"):
        clf(torch.randn(5, 64), 0.5)
    with pytest.raises(ValueError, match="shape"):
        clf(torch.randn(5, 3, 8, 8), 0.5)
    with pytest.raises(ValueError, match="width"):
        NoisyImageClassifier(1, 10, width=0)
    with pytest.raises(ValueError, match="num_classes"):
        NoisyImageClassifier(1, 1)


def test_train_noisy_classifier_on_images_learns_the_class_of_clean_and_of_noise_free_images():
    """Two classes of 8×8 images, all −1 or all +1 (plus a little noise): a few steps separate them at t = 1,
    and at t = 0 (pure noise) the classifier is near the prior."""
    from fmlib.guidance import NoisyImageClassifier, train_noisy_classifier

    def sample(n, gen):
        y = torch.randint(0, 2, (n,), generator=gen)
        return (2.0 * y - 1.0)[:, None, None, None] + 0.1 * torch.randn(n, 1, 8, 8, generator=gen), y

    run = train_noisy_classifier(_path("condot"), sample, 2, name="test-img-clf", key={"data": "±1 images"},
                                 steps=150, batch_size=64, width=8, progress=False)
    assert isinstance(run.model, NoisyImageClassifier)
    x, y = sample(200, torch.Generator().manual_seed(1))
    with torch.no_grad():
        accuracy = (run.model(x, 1.0).argmax(1) == y).double().mean()
        p0 = torch.softmax(run.model(torch.randn(200, 1, 8, 8), 0.0), 1)
    assert accuracy > 0.95
    assert (p0[:, 0] - 0.5).abs().mean() < 0.2
    with pytest.raises(ValueError, match="points"):
        train_noisy_classifier(_path("condot"), lambda n, g: (torch.zeros(n, 2, 2), torch.zeros(n, dtype=torch.long)),
                               2, name="bad", key={"data": "3-D"}, steps=1, progress=False)


def test_image_noisy_classifier_recipe_keys_noisy_and_clean_apart():
    from fmlib import zoo
    from fmlib.guidance import NoisyImageClassifier

    common = dict(steps=3, batch_size=8, width=4, progress=False)
    noisy = zoo.image_noisy_classifier("digits", **common)
    clean = zoo.image_noisy_classifier("digits", clean_only=True, **common)
    assert isinstance(noisy.model, NoisyImageClassifier) and noisy.key != clean.key
    assert noisy.model(torch.zeros(2, 1, 8, 8), 0.3).shape == (2, 10)
