"""fmlib.losses: hand computations, weighting, reductions, errors, time sampling, the one training loss, and
L_CFM(u_t) = E Var[U | X_t] / D with the exact marginal velocity."""

from __future__ import annotations

import math

import pytest
import torch

from fmlib import analytic, losses, paths
from _slow_copy import SlowCopy
from fmlib._readback import ReadbackCounter

PATH = paths.AffinePath(paths.CondOTScheduler())


def small_sample() -> paths.PathSample:
    x0 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    x1 = torch.tensor([[2.0, 2.0], [-1.0, 1.0]])
    return PATH.sample(x0, x1, torch.tensor([0.5, 0.25]))


def test_per_sample_squared_error_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(losses.per_sample_squared_error(pred, target), torch.tensor([13 / 3, 1.0]))
    images = torch.ones(2, 1, 4, 4)
    torch.testing.assert_close(losses.per_sample_squared_error(images, 0 * images), torch.ones(2))
    torch.testing.assert_close(losses.per_sample_squared_error(torch.tensor([1.0, 3.0]), torch.zeros(2)),
                               torch.tensor([1.0, 9.0]))
    with pytest.raises(ValueError, match="shapes must match"):
        losses.per_sample_squared_error(pred, target[:, :2])


def test_cfm_loss_by_hand_on_the_linear_path():
    sample = small_sample()
    # targets x1 - x0 = [[1, 2], [-1, 2]]; predictions zero -> per-sample (1 + 4)/2, (1 + 4)/2
    pred = torch.zeros(2, 2)
    torch.testing.assert_close(losses.cfm_loss(pred, sample, PATH), torch.tensor(2.5))
    pred = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(losses.cfm_loss(pred, sample, PATH, reduction="none"), torch.tensor([2.0, 2.5]))
    # x1-prediction against x1, score against -x0 / (1 - t)
    torch.testing.assert_close(losses.cfm_loss(torch.zeros(2, 2), sample, PATH, parametrization="x1"),
                               torch.tensor((8 / 2 + 2 / 2) / 2))
    score = -sample.x0 / torch.tensor([[0.5], [0.75]])
    torch.testing.assert_close(losses.cfm_loss(torch.zeros(2, 2), sample, PATH, parametrization="score"),
                               (score**2).mean(1).mean())


@pytest.mark.parametrize("parametrization", paths.PARAMETRIZATIONS)
@pytest.mark.parametrize("scheduler", ["condot", "vp", "ve", "cosine"])
def test_cfm_loss_is_zero_for_the_exact_target(parametrization, scheduler, generator):
    path = paths.AffinePath(paths.get_scheduler(scheduler))
    x0, x1 = torch.randn(2, 16, 3, generator=generator)
    sample = path.sample(x0, x1, torch.rand(16, generator=generator) * 0.99)
    exact = {"velocity": sample.dx_t, "x0": x0, "epsilon": x0, "x1": x1,
             "score": -x0 / path.scheduler(sample.t).sigma[:, None]}[parametrization]
    loss = losses.cfm_loss(exact, sample, path, parametrization=parametrization, reduction="none")
    assert loss.shape == (16,) and torch.all(loss == 0)


def test_weighting_scales_each_sample():
    sample, pred = small_sample(), torch.zeros(2, 2)
    plain = losses.cfm_loss(pred, sample, PATH, reduction="none")
    weighted = losses.cfm_loss(pred, sample, PATH, weighting=lambda t: 1 / t, reduction="none")
    torch.testing.assert_close(weighted, plain / sample.t)
    doubled = losses.cfm_loss(pred, sample, PATH, weighting=lambda t: torch.full_like(t, 2.0))
    torch.testing.assert_close(doubled, 2 * plain.mean())
    with pytest.raises(ValueError, match="negative"):
        losses.cfm_loss(pred, sample, PATH, weighting=lambda t: t - 0.4)
    with pytest.raises(ValueError, match="shape"):
        losses.cfm_loss(pred, sample, PATH, weighting=lambda t: t[:1])


def test_reductions():
    sample, pred = small_sample(), torch.tensor([[0.5, 1.0], [-2.0, 0.0]])
    none = losses.cfm_loss(pred, sample, PATH, reduction="none")
    assert none.shape == (2,)
    torch.testing.assert_close(losses.cfm_loss(pred, sample, PATH, reduction="sum"), none.sum())
    torch.testing.assert_close(losses.cfm_loss(pred, sample, PATH, reduction="mean"), none.mean())
    with pytest.raises(ValueError, match="reduction"):
        losses.cfm_loss(pred, sample, PATH, reduction="max")


