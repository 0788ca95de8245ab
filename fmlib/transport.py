"""Kinetic energy, Gaussian optimal transport, coupled flow matching and reflow (rectified flow).

* :func:`kinetic_energy`: the kinetic energy E ∫_0^1 ‖ẋ_t‖² dt of a recorded flow trajectory;
* :func:`gaussian_w2_squared`, :func:`gaussian_ot_map`: the closed-form W2² and optimal map between two
  Gaussians (the Bures–Wasserstein formulas);
* :func:`coupled_toy_flow`: the book's standard 2-D flow-matching model trained with a coupling of
  :mod:`fmlib.couplings` instead of the independent one;
* :func:`coupled_toy_conditional_flow`: a class-conditional 2-D model trained with a coupling that ignores
  the labels or respects them;
* :func:`reflow_pairs`, :func:`reflow_toy_flow`: rectified flow: pairs (x0, ψ_1(x0)) of a trained flow, and
  a model retrained (fine-tuned from the teacher) on those pairs through the one trainer and its cache.

Time convention: t = 0 noise, t = 1 data; the linear path x_t = t x1 + (1 − t) x0.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from . import couplings, losses, models, paths, runtime, solvers, zoo
from . import data as data_mod
from ._checks import check_choice, check_positive_int
from .metrics import _check_gaussian, _sqrtm_psd, _trajectory, gaussian_w2_squared
from .train import TrainConfig, TrainResult, train

__all__ = ["kinetic_energy", "gaussian_w2_squared", "gaussian_ot_map", "coupled_toy_flow", "CONDITIONAL_COUPLINGS",
           "coupled_toy_conditional_flow", "reflow_pairs", "reflow_toy_flow"]


def kinetic_energy(trajectory: Tensor, times: Tensor) -> float:
    """Kinetic energy of a recorded flow, E_b ∫_0^1 ‖ẋ_t‖² dt, from positions on a time grid:

        K ≈ (1/B) Σ_b Σ_k ‖x_{t_{k+1}} − x_{t_k}‖² / (t_{k+1} − t_k).

    ``trajectory`` [T, B, ...] (e.g. ``solve_ode(..., record=True).trajectory``), ``times`` [T] strictly
    increasing. Exact for paths that are straight at constant speed on each interval; otherwise the sum is
    ≤ the integral (Cauchy–Schwarz on each interval) and converges to it as the grid is refined. Over [0, 1]
    Cauchy–Schwarz also gives K ≥ E‖x_1 − x_0‖², with equality exactly for straight constant-speed paths.

    Raises:
        ValueError: wrong shapes, non-finite values, times not strictly increasing.
    """
    traj = _trajectory(trajectory)
    times = torch.as_tensor(times, dtype=torch.float64).flatten().cpu()
    if times.shape[0] != traj.shape[0]:
        raise ValueError(f"times must have one entry per time point ({traj.shape[0]}), got {times.shape[0]}")
    dt = torch.diff(times)
    if not bool(torch.isfinite(times).all()) or not bool((dt > 0).all()):
        raise ValueError("times must be finite and strictly increasing")
    steps = (traj[1:] - traj[:-1]).square().sum(-1).mean(1)
    return float((steps / dt).sum())


def gaussian_ot_map(mean0: Tensor, cov0: Tensor, mean1: Tensor, cov1: Tensor) -> tuple[Tensor, Tensor]:
    """The optimal map T(x) = m1 + A (x − m0) from N(m0, S0) to N(m1, S1), returned as (A [D, D], b [D]) with
    T(x) = A x + b:

        A = S0^{-1/2} (S0^{1/2} S1 S0^{1/2})^{1/2} S0^{-1/2},   b = m1 − A m0.

    A is symmetric positive semi-definite, so T is the gradient of a convex function (Brenier), and
    A S0 A = S1. Needs S0 positive definite.

    Raises:
        ValueError: as :func:`gaussian_w2_squared`, or S0 singular.
    """
    m0, s0 = _check_gaussian(mean0, cov0, "source")
    m1, s1 = _check_gaussian(mean1, cov1, "target")
    if float(torch.linalg.eigvalsh(s0).min()) <= 1e-12:
        raise ValueError("the source covariance must be positive definite for an optimal map to exist")
    r = _sqrtm_psd(s0)
    r_inv = torch.linalg.inv(r)
    a = r_inv @ _sqrtm_psd(r @ s1 @ r) @ r_inv
    a = 0.5 * (a + a.T)
    return a, m1 - a @ m0


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def coupled_toy_flow(dataset: str, coupling: str, *, epsilon: float = 0.05, source: str = "gaussian",
                     coupling_batch: int | None = None, size: zoo.ToySize | None = None, seed: int = 0,
                     progress: bool = True, **overrides: Any) -> TrainResult:
    """The standard 2-D model of :func:`fmlib.zoo.toy_flow` (MLP, linear path, velocity, the profile's size),
    trained on pairs (x0, x1) re-paired per batch by :func:`fmlib.couplings.coupled_pairs` (``coupling`` ∈
    ``independent``, ``ot``, ``entropic``; ``epsilon`` for entropic), x0 from the toy ``source``.

    With the independent coupling and the Gaussian source this *is* the zoo model (the call is delegated, so
    its cached checkpoint is reused). The per-batch coupling costs O(B³) (exact) or O(B² · iterations)
    (Sinkhorn) on the CPU at every step.

    ``coupling_batch`` = B_c decouples the size of the coupling problem from the gradient batch B: pairs are
    coupled B_c at a time (fresh x0, x1 for each problem) into a stream, and each step takes the next B pairs
    of it, so B_c < B solves B / B_c problems per step and B_c > B one problem every B_c / B steps. The
    network, its batch and its gradient noise stay the same; only the coupling changes (its cost per pair
    grows like B_c², per problem like B_c³). ``None`` (or B_c = B) is the usual one problem per batch.

    Raises:
        ValueError: unknown coupling, ``coupling_batch`` not a positive int.
    """
    couplings.coupled_pairs(coupling, torch.zeros(1, 1), torch.zeros(1, 1))  # validates the name early
    size = replace(size or zoo.toy_size(), **overrides)
    if coupling_batch is not None:
        coupling_batch = check_positive_int(coupling_batch, "coupling_batch")
        if coupling_batch == size.batch_size:
            coupling_batch = None               # the same training as the default: share its checkpoint
    if coupling == "independent" and source == "gaussian" and coupling_batch is None:
        return zoo.toy_flow(dataset, size=size, seed=seed, progress=progress, **overrides)
    path = paths.AffinePath(paths.CondOTScheduler())
    runtime.seed_everything(seed)
    model = models.MLP(dim=2, hidden=size.hidden, depth=size.depth)
    stream: list[Tensor] = [torch.zeros(0, 2), torch.zeros(0, 2)]   # coupled pairs not yet used

    def coupled_batch(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        x1 = data_mod.sample_toy(dataset, n, generator=g)
        x0 = data_mod.sample_toy(source, n, generator=g)
        return couplings.coupled_pairs(coupling, x0, x1, epsilon=epsilon, generator=g)

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> Tensor:
        if coupling_batch is None:
            x0, x1 = coupled_batch(batch, g)
        else:
            while stream[0].shape[0] < batch:
                new0, new1 = coupled_batch(coupling_batch, g)
                stream[0], stream[1] = torch.cat([stream[0], new0]), torch.cat([stream[1], new1])
            x0, x1 = stream[0][:batch], stream[1][:batch]
            stream[0], stream[1] = stream[0][batch:], stream[1][batch:]
        t = losses.sample_time(batch, generator=g)
        dev = _model_device(m)
        return losses.conditional_flow_matching_loss(m, path, x1.to(dev), x0=x0.to(dev), t=t.to(dev))

    config = TrainConfig(steps=size.steps, batch_size=size.batch_size, lr=size.lr, seed=seed, amp=False)
    key = {"recipe": "coupled_toy_flow", "dataset": dataset, "source": source, "coupling": coupling,
           "epsilon": epsilon if coupling == "entropic" else None, "path": path.config()}
    name = f"toy-{source}-{dataset}-{coupling}"
    if coupling_batch is not None:
        key["coupling_batch"] = coupling_batch
        name += f"-b{coupling_batch}"
    return train(model, loss_fn, config, name=name, key=key, progress=progress)


CONDITIONAL_COUPLINGS: tuple[str, ...] = ("independent", "ot", "ot_within_classes")


def coupled_toy_conditional_flow(data: Any, coupling: str, *, size: zoo.ToySize | None = None, seed: int = 0,
                                 progress: bool = True, **overrides: Any) -> TrainResult:
    """A class-conditional velocity MLP v(x, t, y) (linear path, CFM loss, the profile's size, no label dropout)
    on labelled 2-D mixture data ``data`` (:class:`fmlib.analytic.LabelledMixture`), each batch of (x0, x1, y)
    re-paired by ``coupling`` ∈ :data:`CONDITIONAL_COUPLINGS`:

    * ``independent``: the pairs as drawn, so X0 | Y = y ~ N(0, I) for every y;
    * ``ot``: one minibatch assignment of the whole batch that ignores y; each label stays with its data point,
      so the sources paired with class y are the noise points *near* class y, and X0 | Y = y ≠ N(0, I);
    * ``ot_within_classes``: one assignment per class (:func:`fmlib.couplings.class_conditional_ot_coupling`),
      which keeps X0 | Y = y ~ N(0, I) on average while straightening the pairs of each class.

    Sampling draws X0 ~ N(0, I) for every label, which is what ``independent`` and ``ot_within_classes``
    train for and ``ot`` does not.

    Raises:
        TypeError: ``data`` is not a LabelledMixture.
        ValueError: unknown coupling.
    """
    from .analytic import LabelledMixture

    if not isinstance(data, LabelledMixture):
        raise TypeError(f"data must be a fmlib.analytic.LabelledMixture, got {type(data).__name__}")
    check_choice(coupling, CONDITIONAL_COUPLINGS, what="conditional coupling")
    size = replace(size or zoo.toy_size(), **overrides)
    path = paths.AffinePath(paths.CondOTScheduler())
    runtime.seed_everything(seed)
    model = models.MLP(dim=data.mixture.dim, hidden=size.hidden, depth=size.depth, num_classes=data.num_classes)

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> Tensor:
        x1, y = data.sample(batch, generator=g)
        x1 = x1.float()
        x0 = torch.randn(x1.shape, generator=g)
        if coupling == "ot":
            perm = couplings.ot_assignment(x0, x1)
            x1, y = x1[perm], y[perm]
        elif coupling == "ot_within_classes":
            x0, x1, y = couplings.class_conditional_ot_coupling(x0, x1, y)
        t = losses.sample_time(batch, generator=g)
        dev = _model_device(m)
        return losses.conditional_flow_matching_loss(m, path, x1.to(dev), x0=x0.to(dev), t=t.to(dev),
                                                     y=y.to(dev))

    config = TrainConfig(steps=size.steps, batch_size=size.batch_size, lr=size.lr, seed=seed, amp=False)
    mix = data.mixture
    key = {"recipe": "coupled_toy_conditional_flow", "coupling": coupling, "means": mix.means,
           "stds": mix.stds, "weights": mix.weights, "labels": data.labels, "path": path.config()}
    return train(model, loss_fn, config, name=f"toy-conditional-{coupling}", key=key, progress=progress)


def reflow_pairs(velocity: nn.Module, x0: Tensor, *, steps: int, method: str = "midpoint") -> tuple[Tensor, Tensor]:
    """The pairs (x0, ψ_1(x0)) of the flow of ``velocity``, ψ_1 solved by :func:`fmlib.solvers.solve_ode` with
    ``steps`` steps of ``method`` from t = 0 to 1 (no gradients). They cost steps × (NFE per step) model
    evaluations per pair."""
    with torch.no_grad():
        x1 = solvers.solve_ode(velocity, x0, steps=steps, method=method).x
    return x0, x1


def reflow_toy_flow(teacher: TrainResult, *, n_pairs: int, ode_steps: int, steps: int, round_name: str,
                    seed: int = 0, progress: bool = True) -> TrainResult:
    """One reflow round: draw ``n_pairs`` sources x0 ~ N(0, I), push them through the ``teacher`` (its EMA
    model, :func:`reflow_pairs` with ``ode_steps`` midpoint steps), then fine-tune a copy of the teacher for
    ``steps`` steps on the fixed pairs with the CFM loss of the linear path, t ~ U[0, 1].

    The pairs are generated inside the loss on its first call, so a cached run costs nothing. The cache key
    holds the teacher's key, so a retrained teacher retrains its students. ``round_name`` names the
    checkpoint (e.g. ``"moons-reflow-1"``).
    """
    teacher_model = teacher.model
    size = zoo.toy_size()
    runtime.seed_everything(seed)
    model = models.MLP(dim=2, hidden=size.hidden, depth=size.depth)
    model.load_state_dict(teacher_model.state_dict())
    path = paths.AffinePath(paths.CondOTScheduler())
    cache: dict[str, Tensor] = {}

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> Tensor:
        dev = _model_device(m)
        if "x0" not in cache:
            x0 = torch.randn(n_pairs, 2, generator=torch.Generator().manual_seed(seed + 1))
            cache["x0"], cache["x1"] = reflow_pairs(teacher_model, x0.to(dev), steps=ode_steps)
        idx = torch.randint(0, n_pairs, (batch,), generator=g).to(dev)
        t = losses.sample_time(batch, generator=g).to(dev)
        return losses.conditional_flow_matching_loss(m, path, cache["x1"][idx], x0=cache["x0"][idx], t=t)

    config = TrainConfig(steps=steps, batch_size=size.batch_size, lr=size.lr / 2, seed=seed, amp=False)
    key = {"recipe": "reflow_toy_flow", "teacher": teacher.key, "n_pairs": n_pairs, "ode_steps": ode_steps,
           "ode_method": "midpoint"}
    return train(model, loss_fn, config, name=f"toy-{round_name}", key=key, progress=progress)
