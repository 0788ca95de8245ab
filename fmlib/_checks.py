"""Small validation and broadcasting helpers shared by every fmlib module (private)."""

from __future__ import annotations

import math
import numbers
import contextvars
from collections.abc import Iterable

import torch
from torch import Tensor

# Inner-loop trust. fmlib validates user input once, at the public boundary; work that fmlib hands on to
# itself inside one call (times it drew itself, or already checked) need not be scanned again, and a scan is
# a host synchronisation on a GPU. These two flags are set only by fmlib, for the extent of one call.
_TIMES_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("fmlib_times_checked", default=False)
_LOSS_CHECK_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar("fmlib_loss_check_deferred",
                                                                            default=False)


class _Flag:
    """``with _Flag(var):`` sets the context variable ``var`` to True for the block (a plain class: cheaper per
    step than a generator-based context manager)."""

    __slots__ = ("var", "token")

    def __init__(self, var: contextvars.ContextVar[bool]) -> None:
        self.var = var

    def __enter__(self) -> None:
        self.token = self.var.set(True)

    def __exit__(self, *exc: object) -> None:
        self.var.reset(self.token)


def times_checked() -> _Flag:
    """Within this block :func:`check_unit_interval` trusts its input: every time tensor in it is one that
    fmlib drew in [0, 1] or has already validated (used by the flow-matching loss around its model call)."""
    return _Flag(_TIMES_CHECKED)


def loss_check_deferred() -> _Flag:
    """Within this block the per-call finiteness check of a loss is skipped: the caller (the trainer)
    accumulates the losses on the device and checks them every few steps, with the step range in its error."""
    return _Flag(_LOSS_CHECK_DEFERRED)


def loss_check_is_deferred() -> bool:
    """True inside :func:`loss_check_deferred`."""
    return _LOSS_CHECK_DEFERRED.get()


def times_are_checked() -> bool:
    """True inside :func:`times_checked`."""
    return _TIMES_CHECKED.get()


def as_time(t: float | Tensor, batch: int, *, like: Tensor, name: str = "t") -> Tensor:
    """Return ``t`` as a float tensor of shape ``[batch]`` on ``like``'s device and dtype, checked to lie in [0, 1].

    Accepts a Python number, a 0-d tensor, a ``[1]`` tensor or a ``[batch]`` tensor.

    Raises:
        ValueError: wrong shape, NaN, or a value outside [0, 1].
    """
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if not torch.is_tensor(t):
        t = torch.tensor(float(t), dtype=dtype, device=like.device)  # no detour through float32
    t = t.to(device=like.device, dtype=dtype)
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
        t = t.reshape(1).expand(batch)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must be a scalar or have shape [{batch}], got shape {tuple(t.shape)}")
    check_unit_interval(t, name=name)
    return t


def check_unit_interval(t: Tensor, *, name: str = "t") -> None:
    """Raise ``ValueError`` unless every entry of ``t`` is a number in [0, 1].

    Two operators and one read-back (one host sync on a GPU) for a valid ``t``: min and max in one reduction
    (``aminmax``, which propagates NaN, and NaN fails both comparisons), read back together; the message is
    worked out only on failure. Inside :func:`times_checked` (times fmlib drew or validated itself) it
    returns at once.
    """
    if _TIMES_CHECKED.get() or t.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(t if t.is_floating_point() else t.double())).tolist()
    if 0 <= lo and hi <= 1:
        return
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    raise ValueError(f"{name} must lie in [0, 1]; got values in [{t.min().item():.4g}, {t.max().item():.4g}]")


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Reshape a ``[B]`` tensor to ``[B, 1, ..., 1]`` so that it broadcasts against ``x`` of shape ``[B, ...]``."""
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"expected a [B] tensor with B={x.shape[0]}, got shape {tuple(t.shape)}")
    return t[:, None] if x.dim() == 2 else t.reshape(-1, *([1] * (x.dim() - 1)))  # (the common 2-D case: a view)


def check_same_shape(**tensors: Tensor) -> None:
    """Raise ``ValueError`` unless all named tensors have the same shape."""
    first, *rest = tensors.values()
    if all(v.shape == first.shape for v in rest):
        return
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("shapes must match: " + ", ".join(f"{k}={s}" for k, s in shapes.items()))


def check_batched(x: Tensor, *, name: str = "x", min_dim: int = 2) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with a batch axis (at least ``min_dim`` dimensions)."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have shape [B, ...] with at least {min_dim} dims, got {tuple(x.shape)}")


def check_choice(value: str, choices: Iterable[str], *, what: str) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise ``ValueError`` listing them."""
    if type(choices) is tuple and type(value) is str and value in choices:
        return value  # (the common case, once per training step: no copy)
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {choices}")
    return value


def check_finite(x: Tensor, *, what: str) -> Tensor:
    """Return ``x`` unchanged, or raise ``FloatingPointError`` if it holds NaN or infinity."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{what} is not finite (NaN or inf)")
    return x


def check_real(value: object, name: str, *, low: float | None = None) -> float:
    """``value`` as a finite Python float (not a bool), at least ``low`` when given; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return float(value)


def check_positive_int(value: object, name: str) -> int:
    """``value`` as a Python int ≥ 1 (not a bool); ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
