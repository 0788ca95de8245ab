"""Networks: a time-conditioned MLP for low-dimensional data, a small U-Net for images, an autoencoder.

Every model is called as ``model(x, t)`` or ``model(x, t, y)`` with x [B, ...], t a float, 0-d or [B]
tensor in [0, 1], and y [B] integer labels (class-conditional models only; ``None`` means the null label).
The output has the shape of x. Time enters through a sinusoidal embedding of t.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SinusoidalTimeEmbedding", "MLP", "UNet", "Autoencoder"]


class SinusoidalTimeEmbedding(nn.Module):
    """t [B] ↦ [sin(ω_j t), cos(ω_j t)]_j of size ``dim``, with frequencies ω_j geometric from 1 to ``max_freq``."""

    def __init__(self, dim: int, max_freq: float = 1000.0) -> None:
        raise NotImplementedError

    def forward(self, t: Tensor) -> Tensor:
        raise NotImplementedError


class MLP(nn.Module):
    """Velocity MLP for x [B, dim]: ``depth`` hidden layers of width ``hidden`` (SiLU), input [x, emb(t)(, emb(y))].

    ``num_classes`` enables labels; the embedding has ``num_classes + 1`` rows, the last one (index
    ``num_classes`` = :attr:`null_label`) being the null label ∅ used for classifier-free guidance.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None) -> None:
        raise NotImplementedError

    @property
    def null_label(self) -> int | None:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class UNet(nn.Module):
    """A small convolutional U-Net for images x [B, C, H, W] (8×8 digits, 28×28 MNIST).

    Residual blocks with GroupNorm and SiLU, time (and optional class) embedding added in each block,
    ``len(channel_mults) − 1`` down/up-samplings (H and W must be divisible by 2^(len − 1)), skip connections.
    ``num_classes`` enables labels with a null label at index ``num_classes`` (see :class:`MLP`).
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
                 num_res_blocks: int = 1, time_dim: int = 128, num_classes: int | None = None,
                 dropout: float = 0.0) -> None:
        raise NotImplementedError

    @property
    def null_label(self) -> int | None:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class Autoencoder(nn.Module):
    """A small convolutional autoencoder for latent flow matching: ``encode`` x [B, C, H, W] → z [B, latent_dim],
    ``decode`` z → x̂, ``forward`` returns x̂. Trained with MSE (see :func:`fmlib.train.train`)."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, latent_dim: int = 8, base_channels: int = 32) -> None:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError
