"""Wall-clock timing of what the chapters compare: one call of a function, one optimizer step of a loss.

Timings synchronise the device before reading the clock (CUDA kernels run asynchronously), so they measure
the work and not only its launch. They are *measurements*, not results to assert exactly: a chapter asserts
orderings with margins, and speed goals live in ``benchmarks/``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .solvers import NFECounter

__all__ = ["synchronize", "time_call", "StepCost", "seconds_per_step"]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the queued CUDA work of ``device`` (all CUDA work if None) to finish; a no-op elsewhere."""
    if device is not None and torch.device(device).type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int = 3, *, warm_up: bool = True) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``repeats`` calls, after one untimed call if ``warm_up``.

    Raises:
        ValueError: ``repeats`` < 1.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if warm_up:
        fn()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - start) / repeats


@dataclass(frozen=True)
class StepCost:
    """Cost of one optimizer step: ``seconds`` (wall-clock) and ``nfe``, the network calls of its forward
    pass (the backward pass is not counted)."""

    seconds: float
    nfe: float


LossFn = Callable[[nn.Module, int, torch.Generator], Tensor]


def seconds_per_step(model: nn.Module, loss_fn: LossFn, n_steps: int, *, batch_size: int, lr: float,
                     seed: int = 1) -> StepCost:
    """The cost of ``n_steps`` further AdamW steps of ``loss_fn`` on a copy of ``model`` (``model`` itself is
    not changed), averaged per step, after one untimed warm-up step.

    ``loss_fn(model, batch_size, generator)`` is the trainer's loss signature (:func:`fmlib.train.train`); it
    receives the copy wrapped in an :class:`fmlib.solvers.NFECounter`, which counts the network calls. The
    cost of an adaptive solver's step depends on the field, so time a *trained* model to know what training
    costs at its end.

    Raises:
        ValueError: ``n_steps`` or ``batch_size`` < 1, or ``lr`` ≤ 0.
    """
    for name, value in (("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    copy_ = copy.deepcopy(model).train()
    counter = NFECounter(copy_)
    opt = torch.optim.AdamW(copy_.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(counter, batch_size, gen).backward()
        opt.step()

    step()
    counter.reset()
    seconds = time_call(step, n_steps, warm_up=False)
    return StepCost(seconds=seconds, nfe=counter.nfe / n_steps)
