"""Conditional flow-matching losses.

For an affine path (see :mod:`fmlib.paths`) and a model f_θ(x, t[, y]) that predicts one of the
parametrizations (velocity, x0 = ε, x1, score), the loss is

    L(θ) = E_{t ~ U[0,1], x0 ~ p, x1 ~ q} [ w(t) · ‖f_θ(x_t, t) − target‖² / D ]

where target is dx_t = α'_t x1 + σ'_t x0 (velocity), x0, x1, or −x0/σ_t (score), D is the number of
coordinates of one sample (so the loss is a mean squared error per coordinate) and w is an optional time
weighting. With the velocity parametrization and w ≡ 1 this is the CFM loss of Lipman et al. (2023) divided by D.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._checks import check_batched, check_choice, check_finite, check_real, check_same_shape, loss_check_is_deferred, times_checked
from ._readback import HostCopy
from .paths import PARAMETRIZATIONS, AffinePath, PathSample, batch_time

__all__ = ["per_sample_squared_error", "cfm_loss", "conditional_flow_matching_loss", "sample_time", "cfm_loss_fn",
           "check_deferred_losses", "CHECK_EVERY"]

TimeWeighting = Callable[[Tensor], Tensor]
"""A function t [B] ↦ w(t) [B] ≥ 0."""

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def per_sample_squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """‖pred − target‖² / D for each sample: shape [B] from two [B, ...] tensors of equal shape.

    D is the number of entries of one sample (1 for [B] inputs), so this is a per-sample mean over coordinates.

    Raises:
        ValueError: different shapes, or no batch axis.
    """
    check_batched(pred, name="pred", min_dim=1)
    check_same_shape(pred=pred, target=target)
    squared = (pred - target).square()
    return (squared if squared.dim() == 2 else squared.reshape(pred.shape[0], -1)).mean(dim=1)


CHECK_EVERY = 100
"""Outside :func:`fmlib.train.train`, a loss on an accelerator is checked for NaN/inf every this many calls."""

_CHECK_AT_ONCE = frozenset({"cpu"})
"""Device types whose losses are checked in the call itself (reading a CPU tensor is no host synchronisation)."""


class _DeferredCheck:
    """The running maximum, on the device, of the losses computed outside the trainer on an accelerator since
    the last check (one 0-d tensor per device and dtype; NaN propagates through the maximum, and the losses
    are ≥ 0, so the maximum is finite exactly when every loss was). Every :data:`CHECK_EVERY` calls the maxima
    start on their way to the host (:class:`fmlib._readback.HostCopy`, no host sync) and are checked once they
    have arrived, at that call or a later one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worst: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.calls = 0    # losses noted so far in this process
        self.sent = 0     # of which on their way to the host or checked
        self.pending: list[tuple[int, int, list[tuple[torch.device, HostCopy]]]] = []  # (first, last, copies)

    def note(self, loss: Tensor) -> None:
        """Fold ``loss`` (0-d or [B]) into the maximum: one or two operators, no host sync; every
        :data:`CHECK_EVERY` calls, send the maxima to the host and check those that have arrived."""
        with self.lock, torch.no_grad():
            value = loss if loss.dim() == 0 else loss.max()
            key = (value.device, value.dtype)
            worst = self.worst.get(key)
            if worst is None:
                self.worst[key] = value.clone()
            else:
                torch.maximum(worst, value, out=worst)
            self.calls += 1
            if self.calls - self.sent >= CHECK_EVERY:
                self._send()
            arrived = self._take(wait=False)
        self._raise(arrived)

    def check(self) -> None:
        """Send the maxima not yet sent, wait for every copy (a host sync per device) and raise
        ``FloatingPointError`` naming the calls they cover if one is NaN or infinite."""
        with self.lock:
            self._send()
            arrived = self._take(wait=True)
        self._raise(arrived)

    def _send(self) -> None:
        if self.calls > self.sent:
            copies = [(device, HostCopy(value)) for (device, _), value in self.worst.items()]
            self.pending.append((self.sent + 1, self.calls, copies))
            self.worst.clear()
            self.sent = self.calls

    def _take(self, wait: bool) -> list[tuple[int, int, list[tuple[torch.device, float]]]]:
        """Remove and read the pending copies that have arrived (all if ``wait``), oldest first."""
        arrived = []
        while self.pending and (wait or all(c.ready() for _, c in self.pending[0][2])):
            first, last, copies = self.pending.pop(0)
            arrived.append((first, last, [(device, c.tolist()) for device, c in copies]))
        return arrived

    @staticmethod
    def _raise(arrived: list[tuple[int, int, list[tuple[torch.device, float]]]]) -> None:
        for first, last, values in arrived:
            bad = sorted({str(device) for device, value in values if not math.isfinite(value)})
            if bad:
                raise FloatingPointError(
                    f"the flow-matching loss was not finite (NaN or inf) on {', '.join(bad)} in one of the calls "
                    f"{first}..{last} of fmlib.losses outside the trainer (on an accelerator the loss is checked "
                    f"every {CHECK_EVERY} calls, without a host sync; fmlib.losses.check_deferred_losses() checks "
                    "at once)")