def test_cfm_loss_errors():
    sample = small_sample()
    with pytest.raises(FloatingPointError):
        losses.cfm_loss(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]), sample, PATH)
    with pytest.raises(FloatingPointError):
        losses.cfm_loss(torch.tensor([[float("inf"), 0.0], [0.0, 0.0]]), sample, PATH, reduction="none")
    with pytest.raises(ValueError, match="shapes must match"):
        losses.cfm_loss(torch.zeros(2, 3), sample, PATH)
    with pytest.raises(ValueError, match="parametrization"):
        losses.cfm_loss(torch.zeros(2, 2), sample, PATH, parametrization="noise")
    at_one = PATH.sample(sample.x0, sample.x1, 1.0)
    with pytest.raises(ValueError, match="σ_t"):      # score target −x0/σ_t at σ_t = 0
        losses.cfm_loss(torch.zeros(2, 2), at_one, PATH, parametrization="score")


def test_cfm_loss_gradient_flows_to_the_prediction():
    sample = small_sample()
    pred = torch.zeros(2, 2, requires_grad=True)
    losses.cfm_loss(pred, sample, PATH).backward()
    torch.testing.assert_close(pred.grad, -2 * sample.dx_t / (2 * 2))


# --------------------------------------------------------------------------------------------- sample_time


def test_sample_time_range_shape_and_reproducibility():
    t = losses.sample_time(1000, generator=torch.Generator().manual_seed(0), t_min=0.2, t_max=0.7)
    assert t.shape == (1000,) and t.dtype == torch.get_default_dtype()
    assert t.min() >= 0.2 and t.max() <= 0.7 and abs(t.mean().item() - 0.45) < 0.02
    again = losses.sample_time(1000, generator=torch.Generator().manual_seed(0), t_min=0.2, t_max=0.7)
    assert torch.equal(t, again)
    assert losses.sample_time(4, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(batch=0), "batch"), (dict(batch=4, t_min=0.5, t_max=0.5), "t_min"), (dict(batch=4, t_max=1.5), "t_max"),
    (dict(batch=4, t_min=-0.1), "t_min"), (dict(batch=4, t_max=float("nan")), "finite"),
])
def test_sample_time_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.sample_time(**kwargs)


# ---------------------------------------------------------------------------- conditional_flow_matching_loss


class Recorder(torch.nn.Module):
    """Returns a fixed function of (x, t) and remembers its inputs."""

    def __init__(self, fn=None) -> None:
        super().__init__()
        self.fn = fn or (lambda x, t: torch.zeros_like(x))
        self.calls: list[tuple] = []

    def forward(self, x, t, *rest):
        self.calls.append((x, t, *rest))
        return self.fn(x, t)


def test_loss_with_given_x0_and_t_equals_cfm_loss(generator):
    x0, x1 = torch.randn(2, 8, 2, generator=generator)
    t = torch.rand(8, generator=generator)
    model = Recorder(lambda x, tt: 0.5 * x)
    loss = losses.conditional_flow_matching_loss(model, PATH, x1, x0=x0, t=t)
    sample = PATH.sample(x0, x1, t)
    torch.testing.assert_close(loss, losses.cfm_loss(0.5 * sample.x_t, sample, PATH))
    (x_seen, t_seen), = model.calls
    torch.testing.assert_close(x_seen, sample.x_t)
    torch.testing.assert_close(t_seen, t)


