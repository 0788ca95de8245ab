"""Standard training recipes shared by the chapters, sized by the profile.

Chapters that need "a flow-matching model of the moons data on the linear path" call the same recipe with
the same arguments, so the checkpoint cache of :func:`fmlib.train.train` trains it once per build and every
later chapter reuses it. Each recipe's size comes from :func:`fmlib.runtime.by_profile`; explicit arguments
override it (and are part of the cache key).

    >>> run = zoo.toy_flow("moons")                       # MLP velocity model, CondOT path
    >>> run = zoo.toy_flow("moons", scheduler="vp")        # same data, VP path
    >>> run = zoo.image_flow("digits", parametrization="x0")
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from . import data as data_mod
from . import losses, models, paths, runtime
from ._checks import check_choice
from .train import TrainConfig, TrainResult, train

__all__ = ["ToySize", "ImageSize", "toy_size", "image_size", "toy_flow", "toy_conditional_flow", "image_flow",
           "image_noisy_classifier", "autoencoder_steps", "autoencoder"]


@dataclass(frozen=True)
class ToySize:
    """Size of a 2-D run: MLP width/depth and training length."""

    hidden: int
    depth: int
    steps: int
    batch_size: int
    lr: float


@dataclass(frozen=True)
class ImageSize:
    """Size of an image run: U-Net width and training length."""

    base_channels: int
    channel_mults: tuple[int, ...]
    steps: int
    batch_size: int
    lr: float


def toy_size() -> ToySize:
    """The profile's default 2-D size (quick: seconds on a 2-core CPU; full: a GPU run)."""
    return runtime.by_profile(
        quick=ToySize(hidden=128, depth=3, steps=3_000, batch_size=256, lr=2e-3),
        full=ToySize(hidden=256, depth=4, steps=20_000, batch_size=1024, lr=1e-3),
    )