_DEFERRED = _DeferredCheck()


def check_deferred_losses() -> None:
    """Check now the losses that :func:`cfm_loss` computed on an accelerator, outside the trainer, since the last
    check, waiting for them (one host sync per device), instead of a later :data:`CHECK_EVERY`-th call.

    Raises:
        FloatingPointError: one of them was NaN or infinite (the message names the range of calls).
    """
    _DEFERRED.check()


def _check_loss_finite(loss: Tensor, parametrization: str) -> None:
    """The finiteness check of a loss (0-d, or [B] for ``reduction="none"``) computed outside the trainer: at once
    on the CPU (one read-back of a 0-d loss), deferred on an accelerator (see :class:`_DeferredCheck`)."""
    if loss.device.type not in _CHECK_AT_ONCE:
        _DEFERRED.note(loss)
    elif loss.dim() == 0:
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the flow-matching loss ({parametrization} parametrization) is not finite "
                                     "(NaN or inf)")
    else:
        check_finite(loss, what=f"the flow-matching loss ({parametrization} parametrization)")


def cfm_loss(
    pred: Tensor,
    sample: PathSample,
    path: AffinePath,
    *,
    parametrization: str = "velocity",
    weighting: TimeWeighting | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The flow-matching loss of a model output ``pred`` [B, ...] against the target of ``parametrization``.

    Per sample ℓ_b = w(t_b) ‖pred_b − target_b‖² / D with target = ``path.target(sample, parametrization)``
    (dx_t, x0 = ε, x1 or −x0/σ_t) and w ≡ 1 without ``weighting``.

    reduction: ``"mean"`` (scalar, mean over the batch), ``"sum"`` or ``"none"`` ([B]).

    Non-finite losses: inside :func:`fmlib.train.train` the check is left to the trainer, which reads its
    losses back every few steps. Elsewhere a loss on the CPU is checked in this call (a CPU read-back is no host
    sync) and raises at once; a loss on an accelerator (CUDA, MPS) is folded into a running maximum on the
    device, sent to the host every :data:`CHECK_EVERY` calls without blocking and checked once it has arrived
    (on CUDA, at a later call), so a user's training loop never waits for the device and still stops with a
    ``FloatingPointError`` that names the range of calls (:func:`check_deferred_losses` checks at once).

    Raises:
        ValueError: shape mismatch, unknown parametrization or reduction, negative weights.
        FloatingPointError: the loss is NaN or infinite (on an accelerator: one of the last
            :data:`CHECK_EVERY` losses was).
    """
    if weighting is None and reduction == "mean" and parametrization == "velocity":
        # the common case, once per training step: mean_b ‖pred_b − target_b‖² / D is the mean over all B·D
        # entries (every sample has D of them), one reduction instead of two, forward and backward
        target = sample.dx_t
        if not (torch.is_tensor(pred) and pred.shape == target.shape):
            check_batched(pred, name="pred", min_dim=1)
            check_same_shape(pred=pred, target=target)
        loss = (pred - target).square().mean()
        if not loss_check_is_deferred():
            _check_loss_finite(loss, parametrization)
        return loss
    check_choice(parametrization, PARAMETRIZATIONS, what="parametrization")
    check_choice(reduction, REDUCTIONS, what="reduction")
    target = path.target(sample, parametrization)
    per_sample = per_sample_squared_error(pred, target)
    if weighting is not None:
        w = weighting(sample.t)
        if not torch.is_tensor(w) or tuple(w.shape) != tuple(sample.t.shape):
            shape = tuple(w.shape) if torch.is_tensor(w) else type(w).__name__
            raise ValueError(f"weighting must return a tensor of shape {tuple(sample.t.shape)}, got {shape}")
        if bool((w < 0).any()):
            raise ValueError("weighting returned negative weights")
        per_sample = w.to(per_sample.dtype) * per_sample
    loss = per_sample.mean() if reduction == "mean" else per_sample.sum() if reduction == "sum" else per_sample
    if not loss_check_is_deferred():
        _check_loss_finite(loss, parametrization)
    return loss


def _check_time_range(t_min: float, t_max: float) -> tuple[float, float]:
    if type(t_min) is float and type(t_max) is float and t_min == 0.0 and t_max == 1.0:
        return t_min, t_max  # the default range (checked once per training step)
    t_min, t_max = check_real(t_min, "t_min"), check_real(t_max, "t_max")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
    return float(t_min), float(t_max)


def _generator_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    """Where to draw random numbers: the generator's device if there is one, else ``device``."""
    return generator.device if generator is not None else torch.device(device)


def sample_time(batch: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                t_min: float = 0.0, t_max: float = 1.0, dtype: torch.dtype | None = None) -> Tensor:
    """t ~ U[t_min, t_max], shape [batch]. ``0 ≤ t_min < t_max ≤ 1`` (x1- and score-targets need t_max < 1).

    Drawn as t_min + (t_max − t_min) U with U = ``torch.rand`` on the generator's device (so a CPU generator
    works for any ``device``), then moved to ``device`` in ``dtype`` (default: the default dtype).

    Raises:
        ValueError: batch not a positive int, or a bad time range.
    """
    if type(batch) is not int and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral)) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    t_min, t_max = _check_time_range(t_min, t_max)
    dtype = dtype or torch.get_default_dtype()
    where = _generator_device(generator, device)
    u = torch.rand(int(batch), generator=generator, device=where, dtype=dtype)
    if (t_min, t_max) != (0.0, 1.0):  # U[0, 1) needs no affine map (three fewer operators per step)
        u = (t_min + (t_max - t_min) * u).clamp(t_min, t_max)
    return u if where == (device if isinstance(device, torch.device) else torch.device(device)) else u.to(device)