def test_loss_draws_reproducibly_from_the_generator(generator):
    x1 = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    model = Recorder()
    a = losses.conditional_flow_matching_loss(model, PATH, x1, generator=torch.Generator().manual_seed(5))
    b = losses.conditional_flow_matching_loss(model, PATH, x1, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item() and a.dtype == torch.float64
    assert model.calls[0][1].shape == (8,) and model.calls[0][1].dtype == torch.float64
    # drawn in order t, then x0 ~ N(0, I) like x1
    g = torch.Generator().manual_seed(5)
    t = losses.sample_time(8, generator=g, dtype=torch.float64)
    x0 = torch.randn(x1.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(a, losses.cfm_loss(torch.zeros_like(x1), PATH.sample(x0, x1, t), PATH))


def test_labels_are_passed_to_the_model_only_when_given(generator):
    x1 = torch.randn(4, 2, generator=generator)
    y = torch.tensor([0, 1, 2, 1])
    model = Recorder()
    losses.conditional_flow_matching_loss(model, PATH, x1, y=y, generator=generator)
    losses.conditional_flow_matching_loss(model, PATH, x1, t=0.3, generator=generator)
    assert len(model.calls[0]) == 3 and model.calls[0][2] is y
    assert len(model.calls[1]) == 2 and torch.all(model.calls[1][1] == 0.3)


def test_loss_parametrization_weighting_and_reduction_are_forwarded(generator):
    x0, x1 = torch.randn(2, 6, 2, generator=generator)
    t = torch.rand(6, generator=generator) * 0.9
    model = Recorder()
    per = losses.conditional_flow_matching_loss(model, PATH, x1, x0=x0, t=t, parametrization="x1",
                                                weighting=lambda tt: tt, reduction="none")
    torch.testing.assert_close(per, t * (x1**2).mean(1))
    with pytest.raises(ValueError, match="shapes must match"):
        losses.conditional_flow_matching_loss(model, PATH, x1, x0=x0[:, :1])
    with pytest.raises(FloatingPointError):
        losses.conditional_flow_matching_loss(Recorder(lambda x, tt: x * float("nan")), PATH, x1)


@pytest.mark.parametrize("scheduler", ["condot", "cosine"])
def test_loss_of_the_exact_marginal_velocity_is_the_expected_conditional_variance(scheduler, generator):
    """L_CFM(u_t) = E[‖u_t(X_t) − U‖²]/D = E[Var[U | X_t]]/D: per sample, loss − Var/D has mean zero."""
    path = paths.AffinePath(paths.get_scheduler(scheduler))
    mix = analytic.GaussianMixture(means=torch.tensor([[-2.0, 0.5], [1.5, -1.0]], dtype=torch.float64),
                                   stds=torch.tensor([0.3, 0.6], dtype=torch.float64),
                                   weights=torch.tensor([0.4, 0.6], dtype=torch.float64))
    field = analytic.MarginalField(path, mix)
    n = 20000
    model = Recorder(field.velocity)
    x1 = mix.sample(n, generator=generator)
    x0 = torch.randn(x1.shape, generator=generator, dtype=torch.float64)
    t = losses.sample_time(n, generator=generator, t_max=0.99, dtype=torch.float64)
    per = losses.conditional_flow_matching_loss(model, path, x1, x0=x0, t=t, reduction="none")
    x_t, t_seen = model.calls[0]
    diff = per - field.conditional_velocity_variance(x_t, t_seen) / mix.dim
    se = diff.std() / math.sqrt(n)
    assert abs(diff.mean().item()) < 4 * se.item(), (diff.mean().item(), se.item())
    # a shifted field v = u_t + c pays E‖v − u_t‖²/D = c² more (the cross term has mean zero)
    c = 0.3
    shifted = losses.conditional_flow_matching_loss(Recorder(lambda x, tt: field.velocity(x, tt) + c), path, x1,
                                                    x0=x0, t=t, reduction="none")
    gap = shifted - per
    assert abs(gap.mean().item() - c**2) < 4 * gap.std().item() / math.sqrt(n)


def test_integer_data_gets_a_clear_error():
    from fmlib import losses, models, paths

    path = paths.AffinePath(paths.CondOTScheduler())
    with pytest.raises(ValueError, match="floating-point"):
        losses.conditional_flow_matching_loss(models.MLP(hidden=8, depth=1), path, torch.ones(4, 2, dtype=torch.long))


def test_times_the_loss_trusts_stay_trusted_only_inside_it():
    # inside the loss the path and the model skip their time scans; the trust must not leak out of it
    from fmlib import losses, models, paths

    path = paths.AffinePath(paths.CondOTScheduler())
    model = models.MLP(hidden=8, depth=1)
    losses.conditional_flow_matching_loss(model, path, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.randn(4, 2), 1.5)
    with pytest.raises(ValueError):  # a time the caller gives is still checked, once
        losses.conditional_flow_matching_loss(model, path, torch.randn(4, 2), t=torch.full((4,), 2.0))
    with pytest.raises(FloatingPointError):  # outside the trainer the loss checks its own finiteness
        losses.conditional_flow_matching_loss(model, path, torch.full((4, 2), float("inf")))


def test_drawn_time_range_of_the_loss():
    from fmlib import losses, paths

    seen = []

    def model(x, t):
        seen.append(t.clone())
        return x * 0 + t[:, None]

    path = paths.AffinePath(paths.CondOTScheduler())
    losses.conditional_flow_matching_loss(model, path, torch.randn(512, 2), t_min=0.25, t_max=0.5)
    assert 0.25 <= float(seen[0].min()) and float(seen[0].max()) <= 0.5
    with pytest.raises(ValueError, match="t_max"):
        losses.conditional_flow_matching_loss(model, path, torch.randn(8, 2), t_min=0.5, t_max=0.25)


@pytest.fixture
def as_on_an_accelerator(monkeypatch):
    """The loss's finiteness check as it runs on CUDA/MPS (deferred), here on the CPU."""
    losses.check_deferred_losses()  # start from a clean slate
    monkeypatch.setattr(losses, "_CHECK_AT_ONCE", frozenset())
    yield
    losses._DEFERRED.worst.clear()
    losses._DEFERRED.pending.clear()
    losses._DEFERRED.sent = losses._DEFERRED.calls


def test_on_an_accelerator_a_user_loop_never_waits_for_the_device_and_names_the_bad_calls(as_on_an_accelerator):
    from fmlib import models

    model = models.MLP(hidden=8, depth=1)
    x1 = torch.randn(16, 2)
    first = losses._DEFERRED.calls + 1
    with ReadbackCounter() as readbacks:
        for _ in range(losses.CHECK_EVERY):  # the last call sends the maxima to the host and checks them
            losses.conditional_flow_matching_loss(model, PATH, x1)
    assert readbacks.count == 0  # no host sync: the check reads a HostCopy, which does not block on CUDA
    for _ in range(29):
        losses.conditional_flow_matching_loss(model, PATH, x1)
    bad = losses.conditional_flow_matching_loss(model, PATH, torch.full((16, 2), float("nan")))  # no error yet
    assert torch.isnan(bad)
    start = first + losses.CHECK_EVERY
    with pytest.raises(FloatingPointError, match=rf"calls {start}\.\.{start + losses.CHECK_EVERY - 1} .*every "
                                                 rf"{losses.CHECK_EVERY} calls"):
        for _ in range(losses.CHECK_EVERY):
            losses.conditional_flow_matching_loss(model, PATH, x1)
    with pytest.raises(FloatingPointError, match="not finite"):  # at once, on request; per-sample losses too
        losses.cfm_loss(torch.tensor([[float("inf"), 0.0], [0.0, 0.0]]), small_sample(), PATH, reduction="none")
        losses.check_deferred_losses()
    losses.check_deferred_losses()  # nothing pending: no error


def test_the_loss_is_bit_identical_whether_its_check_is_deferred_or_not(monkeypatch):
    def loss(seed):
        g = torch.Generator().manual_seed(seed)
        return losses.conditional_flow_matching_loss(lambda x, t: 0.5 * x, PATH, torch.randn(32, 1, 4, 4,
                                                     generator=g), generator=g)

    now = loss(3)
    monkeypatch.setattr(losses, "_CHECK_AT_ONCE", frozenset())
    assert torch.equal(now, loss(3))
    losses.check_deferred_losses()


def test_on_a_slow_accelerator_the_deferred_check_reads_each_copy_once_it_has_arrived(as_on_an_accelerator,
                                                                                    monkeypatch):
    from fmlib import models

    monkeypatch.setattr(losses, "HostCopy", SlowCopy)  # one interval behind
    model = models.MLP(hidden=8, depth=1)
    x1 = torch.randn(16, 2)
    first = losses._DEFERRED.calls + 1
    losses.conditional_flow_matching_loss(model, PATH, torch.full((16, 2), float("nan")))  # in the first interval
    with ReadbackCounter() as readbacks:
        for _ in range(2 * losses.CHECK_EVERY - 2):  # the first interval's copy is sent, not yet arrived
            losses.conditional_flow_matching_loss(model, PATH, x1)
        assert readbacks.count == 0
        with pytest.raises(FloatingPointError, match=rf"calls {first}\.\.{first + losses.CHECK_EVERY - 1} "):
            losses.conditional_flow_matching_loss(model, PATH, x1)  # the second send: the first copy has arrived
    assert readbacks.count == 0
    losses.conditional_flow_matching_loss(model, PATH, x1)
    with ReadbackCounter() as readbacks:
        losses.check_deferred_losses()  # on request: sends and waits
    assert readbacks.count == 1  # a wait for the copy it has just sent (the one before has arrived)
