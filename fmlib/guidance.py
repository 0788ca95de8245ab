"""Guidance for velocity fields: classifier-free and classifier guidance.

Classifier-free guidance (CFG). A model trained with labels y and, with some probability, the null label ∅
gives both v(x, t, y) and v(x, t, ∅). The guided field with scale w is

    ṽ(x, t, y) = v(x, t, ∅) + w [v(x, t, y) − v(x, t, ∅)] = (1 − w) v(x, t, ∅) + w v(x, t, y),

w = 1 is the conditional model, w = 0 the unconditional one, w > 1 extrapolates. (Ho & Salimans and Meta's
flow_matching examples write (1 + w') v(x, t, y) − w' v(x, t, ∅): their w' is this w − 1.)

Classifier guidance. For an affine Gaussian path x_t = α_t x1 + σ_t x0 (standard Gaussian source) every
marginal velocity is u_t(x) = a_t x + b_t ∇log p_t(x) with a_t = α'_t/α_t and
b_t = σ_t (α'_t σ_t − σ'_t α_t)/α_t (:func:`score_coefficient`), so by Bayes' rule

    u_t(x | y) = u_t(x) + b_t ∇_x log p_t(y | x),

and the classifier-guided field is ṽ = v(x, t) + w b_t ∇_x log p_t(y | x) with a classifier of the noisy
x_t (:class:`NoisyClassifier` for points, :class:`NoisyImageClassifier` for images, :func:`train_noisy_classifier`). With exact fields both guided fields agree for
every w.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import as_time, check_batched, check_positive_int, check_real, expand_like
from .models import SinusoidalTimeEmbedding
from .paths import AffinePath
from .train import TrainConfig, TrainResult, train

__all__ = ["guided_velocity", "GuidedField", "drop_labels", "score_coefficient", "classifier_log_prob_gradient",
           "ClassifierGuidedField", "NoisyClassifier", "NoisyImageClassifier", "train_noisy_classifier"]


def _check_null_label(null_label: object) -> int:
    if isinstance(null_label, bool) or not isinstance(null_label, numbers.Integral) or null_label < 0:
        raise ValueError(f"null_label must be a non-negative int (the model's index of ∅), got {null_label!r}")
    return int(null_label)


def _null_label_of(model: object, null_label: object) -> int:
    """``null_label`` checked, or the model's own ``model.null_label`` when ``null_label`` is None."""
    if null_label is None:
        null_label = getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError(f"{type(model).__name__} has no null label (an unconditional model, or no "
                             "`null_label` attribute): build it with num_classes=K or pass null_label=")
    return _check_null_label(null_label)


def _check_labels(y: Tensor, batch: int | None = None) -> Tensor:
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        kind = y.dtype if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"labels y must be an integer tensor, got {kind}")
    if y.dim() != 1 or (batch is not None and y.shape[0] != batch):
        want = f"[{batch}]" if batch is not None else "[B]"
        raise ValueError(f"labels y must have shape {want}, got {tuple(y.shape)}")
    return y.long()


def guided_velocity(model: nn.Module, x: Tensor, t: Tensor, y: Tensor, *, scale: float,
                    null_label: int | None = None) -> Tensor:
    """(1 − w) v(x, t, ∅) + w v(x, t, y) with w = ``scale``; ``y`` [B] long, ``null_label`` the index of ∅
    (default: the model's ``null_label``, e.g. :attr:`fmlib.models.MLP.null_label`).

    Shapes: x [B, ...], t a number, 0-d or [B] tensor, y [B] → [B, ...]. For w ∉ {0, 1} the conditional and
    unconditional velocities come from one model call on the doubled batch [x; x] with labels [y; ∅]
    (one network evaluation of batch 2B); w = 1 returns v(x, t, y) and w = 0 returns v(x, t, ∅) exactly,
    with a single call of batch B.

    Raises:
        ValueError: non-finite scale, negative or non-int null_label (or none given and the model has none),
            y not an integer [B] tensor.
    """
    w = check_real(scale, "scale")
    null_label = _null_label_of(model, null_label)
    check_batched(x, name="x", min_dim=1)
    batch = x.shape[0]
    y = _check_labels(y, batch).to(x.device)
    t = as_time(t, batch, like=x)
    null = torch.full_like(y, null_label)
    if w == 1.0:
        return model(x, t, y)
    if w == 0.0:
        return model(x, t, null)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    conditional, unconditional = both[:batch], both[batch:]
    return unconditional + w * (conditional - unconditional)


