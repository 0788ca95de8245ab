"""Sample-quality metrics, each reported next to its floor.

A metric between model samples and data means little alone: finite samples of the data itself are at a
positive distance. :func:`compare_samples` therefore reports the metric between two independent data
samples of the same size (the floor) beside the model's value.

* ``wasserstein2``: exact W2 between empirical measures (POT's network simplex ``ot.emd2``, squared
  Euclidean cost, uniform weights); Sinkhorn is slower and biased at these sizes.
* ``sliced_wasserstein2``: sqrt of the mean over random directions θ of W2²(θᵀX, θᵀY) (1-D, sorted).
* ``energy_distance``: 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (V-statistic).
* Images: ``frechet_distance`` ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) and ``kernel_distance``
  (KID: unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb / d + 1)³) in the feature space of a
  small classifier that fmlib trains on the same data (cached like any model; no downloaded weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
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
]


def wasserstein2(x: Tensor, y: Tensor) -> float:
    """Exact W2 between the empirical measures of x [N, D] and y [M, D]. Raises ``ValueError`` on shape mismatch
    or NaN input."""
    raise NotImplementedError


def sliced_wasserstein2(x: Tensor, y: Tensor, *, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 with ``n_projections`` seeded random unit directions (x, y: [N, D], equal N)."""
    raise NotImplementedError


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance (V-statistic, ≥ 0) between x [N, D] and y [M, D]."""
    raise NotImplementedError


@dataclass(frozen=True)
class MetricReport:
    """``value``: metric(samples, data); ``floor``: metric(data, independent data) of the same sizes."""

    name: str
    value: float
    floor: float

    def __str__(self) -> str:
        return f"{self.name} = {self.value:.4f} (floor {self.floor:.4f})"


def compare_samples(samples: Tensor, data: Tensor, data_ref: Tensor,
                    metrics: tuple[str, ...] = ("w2", "sw2", "energy")) -> dict[str, MetricReport]:
    """Each metric (``w2``, ``sw2``, ``energy``) of (samples, data) with its floor (data_ref, data)."""
    raise NotImplementedError


class FeatureClassifier(nn.Module):
    """A small CNN classifier for [B, 1, H, W] images; ``features(x)`` returns the penultimate layer [B, F]."""

    def __init__(self, image_size: int, num_classes: int = 10, feature_dim: int = 64) -> None:
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def train_feature_classifier(images: Tensor, labels: Tensor, *, name: str, steps: int = 2000,
                             batch_size: int = 128, seed: int = 0, progress: bool = True) -> tuple[FeatureClassifier, float]:
    """Train (or load from the checkpoint cache) a :class:`FeatureClassifier`; return it (eval mode) and its
    accuracy on a held-out 20 % split."""
    raise NotImplementedError


def frechet_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] (float64, scipy's sqrtm)."""
    raise NotImplementedError


def kernel_distance(feat_a: Tensor, feat_b: Tensor) -> float:
    """KID: unbiased MMD² with the cubic polynomial kernel."""
    raise NotImplementedError


def compare_images(samples: Tensor, data: Tensor, data_ref: Tensor, classifier: FeatureClassifier) -> dict[str, MetricReport]:
    """Fréchet distance (``fd``) and KID (``kid``) of samples vs data in classifier features, with floors."""
    raise NotImplementedError