def _check_model_device(model: nn.Module, x1: Tensor) -> None:
    """ValueError if the model's parameters are on another device than the data (looked up only when the model
    call failed or returned a tensor elsewhere: finding a parameter costs more than the check)."""
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if param is not None and param.device != x1.device:
        raise ValueError(f"the data x1 is on {x1.device} but the model is on {param.device}: move the data "
                         "with .to(device) (cfm_loss_fn does it for you)")


def conditional_flow_matching_loss(
    model: nn.Module,
    path: AffinePath,
    x1: Tensor,
    *,
    x0: Tensor | None = None,
    t: Tensor | None = None,
    y: Tensor | None = None,
    parametrization: str = "velocity",
    weighting: TimeWeighting | None = None,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    t_min: float = 0.0,
    t_max: float = 1.0,
) -> Tensor:
    """Draw (t, x0) where not given (t ~ U[t_min, t_max], x0 ~ N(0, I) like x1), form the path sample, call
    ``model(x_t, t)`` (or ``model(x_t, t, y)`` when ``y`` is given) and return :func:`cfm_loss`.

    This is the one training loss every chapter uses. Its inputs are validated here, once: the times it
    draws itself or has checked are not scanned again by the path and the model (no host sync per step on a
    GPU for the common case of drawn times; a given ``t`` costs one check).

    Shapes: x1, x0 [B, ...]; t a number, 0-d or [B]; y [B] (passed through untouched). The model is called with
    x_t [B, ...] and t [B] in x1's dtype and device. Random draws use ``generator`` on its own device (t first,
    then x0) and are moved to x1's device.

    Raises:
        ValueError: shape mismatch, bad t or time range, unknown parametrization or reduction, negative
            weights, integer data, data on another device than the model's parameters.
        FloatingPointError: the loss is NaN or infinite (on an accelerator, outside the trainer: one of the
            last :data:`CHECK_EVERY` losses was; see :func:`cfm_loss`).
    """
    check_batched(x1, name="x1", min_dim=1)
    if not x1.is_floating_point():
        raise ValueError(f"x1 must be a floating-point tensor (the data), got {x1.dtype}; convert it with "
                         ".float()")
    batch, device = x1.shape[0], x1.device
    if t is None:
        t = sample_time(batch, generator=generator, device=device, dtype=x1.dtype, t_min=t_min, t_max=t_max)
    else:
        t = batch_time(t, batch, like=x1)
    if x0 is None:
        where = _generator_device(generator, device)
        x0 = torch.randn(x1.shape, generator=generator, dtype=x1.dtype, device=where)
        x0 = x0 if where == device else x0.to(device)
    with times_checked():
        sample = path.sample(x0, x1, t)
        try:
            pred = model(sample.x_t, sample.t) if y is None else model(sample.x_t, sample.t, y)
        except (RuntimeError, NotImplementedError):
            _check_model_device(model, x1)  # a clearer error when the devices differ
            raise
    if not torch.is_tensor(pred) or pred.device != device:
        _check_model_device(model, x1)
    return cfm_loss(pred, sample, path, parametrization=parametrization, weighting=weighting, reduction=reduction)