class GuidedField:
    """A velocity field ``(x, t) -> ṽ`` with fixed labels and scale, for :func:`fmlib.solvers.solve_ode`.

    ṽ(x, t) = (1 − w) v(x, t, ∅) + w v(x, t, y) via :func:`guided_velocity`. ``y`` [B] integer labels (a 0-d
    tensor or an int is used for every sample of the batch); they are moved to x's device on each call.
    ``null_label`` defaults to the model's. Each call is one model evaluation (of batch 2B for w ∉ {0, 1}),
    so :func:`fmlib.solvers.solve_ode` counts NFE in network calls, not in velocities of batch B.
    """

    def __init__(self, model: nn.Module, y: Tensor | int, *, scale: float, null_label: int | None = None) -> None:
        self.model = model
        self.y = _fixed_labels(y)
        self.scale = check_real(scale, "scale")
        self.null_label = _null_label_of(model, null_label)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.y.expand(x.shape[0]) if self.y.dim() == 0 else self.y
        return guided_velocity(self.model, x, t, y, scale=self.scale, null_label=self.null_label)


def drop_labels(y: Tensor, *, p: float, null_label: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (classifier-free guidance training).

    Returns a new tensor of y's shape and dtype: y_i' = ∅ if U_i < p else y_i, U_i ~ U[0, 1) independent
    (drawn with ``generator`` on its own device, then moved to y's). p = 0 keeps every label, p = 1 drops all.

    Raises:
        ValueError: p not a number in [0, 1], negative or non-int null_label, y not an integer tensor.
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    null_label = _check_null_label(null_label)
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels y must be an integer tensor, got {y.dtype if torch.is_tensor(y) else type(y)}")
    draw_device = generator.device if generator is not None else y.device
    u = torch.rand(y.shape, generator=generator, device=draw_device).to(y.device)
    return torch.where(u < p, torch.full_like(y, null_label), y)


# ------------------------------------------------------------------------------------- classifier guidance

def score_coefficient(path: AffinePath, t: float | Tensor, *, like: Tensor) -> Tensor:
    """b_t = σ_t (α'_t σ_t − σ'_t α_t) / α_t, the coefficient of the score in u_t(x) = a_t x + b_t ∇log p_t(x).

    Read off :meth:`fmlib.paths.AffinePath.velocity_from_score` (the one place of the formula), as the velocity
    of the score 1 at x = 0. Linear path α_t = t, σ_t = 1 − t: b_t = (1 − t)/t. Shapes: ``like`` [B, ...]
    gives B, dtype and device; t a number, 0-d or [B] → [B].

    Raises:
        ValueError: α_t = 0 (t = 0 for the usual paths), where b_t is infinite: start a guided solve at t > 0.
    """
    check_batched(like, name="like", min_dim=1)
    ones = like.new_ones(like.shape[0], 1)
    return path.velocity_from_score(torch.zeros_like(ones), ones, t).reshape(-1)


def classifier_log_prob_gradient(classifier: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: float | Tensor,
                                 y: Tensor) -> Tensor:
    """∇_x log p_t(y | x) with log p_t(· | x) = log_softmax(classifier(x, t)), by autograd; shape of ``x``.

    ``classifier(x, t)`` returns logits [B, C] (log-probabilities work too: log_softmax leaves them as they
    are). Shapes: x [B, ...], t a number, 0-d or [B], y [B] integer labels in 0..C − 1. Works under
    ``torch.no_grad()``; the result is detached.

    Raises:
        ValueError: y not an integer [B] tensor, labels outside 0..C − 1, logits not [B, C].
    """
    check_batched(x, name="x", min_dim=1)
    batch = x.shape[0]
    y = _check_labels(y, batch).to(x.device)
    t = as_time(t, batch, like=x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = classifier(xg, t)
        if logits.dim() != 2 or logits.shape[0] != batch:
            raise ValueError(f"classifier(x, t) must return logits [{batch}, C], got {tuple(logits.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
            raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1} (the classifier's classes), got "
                             f"values in [{int(y.min())}, {int(y.max())}]")
        log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(log_p, xg)
    return grad.detach()


class ClassifierGuidedField:
    """ṽ(x, t) = v(x, t) + w b_t ∇_x log p_t(y | x): classifier guidance of a velocity field, for
    :func:`fmlib.solvers.solve_ode`.

    ``velocity(x, t)`` is the unconditional field, ``classifier(x, t)`` gives logits [B, C] of the noisy x_t,
    b_t is :func:`score_coefficient` of ``path`` (the path the velocity was trained on). ``y`` as in
    :class:`GuidedField`. One call costs one velocity evaluation and one classifier forward and backward pass
    (``classifier_calls`` counts them). b_t is infinite where α_t = 0, so solve from ``t_start > 0``.
    """

    def __init__(self, velocity: Callable[[Tensor, Tensor], Tensor], classifier: Callable[[Tensor, Tensor], Tensor],
                 path: AffinePath, y: Tensor | int, *, scale: float) -> None:
        if not isinstance(path, AffinePath):
            raise TypeError(f"path must be a fmlib.paths.AffinePath, got {type(path).__name__}")
        self.velocity, self.classifier, self.path = velocity, classifier, path
        self.y = _fixed_labels(y)
        self.scale = check_real(scale, "scale")
        self.classifier_calls = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        y = self.y.expand(x.shape[0]) if self.y.dim() == 0 else self.y
        v = self.velocity(x, t)
        if self.scale == 0.0:
            return v
        self.classifier_calls += 1
        grad = classifier_log_prob_gradient(self.classifier, x, t, y)
        b = score_coefficient(self.path, t, like=x)
        return v + self.scale * expand_like(b, x) * grad


class NoisyClassifier(nn.Module):
    """A classifier of noisy points: logits f(x_t, t) [B, C] for x [B, D], t in [0, 1].

    f(x, t) = W_out σ(… σ(W_1 [x, e(t)] + b_1) …) + b_out, σ = SiLU, e(t) the sinusoidal time embedding of
    :class:`fmlib.models.SinusoidalTimeEmbedding`. Trained by :func:`train_noisy_classifier`.

    Raises:
        ValueError: non-positive sizes, fewer than 2 classes; in ``forward``: x not [B, dim], bad t.
    """

    def __init__(self, dim: int, num_classes: int, *, hidden: int = 128, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_dim", time_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_num_classes(num_classes)
        self.dim, self.num_classes = int(dim), int(num_classes)
        self.time_emb = SinusoidalTimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(dim + time_dim if i == 0 else hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x [B, dim], t (number, 0-d or [B]) in [0, 1] → logits [B, num_classes]."""
        check_batched(x, name="x", min_dim=2)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"NoisyClassifier expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        t = as_time(t, x.shape[0], like=x)
        return self.net(torch.cat([x, self.time_emb(t)], dim=1))


class NoisyImageClassifier(nn.Module):
    """A classifier of noisy images: logits f(x_t, t) [B, C] for x [B, C_in, H, W] (H, W ≥ 4), t in [0, 1].

    Three 3×3 convolutions of ``width``, 2·``width`` and 2·``width`` channels (the last two of stride 2), each
    followed by a per-channel shift W_i e(t) + b_i of the sinusoidal time embedding e(t)
    (:class:`fmlib.models.SinusoidalTimeEmbedding`) and SiLU; average pooling to 2×2, flatten, a linear map to
    the logits. Trained by :func:`train_noisy_classifier` on images.

    Raises:
        ValueError: non-positive sizes, fewer than 2 classes; in ``forward``: x not [B, in_channels, H, W] with
            H, W ≥ 4, bad t.
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 32, time_dim: int = 32) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("width", width), ("time_dim", time_dim)):
            check_positive_int(value, name)
        _check_num_classes(num_classes)
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        widths = (width, 2 * width, 2 * width)
        self.time_emb = SinusoidalTimeEmbedding(time_dim)
        self.convs = nn.ModuleList([nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1) for c_in, c_out, stride in
                                    zip((in_channels, *widths[:-1]), widths, (1, 2, 2))])
        self.shifts = nn.ModuleList([nn.Linear(time_dim, c) for c in widths])
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(4 * widths[-1], num_classes)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x [B, in_channels, H, W], t (number, 0-d or [B]) in [0, 1] → logits [B, num_classes]."""
        check_batched(x, name="x", min_dim=4)
        if x.dim() != 4 or x.shape[1] != self.in_channels or min(x.shape[2:]) < 4:
            raise ValueError(f"NoisyImageClassifier expects x of shape [B, {self.in_channels}, H, W] with H, W ≥ 4, "
                             f"got {tuple(x.shape)}")
        emb = self.time_emb(as_time(t, x.shape[0], like=x))
        h = x
        for conv, shift in zip(self.convs, self.shifts):
            h = torch.nn.functional.silu(conv(h) + shift(emb)[:, :, None, None])
        return self.head(self.pool(h).flatten(1))


def train_noisy_classifier(path: AffinePath, sample_data: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
                           num_classes: int, *, name: str, key: Mapping[str, Any], clean_only: bool = False,
                           steps: int = 2000, batch_size: int = 256, lr: float = 2e-3, hidden: int = 128,
                           depth: int = 3, width: int = 32, seed: int = 0, progress: bool = True) -> TrainResult:
    """Train (or load) a :class:`NoisyClassifier` (points [n, D]: ``hidden``, ``depth``) or a
    :class:`NoisyImageClassifier` (images [n, C, H, W]: ``width``) by cross-entropy on points of the path:

        min E_{t, (x1, y), x0} [ −log softmax(f(x_t, t))_y ],  x_t = α_t x1 + σ_t x0, t ~ U[0, 1), x0 ~ N(0, I),

    whose minimiser is log p_t(y | x_t) (up to a constant per x). ``clean_only=True`` trains on the data
    alone (t ≡ 1, x_t = x1): the classifier of clean data that classifier guidance must *not* use on noisy
    points. ``sample_data(n, generator)`` returns (x1 [n, D], y [n] in 0..C − 1); ``key`` must describe it
    (it enters the checkpoint cache key with the path and ``clean_only``).

    Returns:
        The trainer's :class:`fmlib.train.TrainResult`; ``result.model(x, t)`` gives logits.
    """
    from . import runtime
    from .losses import sample_time

    if not isinstance(path, AffinePath):
        raise TypeError(f"path must be a fmlib.paths.AffinePath, got {type(path).__name__}")
    probe_x, probe_y = sample_data(2, torch.Generator().manual_seed(0))
    check_batched(probe_x, name="sample_data(n)[0]", min_dim=2)
    _check_labels(probe_y, probe_x.shape[0])
    if probe_x.dim() not in (2, 4):
        raise ValueError(f"sample_data(n)[0] must be points [n, D] or images [n, C, H, W], got "
                         f"{tuple(probe_x.shape)}")
    runtime.seed_everything(seed)
    model: nn.Module
    if probe_x.dim() == 2:
        model = NoisyClassifier(probe_x.shape[1], num_classes, hidden=hidden, depth=depth)
    else:
        model = NoisyImageClassifier(probe_x.shape[1], num_classes, width=width)

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> Tensor:
        device = next(m.parameters()).device
        x1, y = sample_data(batch, g)
        x1, y = x1.to(device), _check_labels(y, batch).to(device)
        if clean_only:
            x_t, t = x1, torch.ones(batch, device=device, dtype=x1.dtype)
        else:
            t = sample_time(batch, generator=g, dtype=x1.dtype).to(device)
            x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype).to(device)
            x_t = path.sample(x0, x1, t).x_t
        return torch.nn.functional.cross_entropy(m(x_t, t), y)

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, amp=False)
    full_key = {"what": "fmlib.guidance.NoisyClassifier", "path": path.config(), "clean_only": bool(clean_only),
                "data": dict(key)}
    return train(model, loss_fn, config, name=name, key=full_key, progress=progress)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an int ≥ 2, got {num_classes!r}")
    return int(num_classes)


def _fixed_labels(y: Tensor | int) -> Tensor:
    """An int or a 0-d / [B] integer tensor of labels, checked (shared by the guided fields)."""
    if not torch.is_tensor(y):
        if isinstance(y, bool) or not isinstance(y, numbers.Integral):
            raise ValueError(f"labels y must be an int or an integer tensor, got {type(y).__name__}")
        y = torch.tensor(int(y))
    if y.dim() > 1:
        raise ValueError(f"labels y must be 0-d or have shape [B], got {tuple(y.shape)}")
    return _check_labels(y.reshape(-1)).reshape(y.shape)
