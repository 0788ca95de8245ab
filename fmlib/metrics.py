"""Sample-quality metrics, each reported next to its floor.

A metric between model samples and data means little alone: finite samples of the data itself are at a
positive distance. :func:`compare_samples` therefore reports the metric between two independent data
samples of the same size (the floor) beside the model's value.

* ``wasserstein2``: exact W2 between empirical measures (POT's network simplex ``ot.emd2``, squared
  Euclidean cost, uniform weights); Sinkhorn is slower and biased at these sizes.
* ``sliced_wasserstein2``: sqrt of the mean over random directions θ of W2²(θᵀX, θᵀY) (1-D, sorted).
* ``energy_distance``: 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (V-statistic).
* Trajectories (a recorded solve ``[T, B, D]`` on a uniform time grid over [0, 1]): ``trajectory_curvature``
  (path length over chord, minus one) and ``straightness_gap`` (the straightness measure of rectified flow).
* Images: ``frechet_distance`` ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) and ``kernel_distance``
  (KID: unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb / d + 1)³) in the feature space of a
  small classifier that fmlib trains on the same data (cached like any model; no downloaded weights).

Conventions, so that numbers in the prose mean one thing:

* W2 and sliced W2 are distances (the square root is taken); Fréchet distance, KID and the energy
  distance are *squared* quantities (no square root). In particular our energy distance is the square of
  what ``scipy.stats.energy_distance`` returns in 1-D.
* Every metric computes in float64 on the CPU, whatever the device and dtype of its inputs; inputs may be
  torch tensors (with or without grad, on any device) or NumPy arrays.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_choice

__all__ = [
    "gaussian_w2_squared",
    "wasserstein2",
    "sliced_wasserstein2",
    "energy_distance",
    "MetricReport",
    "compare_samples",
    "FeatureClassifier",
    "train_feature_classifier",
    "frechet_distance",
    "kernel_distance",
    "compare_images",
    "trajectory_curvature",
    "straightness_gap",
]

SAMPLE_METRICS: tuple[str, ...] = ("w2", "sw2", "energy")
"""Names :func:`compare_samples` knows."""

IMAGE_METRICS: tuple[str, ...] = ("fd", "kid")
"""Names :func:`compare_images` reports."""


# ----------------------------------------------------------------------------------------------- helpers


def _as_float64(x: Tensor | np.ndarray, *, name: str) -> Tensor:
    """``x`` as a float64 CPU tensor without grad; ``TypeError`` for anything that is not array-like."""
    if torch.is_tensor(x):
        return x.detach().to(device="cpu", dtype=torch.float64)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.asarray(x, dtype=np.float64))
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def _point_cloud(x: Tensor | np.ndarray, *, name: str, min_points: int = 1) -> Tensor:
    """Validate a point cloud [N, D] (N ≥ ``min_points``, finite) and return it as float64 CPU."""
    x = _as_float64(x, name=name)
    if x.dim() != 2:
        hint = " (use x[:, None] for 1-D points, x.flatten(1) for images)" if x.dim() in (1, 3, 4) else ""
        raise ValueError(f"{name} must have shape [N, D], got {tuple(x.shape)}{hint}")
    if x.shape[0] < min_points:
        raise ValueError(f"{name} must hold at least {min_points} point(s), got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has zero-dimensional points (shape {tuple(x.shape)})")
    if torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains infinite values")
    return x


def _pair(x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, names: tuple[str, str] = ("x", "y"),
          min_points: int = 1) -> tuple[Tensor, Tensor]:
    """Two validated point clouds with the same dimension D."""
    x = _point_cloud(x, name=names[0], min_points=min_points)
    y = _point_cloud(y, name=names[1], min_points=min_points)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same dimension D; got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """C[i, j] = ‖x_i − y_j‖² [N, M] in float64.

    For D ≤ 32 the differences are accumulated coordinate by coordinate (exact up to rounding: a translated
    copy gives exactly the translation's squared length); above, the expansion ‖x‖² + ‖y‖² − 2 xᵀy,
    clipped at 0.
    """
    n, d = x.shape
    if d <= 32:
        cost = np.zeros((n, y.shape[0]))
        for k in range(d):
            diff = x[:, k, None] - y[None, :, k]
            cost += diff * diff
        return cost
    cost = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(cost, 0.0)


def _pairwise_mean_distance(x: Tensor, y: Tensor, *, chunk: int = 2048) -> float:
    """(1 / (N M)) Σ_{i, j} ‖x_i − y_j‖ in float64, in row chunks (memory O(chunk · M))."""
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        block = torch.cdist(x[start:start + chunk], y, compute_mode="donot_use_mm_for_euclid_dist")
        total += float(block.sum())
    return total / (x.shape[0] * y.shape[0])


def _w2_squared_1d_sorted(xs: Tensor, ys: Tensor) -> Tensor:
    """Exact W2² between 1-D empirical measures with uniform weights, batched over rows.

    ``xs`` [P, N] and ``ys`` [P, M] are sorted along the last axis. With quantile functions
    F⁻¹(u) = xs[⌈uN⌉ − 1] and G⁻¹(u) = ys[⌈uM⌉ − 1], W2² = ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du, and both are constant
    between consecutive points of {i/N} ∪ {j/M}: the integral is an exact finite sum. Returns [P].
    """
    n, m = xs.shape[-1], ys.shape[-1]
    if n == m:
        return ((xs - ys) ** 2).mean(dim=-1)
    # Breakpoints as exact fractions k / lcm: integers avoid rounding in the merge.
    lcm = n * m // math.gcd(n, m)
    levels = torch.unique(torch.cat([torch.arange(1, n + 1) * (lcm // n), torch.arange(1, m + 1) * (lcm // m)]))
    widths = torch.diff(levels, prepend=torch.zeros(1, dtype=levels.dtype)).to(torch.float64) / lcm
    # On (u_{k-1}, u_k] the quantile index is ⌈u_k N⌉ − 1 (u_k is the right end of the interval).
    ix = (levels * n + lcm - 1) // lcm - 1
    iy = (levels * m + lcm - 1) // lcm - 1
    return (((xs[..., ix] - ys[..., iy]) ** 2) * widths).sum(dim=-1)


# ------------------------------------------------------------------------------------------ point clouds


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact W2 between the empirical measures of x [N, D] and y [M, D]. Raises ``ValueError`` on shape mismatch
    or NaN input.

    W2(μ, ν) = ( min_{π ∈ Π(μ, ν)} Σ_{i,j} π_ij ‖x_i − y_j‖² )^{1/2}, with μ = (1/N) Σ δ_{x_i},
    ν = (1/M) Σ δ_{y_j}, solved exactly by POT's network simplex (``ot.emd2``) on the float64 cost matrix
    [N, M]. Cost: O(N M) memory and roughly O(N M · min(N, M)) time; a few seconds at 2,000 × 2,000 points.
    For N = M the optimal plan is a permutation, so a translated copy y = x + s is at distance ‖s‖.

    Args:
        x: [N, D] tensor or array (any device/dtype; computed in float64 on the CPU).
        y: [M, D], same D.

    Returns:
        W2 as a Python float (≥ 0).

    Raises:
        ValueError: not [N, D], different D, empty, NaN or infinite entries.
        RuntimeError: the solver did not reach an optimal plan (it never stops early silently).
    """
    import ot  # imported here: POT is slow to import and only this function needs it

    xs, ys = _pair(x, y)
    n, m = xs.shape[0], ys.shape[0]
    cost = _squared_distances(xs.numpy(), ys.numpy())
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    # The network simplex needs O(N M)-ish pivots on hard instances; POT's default (1e5) is too few for
    # thousands of points and then returns a non-optimal plan with only a warning.
    max_iter = int(max(1_000_000, 50 * n * m))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, log = ot.emd2(a, b, cost, numItermax=max_iter, log=True)
    problems = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if log.get("result_code") != 1 or log.get("warning") is not None or problems:
        raise RuntimeError(f"POT's exact solver did not reach an optimal plan for {n} × {m} points "
                           f"(result_code={log.get('result_code')}, warning={log.get('warning')!r}, {problems})")
    return math.sqrt(max(float(value), 0.0))


def sliced_wasserstein2(x: Tensor, y: Tensor, *, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 with ``n_projections`` seeded random unit directions (x, y: [N, D], equal N).

    SW2(μ, ν) = ( (1/P) Σ_{p=1}^{P} W2²(θ_pᵀ μ, θ_pᵀ ν) )^{1/2}, θ_p uniform on the unit sphere S^{D−1}
    (normalised Gaussians from a CPU generator seeded with ``seed``). Each 1-D W2² is exact: for equal N it
    is the mean squared difference of the sorted projections; unequal sizes N ≠ M are also accepted and
    handled exactly by integrating the difference of the two quantile functions. Since W2(θᵀμ, θᵀν) ≤ W2(μ, ν)
    for every unit θ, SW2 ≤ W2; in 1-D (D = 1, θ = ±1) SW2 = W2 exactly. Cost O(P (N + M) (D + log N)).

    Args:
        x: [N, D]; y: [M, D].
        n_projections: P ≥ 1.
        seed: seed of the directions (the same seed gives the same directions for any inputs).

    Raises:
        ValueError: shape mismatch, empty or non-finite input, n_projections < 1.
    """
    xs, ys = _pair(x, y)
    if not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(xs.shape[1], n_projections, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort((xs @ theta).T, dim=-1).values  # [P, N]
    py = torch.sort((ys @ theta).T, dim=-1).values  # [P, M]
    return math.sqrt(max(float(_w2_squared_1d_sorted(px, py).mean()), 0.0))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance (V-statistic, ≥ 0) between x [N, D] and y [M, D].

    E(μ, ν) = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ with X, X' ~ μ and Y, Y' ~ ν independent, estimated by the
    V-statistic (2/(NM)) Σ_{i,j} ‖x_i − y_j‖ − (1/N²) Σ_{i,i'} ‖x_i − x_{i'}‖ − (1/M²) Σ_{j,j'} ‖y_j − y_{j'}‖
    (diagonal terms included). It is 0 for identical sets and ≥ 0 always (it is the MMD² of the empirical
    measures for the distance kernel). This is the *squared* convention: in 1-D it equals
    ``scipy.stats.energy_distance(x, y) ** 2`` (scipy returns the square root). Memory O(2048 · max(N, M)).

    Raises:
        ValueError: shape mismatch, empty or non-finite input.
    """
    xs, ys = _pair(x, y)
    value = 2.0 * _pairwise_mean_distance(xs, ys) - _pairwise_mean_distance(xs, xs) - _pairwise_mean_distance(ys, ys)
    return max(value, 0.0)


@dataclass(frozen=True)
class MetricReport:
    """``value``: metric(samples, data); ``floor``: metric(data, independent data) of the same sizes."""

    name: str
    value: float
    floor: float

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.4f} (floor {self.floor:.4f})"

    @property
    def ratio(self) -> float:
        """value / floor (inf when the floor is 0): 1 means as close to the data as the data to itself."""
        return self.value / self.floor if self.floor > 0 else math.inf


_SAMPLE_METRIC_FNS: dict[str, Callable[[Tensor, Tensor], float]] = {
    "w2": wasserstein2,
    "sw2": sliced_wasserstein2,
    "energy": energy_distance,
}


def _check_metric_names(metrics: tuple[str, ...] | list[str] | str, known: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError(f"no metric asked for; choose among {known}")
    for m in metrics:
        check_choice(m, known, what="metric")
    return metrics


def compare_samples(samples: Tensor, data: Tensor, data_ref: Tensor,
                    metrics: tuple[str, ...] = ("w2", "sw2", "energy")) -> dict[str, MetricReport]:
    """Each metric (``w2``, ``sw2``, ``energy``) of (samples, data) with its floor (data_ref, data).

    ``value = metric(samples, data)`` and ``floor = metric(data_ref, data)``, where ``data_ref`` is a second
    sample of the data distribution, independent of ``data``. Because the floor is a finite-sample effect that
    depends on the number of points, ``samples`` and ``data_ref`` must have the same size N. A model is as good
    as these metrics can tell when value ≈ floor.

    Args:
        samples: [N, D] model samples; data: [M, D]; data_ref: [N, D] (all tensors or arrays, any device).
        metrics: names among ``("w2", "sw2", "energy")``, in the order wanted (a single name is accepted too).

    Returns:
        ``{name: MetricReport}`` in the order of ``metrics``.

    Raises:
        ValueError: unknown metric name, shape mismatch, ``len(samples) != len(data_ref)``, NaN or empty input.
    """
    names = _check_metric_names(metrics, SAMPLE_METRICS)
    s, d = _pair(samples, data, names=("samples", "data"))
    r, _ = _pair(data_ref, data, names=("data_ref", "data"))
    if s.shape[0] != r.shape[0]:
        raise ValueError(f"samples and data_ref must have the same number of points for the floor to be "
                         f"comparable; got {s.shape[0]} and {r.shape[0]}")
    return {m: MetricReport(m, _SAMPLE_METRIC_FNS[m](s, d), _SAMPLE_METRIC_FNS[m](r, d)) for m in names}


# ---------------------------------------------------------------------------------------------- images


class FeatureClassifier(nn.Module):
    """A small CNN classifier for [B, 1, H, W] images; ``features(x)`` returns the penultimate layer [B, F].

    Architecture (works for any H = W ≥ 4, e.g. 8×8 digits and 28×28 MNIST): 3×3 conv (32) → SiLU →
    3×3 stride-2 conv (64) → SiLU → 3×3 stride-2 conv (64) → SiLU → adaptive average pool to 2×2 → flatten
    (256) → linear (F) → SiLU → LayerNorm without affine = ``features`` → linear (num_classes) = logits.

    The final normalisation gives every feature vector mean 0 and ‖φ(x)‖² ≤ F (= F but for LayerNorm's ε), so
    |φ(x)ᵀφ(y)| / F ≤ 1: KID's cubic kernel stays in [0, 8] and its estimates have small variance, and the
    Fréchet distance is on the scale of tr Σ ≤ F whatever the data set.

    Args:
        image_size: H = W of the inputs (checked in :meth:`features`).
        num_classes: number of labels (≥ 2).
        feature_dim: F, the width of the feature layer.
        in_channels: C of the inputs (1 for the book's grayscale images).
    """

    def __init__(self, image_size: int, num_classes: int = 10, feature_dim: int = 64, *, in_channels: int = 1) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4, got {image_size}")
        if num_classes < 2 or feature_dim < 1 or in_channels < 1:
            raise ValueError(f"need num_classes ≥ 2, feature_dim ≥ 1, in_channels ≥ 1; got {num_classes}, "
                             f"{feature_dim}, {in_channels}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, feature_dim), nn.SiLU(),
            nn.LayerNorm(feature_dim, elementwise_affine=False),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: Tensor) -> None:
        want = (self.in_channels, self.image_size, self.image_size)
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"expected images of shape [B, {want[0]}, {want[1]}, {want[2]}], got {shape}")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features [B, F] of images x [B, C, H, W]."""
        self._check(x)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes] of images x [B, C, H, W]."""
        return self.head(self.features(x))


def _check_images(images: Tensor, *, name: str) -> Tensor:
    if not torch.is_tensor(images):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if torch.isnan(images).any():
        raise ValueError(f"{name} contains NaN")
    return images


def _tensor_digest(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _predict(model: nn.Module, fn: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 512) -> Tensor:
    """``fn`` applied to ``images`` in batches on the model's device; result on the CPU."""
    device = _model_device(model)
    dtype = next(model.parameters()).dtype
    out = [fn(images[i:i + batch_size].to(device=device, dtype=dtype)).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def train_feature_classifier(images: Tensor, labels: Tensor, *, name: str, steps: int = 2000,
                             batch_size: int = 128, seed: int = 0, progress: bool = True) -> tuple[FeatureClassifier, float]:
    """Train (or load from the checkpoint cache) a :class:`FeatureClassifier`; return it (eval mode) and its
    accuracy on a held-out 20 % split.

    The split is a seeded permutation (``seed``); the network minimises the cross-entropy
    −(1/B) Σ_b log softmax(f(x_b))_{y_b} on random training batches with :func:`fmlib.train.train` (AdamW,
    EMA, cache). The cache key holds a digest of ``images`` and ``labels``, so other data give another run.
    The returned model is the EMA model, in eval mode, on the training device (:func:`fmlib.runtime.get_device`).

    Args:
        images: [N, C, H, W] with H = W, values in [−1, 1]; labels: [N] integer classes 0..K−1.
        name: the run's name in the cache.
        steps, batch_size, seed: training length, batch size, seed of the split, weights and batches.
        progress: show the trainer's progress bar.

    Returns:
        (classifier, held-out accuracy in [0, 1]).

    Raises:
        ValueError: bad shapes, non-square images, NaN, fewer than 10 images, fewer than 2 classes.
    """
    from . import train as _train  # local: fmlib.train imports are heavy and only needed here

    images = _check_images(images, name="images")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be square, got {tuple(images.shape)}")
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must be a [N] tensor with N = {images.shape[0]}, got {got}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if images.shape[0] < 10:
        raise ValueError(f"need at least 10 images to train and hold out 20 %, got {images.shape[0]}")
    labels = labels.long().cpu()
    if labels.min() < 0:
        raise ValueError("labels must be non-negative")
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise ValueError("need at least 2 classes")
    images = images.detach().float().cpu()

    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(0.2 * images.shape[0]))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global RNG
        torch.manual_seed(seed)
        model = FeatureClassifier(images.shape[-1], num_classes, in_channels=images.shape[1])

    train_x, train_y = images[train_idx], labels[train_idx]
    on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def loss_fn(net: nn.Module, bs: int, generator: torch.Generator) -> Tensor:
        device = _model_device(net)
        if device not in on_device:
            on_device[device] = (train_x.to(device), train_y.to(device))
        xs, ys = on_device[device]
        idx = torch.randint(xs.shape[0], (bs,), generator=generator, device=generator.device).to(device)
        return F.cross_entropy(net(xs[idx]), ys[idx])

    config = _train.TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, ema_decay=0.995, seed=seed)
    key = {"what": "fmlib.metrics.FeatureClassifier", "data": _tensor_digest(images, labels),
           "split": f"seeded permutation {seed}, 20 % held out", "loss": "cross-entropy"}
    result = _train.train(model, loss_fn, config, name=name, key=key, progress=progress)
    classifier = result.model
    classifier.eval()
    logits = _predict(classifier, classifier, images[test_idx])
    accuracy = float((logits.argmax(dim=1) == labels[test_idx]).float().mean())
    return classifier, accuracy


def _sqrtm_psd(a: Tensor) -> Tensor:
    """The symmetric PSD square root of a symmetric matrix (eigendecomposition; eigenvalues clamped at 0)."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _check_gaussian(mean: Tensor | np.ndarray, cov: Tensor | np.ndarray, name: str) -> tuple[Tensor, Tensor]:
    mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
    d = mean.shape[-1] if mean.dim() == 1 else -1
    if mean.dim() != 1 or tuple(cov.shape) != (d, d):
        raise ValueError(f"{name}: need mean [D] and cov [D, D], got {tuple(mean.shape)} and {tuple(cov.shape)}")
    if not bool(torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        raise ValueError(f"{name}: mean and cov must be finite")
    scale = max(1.0, float(cov.abs().max()))
    if not torch.allclose(cov, cov.T, atol=1e-10 * scale) or float(torch.linalg.eigvalsh(cov).min()) < -1e-9 * scale:
        raise ValueError(f"{name}: cov must be symmetric positive semi-definite")
    return mean, cov


def gaussian_w2_squared(mean0: Tensor | np.ndarray, cov0: Tensor | np.ndarray, mean1: Tensor | np.ndarray,
                        cov1: Tensor | np.ndarray) -> float:
    """W2²(N(m0, S0), N(m1, S1)) = ‖m0 − m1‖² + tr(S0 + S1 − 2 (S0^{1/2} S1 S0^{1/2})^{1/2}).

    The one implementation of the Gaussian (Bures–Wasserstein) formula: the Fréchet distance, the optimal
    transport chapter's Gaussian W2 and the latent chapter's bound all call it. Square roots by symmetric
    eigendecomposition in float64 (eigenvalues clamped at 0, so singular covariances are fine: accuracy
    about √(rounding) relative there); the result is clipped at 0. For S0 = I, S1 = s² I in D dimensions it
    is ‖m0 − m1‖² + D (1 − s)².

    Raises:
        ValueError: shapes, non-finite entries, different dimensions, or a covariance that is not symmetric
            positive semi-definite (up to rounding).
    """
    m0, s0 = _check_gaussian(mean0, cov0, "first Gaussian")
    m1, s1 = _check_gaussian(mean1, cov1, "second Gaussian")
    if m0.shape != m1.shape:
        raise ValueError(f"dimensions differ: {m0.shape[0]} and {m1.shape[0]}")
    r = _sqrtm_psd(s0)
    cross = torch.linalg.eigvalsh((r @ s1 @ r + (r @ s1 @ r).T) / 2).clamp_min(0).sqrt().sum()
    return max(float((m0 - m1).square().sum() + torch.trace(s0 + s1) - 2 * cross), 0.0)


def frechet_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] (float64).

    FD = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}), with μ the sample mean and Σ the
    unbiased sample covariance (divisor N − 1) of each set: the squared W2 distance between N(μ_a, Σ_a) and
    N(μ_b, Σ_b) (the "FID" formula, here in the features of our own classifier), computed by
    :func:`gaussian_w2_squared` (singular covariances, e.g. fewer points than features, are fine). The value
    is squared (no square root), clipped at 0; identical sets give 0 up to rounding.

    Args:
        feat_a: [N, F]; feat_b: [M, F] (N, M ≥ 2).

    Raises:
        ValueError: shape mismatch, fewer than 2 rows, NaN.
    """
    a, b = _pair(feat_a, feat_b, names=("feat_a", "feat_b"), min_points=2)
    a, b = a.double(), b.double()
    return gaussian_w2_squared(a.mean(0), torch.atleast_2d(torch.cov(a.T)),
                               b.mean(0), torch.atleast_2d(torch.cov(b.T)))


def kernel_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """KID: unbiased MMD² with the cubic polynomial kernel.

    k(u, v) = (uᵀv / F + 1)³ and, for a [N, F], b [M, F] (N, M ≥ 2),
    KID = (1/(N(N−1))) Σ_{i≠i'} k(a_i, a_{i'}) + (1/(M(M−1))) Σ_{j≠j'} k(b_j, b_{j'}) − (2/(NM)) Σ_{i,j} k(a_i, b_j).
    Its expectation is exactly the population MMD² (0 when both come from one distribution), so single values
    can be slightly negative; they are *not* clipped. Computed in float64 on all pairs (memory O((N + M)²)).

    Raises:
        ValueError: shape mismatch, fewer than 2 rows, NaN.
    """
    a, b = _pair(feat_a, feat_b, names=("feat_a", "feat_b"), min_points=2)
    n, m, d = a.shape[0], b.shape[0], a.shape[1]

    def kernel(u: Tensor, v: Tensor) -> Tensor:
        return (u @ v.T / d + 1.0) ** 3

    k_aa, k_bb = kernel(a, a), kernel(b, b)
    term_a = (k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
    term_b = (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
    cross = kernel(a, b).mean()
    return float(term_a + term_b - 2.0 * cross)


def compare_images(samples: Tensor, data: Tensor, data_ref: Tensor, classifier: FeatureClassifier) -> dict[str, MetricReport]:
    """Fréchet distance (``fd``) and KID (``kid``) of samples vs data in classifier features, with floors.

    Features φ = ``classifier.features`` [N, F] are computed without grad in batches on the classifier's device;
    ``value = metric(φ(samples), φ(data))``, ``floor = metric(φ(data_ref), φ(data))``.

    Args:
        samples: [N, C, H, W] model images in [−1, 1]; data: [M, C, H, W]; data_ref: [N, C, H, W], independent of
            ``data`` (e.g. a held-out split); any device.
        classifier: a trained :class:`FeatureClassifier` (see :func:`train_feature_classifier`).

    Returns:
        ``{"fd": MetricReport, "kid": MetricReport}``.

    Raises:
        ValueError: wrong image shapes, NaN, fewer than 2 images, ``len(samples) != len(data_ref)``.
    """
    sets = {"samples": samples, "data": data, "data_ref": data_ref}
    for key, value in sets.items():
        _check_images(value, name=key)
        if value.shape[0] < 2:
            raise ValueError(f"{key} needs at least 2 images, got {value.shape[0]}")
    if samples.shape[0] != data_ref.shape[0]:
        raise ValueError(f"samples and data_ref must have the same number of images for the floor to be "
                         f"comparable; got {samples.shape[0]} and {data_ref.shape[0]}")
    was_training = classifier.training
    classifier.eval()
    try:
        feats = {key: _predict(classifier, classifier.features, value.detach()) for key, value in sets.items()}
    finally:
        classifier.train(was_training)
    out: dict[str, MetricReport] = {}
    for name, fn in (("fd", frechet_distance), ("kid", kernel_distance)):
        out[name] = MetricReport(name, fn(feats["samples"], feats["data"]), fn(feats["data_ref"], feats["data"]))
    return out


# ------------------------------------------------------------------------------------------ trajectories


def _trajectory(trajectory: Tensor | np.ndarray) -> Tensor:
    """Validate a recorded trajectory [T, B, ...] (T ≥ 2 time points, finite) and return it as [T, B, D] float64."""
    traj = _as_float64(trajectory, name="trajectory")
    if traj.dim() < 3:
        raise ValueError(f"trajectory must have shape [T, B, D] (time first, e.g. solve_ode(..., record=True)"
                         f".trajectory), got {tuple(traj.shape)}")
    if traj.shape[0] < 2 or traj.shape[1] < 1:
        raise ValueError(f"trajectory needs at least 2 time points and 1 sample, got shape {tuple(traj.shape)}")
    if not torch.isfinite(traj).all():
        raise ValueError("trajectory contains NaN or infinite values")
    return traj.flatten(2)


def trajectory_curvature(trajectory: Tensor | np.ndarray, *, reduce: str = "mean") -> float:
    """Excess length of sampled paths, from the ratios r_b = L_b / ‖x_1 − x_0‖ − 1 with
    L_b = Σ_k ‖x_{t_{k+1}} − x_{t_k}‖, summarised over the samples b by ``reduce``:

    * ``"mean"``: E_b[r_b];
    * ``"median"``: the median of r_b;
    * ``"pooled"``: Σ_b L_b / Σ_b ‖x_1 − x_0‖ − 1, the excess length of all paths together;
    * ``"max"``: the largest r_b.

    ``trajectory``: [T, B, ...] (T time points, B samples; image dimensions are flattened). 0 for straight
    paths traversed in one direction, π/2 − 1 for a half circle. A purely geometric quantity: it does not
    depend on the speed along the curve, nor on the time grid's spacing (only on how finely it resolves the
    curve; the polygonal length converges from below). A path that ends near its start has a tiny chord and a
    huge ratio, and a few of them can carry the mean; the median and the pooled ratio are robust to them.
    Samples that do not move (zero chord) are rejected with ``ValueError`` rather than giving an infinite ratio.

    Raises:
        ValueError: wrong shape, non-finite values, a zero chord, or an unknown ``reduce``.
    """
    reduce = check_choice(reduce, ("mean", "median", "pooled", "max"), what="reduce")
    traj = _trajectory(trajectory)
    length = (traj[1:] - traj[:-1]).norm(dim=-1).sum(0)
    chord = (traj[-1] - traj[0]).norm(dim=-1)
    if (chord <= 1e-12 * (1 + length)).any():
        raise ValueError("some trajectories end where they start (zero chord): curvature is undefined")
    if reduce == "pooled":
        return (length.sum() / chord.sum() - 1).item()
    ratio = length / chord - 1
    return {"mean": ratio.mean, "median": ratio.median, "max": ratio.max}[reduce]().item()


def straightness_gap(trajectory: Tensor | np.ndarray) -> float:
    """Normalised straightness gap of rectified flow on a uniform grid over t ∈ [0, 1]:

        S = E ∫_0^1 ‖ẋ_t − (x_1 − x_0)‖² dt / E ‖x_1 − x_0‖²,

    with ẋ_t estimated by forward differences (T − 1) (x_{t_{k+1}} − x_{t_k}) on the T equally spaced
    times of ``trajectory`` [T, B, ...]. S = 0 exactly when every path is a straight line traversed at
    constant speed; unlike :func:`trajectory_curvature` it also counts changes of speed. Since the mean of
    ẋ_t over [0, 1] is the chord, S is the (normalised) time-variance of the velocity along each path.

    Raises:
        ValueError: wrong shape, non-finite values, or all samples have a zero chord.
    """
    traj = _trajectory(trajectory)
    steps = traj.shape[0] - 1
    chord = traj[-1] - traj[0]
    velocity = (traj[1:] - traj[:-1]) * steps
    denominator = chord.pow(2).sum(-1).mean()
    if denominator <= 0:
        raise ValueError("every trajectory ends where it starts: the straightness gap is undefined")
    return (((velocity - chord) ** 2).sum(-1).mean() / denominator).item()