def image_size(dataset: str = "digits") -> ImageSize:
    """The profile's default image size for ``digits`` (8×8) or ``mnist`` (28×28)."""
    if dataset == "digits":
        return runtime.by_profile(
            quick=ImageSize(base_channels=32, channel_mults=(1, 2), steps=1_500, batch_size=128, lr=2e-3),
            full=ImageSize(base_channels=64, channel_mults=(1, 2), steps=20_000, batch_size=256, lr=5e-4),
        )
    if dataset == "mnist":
        return runtime.by_profile(
            quick=ImageSize(base_channels=32, channel_mults=(1, 2, 2), steps=1_500, batch_size=64, lr=2e-3),
            full=ImageSize(base_channels=64, channel_mults=(1, 2, 2), steps=30_000, batch_size=128, lr=5e-4),
        )
    raise ValueError(f"unknown image dataset {dataset!r}; choose 'digits' or 'mnist'")


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def toy_flow(
    dataset: str,
    *,
    scheduler: str = "condot",
    scheduler_kwargs: dict[str, float] | None = None,
    parametrization: str = "velocity",
    size: ToySize | None = None,
    seed: int = 0,
    t_max: float = 1.0,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train (or load) an :class:`fmlib.models.MLP` on the 2-D ``dataset`` with the CFM loss on the affine path
    of ``scheduler`` and the given ``parametrization``.

    ``overrides`` replace fields of the profile's :class:`ToySize` (``steps=…``, ``hidden=…``). ``t_max < 1``
    trims the time range of training. The score parametrization needs it when σ_1 = 0: its target −x0/σ_t blows
    up at t = 1. The x0-, x1- and ε-targets are finite everywhere; what is singular for them is the *conversion*
    to a velocity (x1 at t = 1 when σ_1 = 0, x0 and ε where α_t = 0), which the sampler, not the loss, meets.
    Returns the trainer's :class:`fmlib.train.TrainResult`; ``result.model(x, t)`` is the predicted quantity
    (convert with ``AffinePath.convert`` for a velocity).
    """
    size = replace(size or toy_size(), **overrides)
    path = paths.AffinePath(paths.get_scheduler(scheduler, **(scheduler_kwargs or {})))
    runtime.seed_everything(seed)
    model = models.MLP(dim=2, hidden=size.hidden, depth=size.depth)

    def sample_x1(batch: int, g: torch.Generator) -> torch.Tensor:
        return data_mod.sample_toy(dataset, batch, generator=g)

    loss_fn = losses.cfm_loss_fn(path, sample_x1, parametrization=parametrization, t_max=t_max)

    # full float32 on every device: a 2-D MLP gains nothing from bf16 autocast, and its losses and samples are
    # compared with closed forms to ~1e-3, which bf16's 8-bit mantissa would blur
    config = TrainConfig(steps=size.steps, batch_size=size.batch_size, lr=size.lr, seed=seed, amp=False)
    key = {"recipe": "toy_flow", "dataset": dataset, "path": path.config(), "parametrization": parametrization,
           "t_max": t_max}
    return train(model, loss_fn, config, name=f"toy-{dataset}-{scheduler}-{parametrization}", key=key,
                 progress=progress)


def toy_conditional_flow(
    data: Any,
    *,
    name: str,
    label_dropout: float = 0.2,
    scheduler: str = "condot",
    size: ToySize | None = None,
    seed: int = 0,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train (or load) a class-conditional :class:`fmlib.models.MLP` (velocity, CFM loss) on labelled 2-D
    mixture data ``data`` (a :class:`fmlib.analytic.LabelledMixture`), each label replaced by the null label
    with probability ``label_dropout`` (classifier-free guidance). The mixture's tensors enter the cache key.
    ``overrides`` replace fields of the profile's :class:`ToySize`.
    """
    from .analytic import LabelledMixture
    from .guidance import drop_labels

    if not isinstance(data, LabelledMixture):
        raise TypeError(f"data must be a fmlib.analytic.LabelledMixture, got {type(data).__name__}")
    size = replace(size or toy_size(), **overrides)
    path = paths.AffinePath(paths.get_scheduler(scheduler))
    runtime.seed_everything(seed)
    model = models.MLP(dim=data.mixture.dim, hidden=size.hidden, depth=size.depth, num_classes=data.num_classes)

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> torch.Tensor:
        x1, y = data.sample(batch, generator=g)
        y = drop_labels(y, p=label_dropout, null_label=model.null_label, generator=g)
        device = _model_device(m)
        return losses.conditional_flow_matching_loss(m, path, x1.to(device), y=y.to(device), generator=g)

    config = TrainConfig(steps=size.steps, batch_size=size.batch_size, lr=size.lr, seed=seed, amp=False)
    mix = data.mixture
    key = {"recipe": "toy_conditional_flow", "means": mix.means, "stds": mix.stds, "weights": mix.weights,
           "labels": data.labels, "label_dropout": label_dropout, "path": path.config()}
    return train(model, loss_fn, config, name=name, key=key, progress=progress)


def image_flow(
    dataset: str = "digits",
    *,
    scheduler: str = "condot",
    scheduler_kwargs: dict[str, float] | None = None,
    parametrization: str = "velocity",
    conditional: bool = False,
    label_dropout: float = 0.1,
    size: ImageSize | None = None,
    seed: int = 0,
    t_max: float = 1.0,
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train (or load) an :class:`fmlib.models.UNet` on ``digits`` or ``mnist`` with the CFM loss.

    With ``conditional=True`` the model takes class labels, replaced by the null label with probability
    ``label_dropout`` during training (classifier-free guidance). The training split is the first element of
    ``load_images(dataset).split(0.2, seed=0)``; chapters evaluate against the second.
    """
    from .guidance import drop_labels

    size = replace(size or image_size(dataset), **overrides)
    images = data_mod.load_images(dataset)
    train_set, _ = images.split(0.2, seed=0)
    path = paths.AffinePath(paths.get_scheduler(scheduler, **(scheduler_kwargs or {})))
    runtime.seed_everything(seed)
    num_classes = images.num_classes if conditional else None
    model = models.UNet(in_channels=images.images.shape[1], base_channels=size.base_channels,
                        channel_mults=size.channel_mults, num_classes=num_classes)
    cache: dict[str, torch.Tensor] = {}

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> torch.Tensor:
        device = _model_device(m)
        if "x" not in cache:  # move the data set to the device once
            cache["x"], cache["y"] = train_set.images.to(device), train_set.labels.to(device)
        idx = torch.randint(0, cache["x"].shape[0], (batch,), generator=g).to(device)
        x1 = cache["x"][idx]
        y = None
        if conditional:
            y = drop_labels(cache["y"][idx].cpu(), p=label_dropout, null_label=model.null_label, generator=g).to(device)
        return losses.conditional_flow_matching_loss(m, path, x1, t_max=t_max, y=y, parametrization=parametrization,
                                                     generator=g)

    config = TrainConfig(steps=size.steps, batch_size=size.batch_size, lr=size.lr, seed=seed,
                         warmup_steps=min(200, size.steps // 10), lr_schedule="cosine")
    key = {"recipe": "image_flow", "dataset": images.name, "path": path.config(),
           "parametrization": parametrization, "conditional": conditional, "label_dropout": label_dropout,
           "t_max": t_max}
    return train(model, loss_fn, config, name=f"img-{dataset}-{scheduler}-{parametrization}", key=key,
                 progress=progress)


def image_noisy_classifier(
    dataset: str = "digits",
    *,
    clean_only: bool = False,
    scheduler: str = "condot",
    steps: int | None = None,
    batch_size: int = 128,
    width: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train (or load) a :class:`fmlib.guidance.NoisyImageClassifier` of p_t(y | x_t) on the training split of
    ``digits`` or ``mnist`` (the split of :func:`image_flow`), with :func:`fmlib.guidance.train_noisy_classifier`
    on the path of ``scheduler``; ``clean_only=True`` trains the classifier of clean images (t ≡ 1) instead.
    ``steps`` defaults to the profile's (quick 1,500, full 10,000).
    """
    from .guidance import train_noisy_classifier

    images = data_mod.load_images(dataset)
    train_set, _ = images.split(0.2, seed=0)
    path = paths.AffinePath(paths.get_scheduler(scheduler))

    sample = data_mod.batch_sampler(train_set.images, train_set.labels)
    kind = "clean" if clean_only else "noisy"
    key = {"data": images.name, "split": "load_images(dataset).split(0.2, seed=0)[0]"}
    return train_noisy_classifier(path, sample, images.num_classes, name=f"img-{dataset}-{kind}-classifier",
                                  key=key, clean_only=clean_only,
                                  steps=steps or runtime.by_profile(quick=1_500, full=10_000),
                                  batch_size=batch_size, width=width, seed=seed, progress=progress)


def autoencoder_steps(dataset: str = "digits") -> int:
    """The profile's default training length of :func:`autoencoder` on ``digits`` or ``mnist``."""
    check_choice(dataset, data_mod.IMAGE_DATASETS, what="image dataset")
    return runtime.by_profile(quick=1_500, full=10_000)


def autoencoder(
    dataset: str = "digits",
    latent_dim: int = 8,
    *,
    kl_weight: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Train (or load) the MLP :class:`fmlib.latent.Autoencoder` of ``digits`` or ``mnist`` with
    :func:`fmlib.latent.train_autoencoder` on the flattened training split (the first element of
    ``load_images(dataset).split(0.2, seed=0)``, as :func:`image_flow`'s).

    ``kl_weight`` None gives the deterministic autoencoder (loss ‖x − D(E(x))‖² / d), a number β the
    KL-regularised one (‖x − D(z)‖² / d + β KL(q(z | x) ‖ N(0, I)) / d with z drawn from its posterior).
    ``steps`` defaults to :func:`autoencoder_steps`. The run is named ``ae-{dataset}-{latent_dim}`` (``-kl``
    appended for the KL-regularised one).
    """
    from . import latent

    default_steps = autoencoder_steps(dataset)             # also checks the name
    steps = default_steps if steps is None else steps
    images = data_mod.load_images(dataset)
    train_set, _ = images.split(0.2, seed=0)
    x = train_set.images.reshape(len(train_set), -1)
    name = f"ae-{dataset}-{latent_dim}" + ("" if kl_weight is None else "-kl")
    return latent.train_autoencoder(x, latent_dim, name=name, kl_weight=kl_weight,
                                    steps=steps, seed=seed, progress=progress)