def cfm_loss_fn(
    path: AffinePath,
    sample_x1: Callable[[int, torch.Generator], Tensor],
    *,
    parametrization: str = "velocity",
    t_min: float = 0.0,
    t_max: float = 1.0,
    weighting: TimeWeighting | None = None,
) -> Callable[[nn.Module, int, torch.Generator], Tensor]:
    """The loss function :func:`fmlib.train.train` wants, from a data sampler: ``loss_fn(model, B, g)`` draws
    x1 = ``sample_x1(B, g)`` (on the CPU, from the trainer's generator), moves it to the model's device and
    returns :func:`conditional_flow_matching_loss` on ``path``.

        loss_fn = losses.cfm_loss_fn(path, lambda n, g: data.sample_toy("moons", n, generator=g))
        result = train.train(models.MLP(), loss_fn, train.TrainConfig(steps=500, batch_size=256),
                             name="moons", key={"data": "moons", "path": path.config()})

    Raises:
        ValueError: bad parametrization or time range (at once, not at the first step).
    """
    check_choice(parametrization, PARAMETRIZATIONS, what="parametrization")
    t_min, t_max = _check_time_range(t_min, t_max)

    def loss_fn(model: nn.Module, batch: int, generator: torch.Generator) -> Tensor:
        x1 = sample_x1(batch, generator)
        param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        if param is not None:
            x1 = x1.to(param.device)
        return conditional_flow_matching_loss(model, path, x1, parametrization=parametrization,
                                              weighting=weighting, generator=generator, t_min=t_min, t_max=t_max)

    return loss_fn
