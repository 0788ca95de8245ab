#!/usr/bin/env python3
"""How the time embedding's highest frequency shapes a trained velocity field in t.

    python benchmarks/time_embedding.py [--dataset 8gaussians] [--freqs 1000 100 30 10] [--steps N]
    python benchmarks/time_embedding.py --unet --light --freqs 1000 30     # the digits U-Net, a few minutes

For each ``max_freq`` the standard 2-D model (:func:`fmlib.zoo.toy_size`: MLP, CondOT path, CFM loss, the
same seed, data and training length) is trained with ``models.MLP(max_freq=...)`` and then evaluated in
float64 on 2000 fixed noise points:

* ``TV ratio``: the total variation of v(x, ·) along t summed on a 4001-point grid over the same on a
  65-point grid (1 for a field that is smooth at the coarse grid's scale; larger when it wiggles in t);
* the RMS error of Euler, midpoint and RK4 at NFE 4 … 128 against a dopri5 reference at atol = rtol = 1e-9,
  and whether it falls monotonically with NFE;
* dopri5's NFE at tolerance 1e-5 and 1e-7 (for the exact marginal field of the same data, see
  :class:`fmlib.analytic.MarginalField`, printed in the first row for scale when the data is 8gaussians);
* W2 of 2000 samples (midpoint, 32 steps) against fresh data, next to the floor W2(data, data).

Training runs without the checkpoint cache, one thread (``FMLIB_THREADS``), a few minutes in all on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import copy
import sys

import numpy as np
import torch

from fmlib import analytic, data, losses, metrics, models, paths, runtime, solvers, zoo
from fmlib.train import TrainConfig, train

NFES = (4, 8, 16, 32, 64, 128)
METHODS = {"euler": 1, "midpoint": 2, "rk4": 4}


def total_variation(field, x: torch.Tensor, n: int) -> float:
    """Σ_k ‖v(x, t_{k+1}) − v(x, t_k)‖ averaged over the points, on a uniform n-point grid of [0, 1]."""
    prev, tv = None, 0.0
    for t in torch.linspace(0, 1, n, dtype=x.dtype):
        v = field(x, t.expand(x.shape[0]))
        if prev is not None:
            tv += float((v - prev).norm(dim=1).mean())
        prev = v
    return tv


def evaluate(field, x0: torch.Tensor, x_data: torch.Tensor) -> dict:
    """The measures of the module docstring for one velocity field."""
    with torch.no_grad():
        ref = solvers.solve_ode(field, x0, steps=None, method="dopri5", atol=1e-9, rtol=1e-9).x
        out = {"tv_ratio": total_variation(field, x0[:500], 4001) / total_variation(field, x0[:500], 65)}
        for method, per_step in METHODS.items():
            errs = []
            for nfe in NFES:
                if nfe % per_step:
                    errs.append(float("nan"))
                    continue
                x = solvers.solve_ode(field, x0, steps=nfe // per_step, method=method).x
                errs.append(float((x - ref).square().sum(dim=1).mean().sqrt()))
            out[method] = errs
        for tol in (1e-5, 1e-7):
            out[f"dopri5@{tol:g}"] = solvers.solve_ode(field, x0, steps=None, method="dopri5", atol=tol, rtol=tol).nfe
        samples = solvers.solve_ode(field, x0, steps=32, method="midpoint").x
        out["w2"] = metrics.wasserstein2(samples.float(), x_data)
    return out


def monotone(errs: list[float]) -> bool:
    vals = [e for e in errs if np.isfinite(e)]
    return all(b < a for a, b in zip(vals, vals[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="8gaussians")
    parser.add_argument("--freqs", type=float, nargs="+", default=[1000.0, 100.0, 30.0, 10.0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the quick profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet", action="store_true", help="measure the digits U-Net instead of the 2-D MLP")
    parser.add_argument("--light", action="store_true",
                        help="with --unet: a small U-Net, 300 steps, few NFE values (a few minutes on one core)")
    args = parser.parse_args()
    runtime.configure_threads()
    if args.unet:
        return unet_main(args)
    size = zoo.toy_size()
    steps = args.steps or size.steps
    path = paths.AffinePath(paths.CondOTScheduler())
    gen = torch.Generator().manual_seed(1234)
    x0 = torch.randn(2000, 2, generator=gen, dtype=torch.float64)
    x_data = data.sample_toy(args.dataset, 2000, generator=gen)
    x_ref_data = data.sample_toy(args.dataset, 2000, generator=gen)
    floor = metrics.wasserstein2(x_ref_data, x_data)
    print(runtime.describe())
    print(f"{args.dataset}: MLP {size.hidden}x{size.depth}, {steps} steps, batch {size.batch_size}, lr {size.lr:g}; "
          f"W2 floor (data vs data, 2000 points) {floor:.4f}")

    rows = []
    if args.dataset in ("8gaussians", "gaussian"):
        exact = analytic.MarginalField(path, data.toy_density(args.dataset, dtype=torch.float64))
        rows.append(("exact", evaluate(exact, x0, x_data)))

    def loss_fn(m, batch, g):
        x1 = data.sample_toy(args.dataset, batch, generator=g)
        return losses.conditional_flow_matching_loss(m, path, x1, generator=g)

    for freq in args.freqs:
        runtime.seed_everything(args.seed)
        model = models.MLP(dim=2, hidden=size.hidden, depth=size.depth, max_freq=freq)
        config = TrainConfig(steps=steps, batch_size=size.batch_size, lr=size.lr, seed=args.seed, amp=False)
        result = train(model, loss_fn, config, name=f"bench-freq-{freq:g}", cache=False, progress=False)
        field = copy.deepcopy(result.model).double()
        rows.append((f"max_freq {freq:g}", evaluate(field, x0, x_data)))

    print(f"{'field':<16}{'TV4001/65':>10}{'dopri5 1e-5':>12}{'1e-7':>7}{'W2':>8}   "
          f"(then RMS error vs dopri5 1e-9 at NFE {', '.join(str(n) for n in NFES)})")
    for label, out in rows:
        print(f"{label:<16}{out['tv_ratio']:>10.3f}{out['dopri5@1e-05']:>12d}{out['dopri5@1e-07']:>7d}"
              f"{out['w2']:>8.4f}")
        for method in METHODS:
            errs = " ".join("     -  " if not np.isfinite(e) else f"{e:.2e}" for e in out[method])
            print(f"    {method:<9}{errs}  {'monotone' if monotone(out[method]) else 'NOT monotone'}")
    return 0


def unet_main(args: argparse.Namespace) -> int:
    """The digits U-Net: Fréchet distance in a trained classifier's features (with its floor), dopri5 NFE at 1e-5,
    and the RMS error of Euler, midpoint and RK4 against a tight dopri5 reference over NFE.

    Default: the probability_paths chapter's quick size (base 16, batch 64, 500 steps, 200 evaluation images,
    reference at 1e-7, TV on a 4001-point grid; tens of minutes on a loaded CPU). ``--light``: base 8, time_dim 32,
    300 steps, 64 evaluation images, reference at 1e-8, NFE 4…32, TV 1025/65; a few minutes on one core.
    """
    light = args.light
    steps = args.steps or (300 if light else 500)
    base, time_dim = (8, 32) if light else (16, 128)
    n_eval, ref_tol, fine = (64, 1e-8, 1025) if light else (200, 1e-7, 4001)
    nfes = (4, 8, 16, 32) if light else (4, 8, 16, 32, 64)
    digits = data.load_images("digits")
    train_set, test_set = digits.split(0.2, seed=0)
    classifier, _ = metrics.train_feature_classifier(digits.images, digits.labels, name="digits-features",
                                                     steps=800, progress=False)
    path = paths.AffinePath(paths.CondOTScheduler())
    gen = torch.Generator().manual_seed(41)
    z = torch.randn(test_set.images.shape, generator=gen, dtype=torch.float64)
    ref_imgs = train_set.images[:z.shape[0]]
    print(runtime.describe())
    print(f"digits U-Net base {base}, (1, 2), time_dim {time_dim}, {steps} steps, batch 64, lr 2e-3, cosine; "
          f"errors on {n_eval} images vs dopri5 {ref_tol:g}; FD of {z.shape[0]} samples (midpoint, 25 steps)")
    print(f"{'field':<16}{f'TV{fine}/65':>10}{'dopri5 1e-5':>12}{'FD':>8}{'floor':>8}   "
          f"(then RMS error vs the reference at NFE {', '.join(str(n) for n in nfes)})")

    def loss_fn(m, batch, g):
        x1 = train_set.images[torch.randint(0, train_set.images.shape[0], (batch,), generator=g)]
        return losses.conditional_flow_matching_loss(m, path, x1, generator=g)

    for freq in args.freqs:
        runtime.seed_everything(args.seed)
        model = models.UNet(base_channels=base, channel_mults=(1, 2), time_dim=time_dim, max_freq=freq)
        config = TrainConfig(steps=steps, batch_size=64, lr=2e-3, seed=args.seed, warmup_steps=min(200, steps // 10),
                             lr_schedule="cosine")
        field = copy.deepcopy(train(model, loss_fn, config, name=f"bench-unet-freq-{freq:g}", cache=False,
                                    progress=False).model).double()
        flat = lambda x, t: field(x, t).flatten(1)  # noqa: E731
        with torch.no_grad():
            sub = z[:n_eval]
            ref = solvers.solve_ode(field, sub, steps=None, method="dopri5", atol=ref_tol, rtol=ref_tol).x
            tv = total_variation(flat, sub[:32], fine) / total_variation(flat, sub[:32], 65)
            nfe = solvers.solve_ode(field, sub, steps=None, method="dopri5", atol=1e-5, rtol=1e-5).nfe
            errs = {}
            for method, per_step in METHODS.items():
                errs[method] = [float((solvers.solve_ode(field, sub, steps=n // per_step, method=method).x - ref)
                                      .flatten(1).square().sum(1).mean().sqrt()) if n % per_step == 0
                                else float("nan") for n in nfes]
            samples = solvers.solve_ode(field, z, steps=25, method="midpoint").x.float().clamp(-1, 1)
        fd = metrics.compare_images(samples, test_set.images, ref_imgs, classifier)["fd"]
        print(f"{f'max_freq {freq:g}':<16}{tv:>10.3f}{nfe:>12d}{fd.value:>8.2f}{fd.floor:>8.2f}", flush=True)
        for method, e in errs.items():
            print(f"    {method:<9}" + " ".join("     -  " if not np.isfinite(v) else f"{v:.2e}" for v in e) +
                  f"  {'monotone' if monotone(e) else 'NOT monotone'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
