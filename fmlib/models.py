"""Networks: a time-conditioned MLP for low-dimensional data, a small U-Net for images, an autoencoder.

Every model is called as ``model(x, t)`` or ``model(x, t, y)`` with x [B, ...], t a float, 0-d or [B]
tensor in [0, 1], and y [B] integer labels (class-conditional models only; ``None`` means the null label).
The output has the shape of x. Time enters through a sinusoidal embedding of t.

Class-conditional models (``num_classes=K``) embed K + 1 labels: 0, …, K − 1 are the classes and K is the
null label ∅ (:attr:`MLP.null_label`), which classifier-free guidance trains by label dropout
(:func:`fmlib.guidance.drop_labels`) and uses for the unconditional velocity v(x, t, ∅).

All models normalise per sample (GroupNorm, no BatchNorm), so sample i of the output depends on sample i of
the input only: the per-sample divergences of :mod:`fmlib.likelihood` are exact.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import as_time

__all__ = ["DEFAULT_MAX_FREQ", "SinusoidalTimeEmbedding", "MLP", "UNet", "Autoencoder"]

DEFAULT_MAX_FREQ: float = 30.0
"""The highest angular frequency of the time embedding (see :class:`SinusoidalTimeEmbedding`).

Chosen by measurement for t ∈ [0, 1] (``benchmarks/time_embedding.py``, 8 Gaussians, the quick 2-D model,
3000 steps). With the transformer-style 1000 (meant for integer positions in the thousands) the trained velocity
field wiggles in t: its total variation along t is 3.2× larger on a 4001-point grid than on a 65-point one,
midpoint and RK4 errors against a tight reference stop falling with NFE, and dopri5 needs 380 NFE at 1e-5.
With 100 the field is smooth (ratio 1.015) but the errors fall at their order only beyond ~32 NFE (dopri5: 98);
with 30 (about five periods over [0, 1]) the ratio is 1.001, the Euler, midpoint and RK4 errors fall
monotonically at their orders from 4 to 128 NFE, and dopri5 needs 68 NFE at 1e-5 (the exact marginal field of
the same data: 74), with W2 0.313 against 0.310 for 1000 (floor 0.378); 10 is as smooth but fits worse (W2
0.324)."""


def _positive_int(value: object, *, name: str) -> int:
    """``value`` as an int ≥ 1, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_input(x: object, *, shape: tuple[int | None, ...], what: str) -> Tensor:
    """Raise unless ``x`` is a floating tensor [B, *shape] (``None`` entries are free); return it."""
    if not torch.is_tensor(x):
        raise TypeError(f"{what}: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() != 1 + len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape[1:])):
        want = "[B, " + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{what}: x must have shape {want}, got {tuple(x.shape)}")
    return x


class SinusoidalTimeEmbedding(nn.Module):
    """t [B] ↦ [sin(ω_j t), cos(ω_j t)]_j of size ``dim``, with frequencies ω_j geometric from 1 to ``max_freq``.

    With h = dim / 2 frequencies, ω_j = max_freq^{j / (h − 1)} for j = 0, …, h − 1 (ω_0 = 1, ω_{h−1} =
    max_freq; h = 1 gives ω_0 = 1). The output is ``[sin(ω_0 t), …, sin(ω_{h−1} t), cos(ω_0 t), …,
    cos(ω_{h−1} t)]``: at t = 0 the first half is 0 and the second half 1. The low frequencies resolve
    t ∈ [0, 1] coarsely, the high ones finely. ‖de/dt‖ = sqrt(Σ_j ω_j²) at every t, so ``max_freq`` bounds how
    fast a network built on e can vary in t; the default :data:`DEFAULT_MAX_FREQ` suits t ∈ [0, 1].

    Raises:
        ValueError: ``dim`` not a positive even int, or ``max_freq`` < 1.
    """

    freqs: Tensor

    def __init__(self, dim: int, max_freq: float = DEFAULT_MAX_FREQ) -> None:
        super().__init__()
        dim = _positive_int(dim, name="dim")
        if dim % 2:
            raise ValueError(f"dim must be even (half sines, half cosines), got {dim}")
        if not math.isfinite(max_freq) or max_freq < 1:
            raise ValueError(f"max_freq must be a finite number ≥ 1, got {max_freq!r}")
        self.dim = dim
        self.max_freq = float(max_freq)
        half = dim // 2
        exponents = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        self.register_buffer("freqs", (self.max_freq ** exponents).float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """t [B] (any real values) → embedding [B, dim] in t's floating dtype.

        Raises:
            ValueError: t is not a 1-D tensor.
        """
        if not torch.is_tensor(t) or t.dim() != 1:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"SinusoidalTimeEmbedding expects t of shape [B], got {shape}")
        if not t.is_floating_point():
            t = t.float()
        freqs = self.freqs if self.freqs.dtype == t.dtype else self.freqs.to(t.dtype)
        angles = t[:, None] * freqs[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_freq={self.max_freq:g}"


class _Configured(nn.Module):
    """A model that remembers its constructor's arguments, so a checkpoint can rebuild it
    (:func:`fmlib.checkpoint.load_model`)."""

    _config: dict

    def config(self) -> dict:
        """The constructor's keyword arguments (plain numbers, strings, lists, None): ``type(m)(**m.config())``
        builds the same architecture."""
        return dict(self._config)


class _Labelled(_Configured):
    """Shared label handling: ``num_classes`` K (or None), the null label K, and label validation."""

    num_classes: int | None

    def _init_labels(self, num_classes: int | None, emb_dim: int) -> None:
        if num_classes is not None:
            num_classes = _positive_int(num_classes, name="num_classes")
            self.label_emb: nn.Embedding | None = nn.Embedding(num_classes + 1, emb_dim)
        else:
            self.label_emb = None
        self.num_classes = num_classes

    @property
    def null_label(self) -> int | None:
        """The index of the null label ∅ (= ``num_classes``), or None for an unconditional model."""
        return self.num_classes

    def _labels(self, y: Tensor | int | None, batch: int, device: torch.device) -> Tensor | None:
        """Validated labels [batch] (long, on ``device``); ``None`` → the null label; None if unconditional.

        Raises:
            ValueError: labels given to an unconditional model; wrong shape, dtype or range.
        """
        name = type(self).__name__
        if self.num_classes is None:
            if y is not None:
                raise ValueError(f"this {name} is unconditional (num_classes=None) but labels y were given; "
                                 "build it with num_classes=K to use labels")
            return None
        if y is None:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if isinstance(y, numbers.Integral) and not isinstance(y, bool):
            y = torch.tensor(int(y))
        if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            kind = y.dtype if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"{name}: labels y must be integers (a [B] integer tensor), got {kind}")
        if y.dim() == 0:
            y = y.reshape(1).expand(batch)
        if y.dim() != 1 or y.shape[0] != batch:
            raise ValueError(f"{name}: labels y must have shape [{batch}], got {tuple(y.shape)}")
        y = y.to(device=device, dtype=torch.long)
        if y.numel() and (y.min() < 0 or y.max() > self.num_classes):
            raise ValueError(f"{name}: labels must lie in 0..{self.num_classes} (classes 0..{self.num_classes - 1}, "
                             f"null label {self.num_classes}); got values in [{y.min().item()}, {y.max().item()}]")
        return y


class MLP(_Labelled):
    """Velocity MLP for x [B, dim]: ``depth`` hidden layers of width ``hidden`` (SiLU), input [x, emb(t)(, emb(y))].

    ``num_classes`` enables labels; the embedding has ``num_classes + 1`` rows, the last one (index
    ``num_classes`` = :attr:`null_label`) being the null label ∅ used for classifier-free guidance.

    f(x, t, y) = W_out σ(… σ(W_1 [x, e(t), e(y)] + b_1) …) + b_out with σ = SiLU, e(t) the
    :class:`SinusoidalTimeEmbedding` of size ``time_dim`` and e(y) a learned embedding of size ``time_dim``.
    Output [B, dim].

    Raises:
        ValueError: non-positive sizes; in ``forward``: x not [B, dim], t outside [0, 1] or of the wrong
            shape, labels on an unconditional model, labels out of range.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None, max_freq: float = DEFAULT_MAX_FREQ) -> None:
        super().__init__()
        self._config = {"dim": dim, "hidden": hidden, "depth": depth, "time_dim": time_dim,
                        "num_classes": num_classes, "max_freq": float(max_freq)}
        self.dim = _positive_int(dim, name="dim")
        hidden = _positive_int(hidden, name="hidden")
        depth = _positive_int(depth, name="depth")
        self.time_emb = SinusoidalTimeEmbedding(_positive_int(time_dim, name="time_dim"), max_freq)
        self._init_labels(num_classes, time_dim)
        width_in = dim + time_dim * (1 if num_classes is None else 2)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(width_in if i == 0 else hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """x [B, dim], t (number, 0-d, [1] or [B]) in [0, 1], y [B] labels or None → [B, dim]."""
        x = _check_input(x, shape=(self.dim,), what="MLP")
        t = as_time(t, x.shape[0], like=x)
        features = [x, self.time_emb(t)]
        labels = self._labels(y, x.shape[0], x.device)
        if labels is not None:
            features.append(self.label_emb(labels).to(x.dtype))
        return self.net(torch.cat(features, dim=1))


def _groups(channels: int) -> int:
    """The number of GroupNorm groups: the largest of 8, 4, 2, 1 that divides ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + W e;  out = skip(x) + conv(dropout(SiLU(GN(h)))), with e the (time, label) embedding."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Down(nn.Module):
    """Halve H and W with a stride-2 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Up(nn.Module):
    """Double H and W by nearest-neighbour upsampling (the next residual block's convolutions smooth it)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class UNet(_Labelled):
    """A small convolutional U-Net for images x [B, C, H, W] (8×8 digits, 28×28 MNIST).

    Residual blocks with GroupNorm and SiLU, time (and optional class) embedding added in each block,
    ``len(channel_mults) − 1`` down/up-samplings (H and W must be divisible by 2^(len − 1)), skip connections.
    ``num_classes`` enables labels with a null label at index ``num_classes`` (see :class:`MLP`).

    Layout: a 3×3 input convolution to ``base_channels``; level i has ``num_res_blocks`` residual blocks of
    ``base_channels · channel_mults[i]`` channels, then (except at the last level) a stride-2 downsampling;
    two residual blocks in the middle; the decoder mirrors it with ``num_res_blocks + 1`` blocks per level,
    each taking the matching encoder activation concatenated along channels, and nearest-neighbour
    upsampling between levels; GroupNorm, SiLU and a
    zero-initialised 3×3 output convolution (the untrained model outputs 0). The embedding
    e = MLP(sinusoid(t)) (+ label embedding) of size ``time_dim`` enters every block as a per-channel shift.
    8×8 inputs suit ``channel_mults=(1, 2)`` (8 → 4); 28×28 ones ``(1, 2, 2)`` (28 → 14 → 7).

    Raises:
        ValueError: bad sizes; in ``forward``: x not [B, in_channels, H, W] with H, W divisible by
            2^(len(channel_mults) − 1), t outside [0, 1], labels on an unconditional model or out of range.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
                 num_res_blocks: int = 1, time_dim: int = 128, num_classes: int | None = None,
                 dropout: float = 0.0, max_freq: float = DEFAULT_MAX_FREQ) -> None:
        super().__init__()
        self._config = {"in_channels": in_channels, "base_channels": base_channels,
                        "channel_mults": list(channel_mults), "num_res_blocks": num_res_blocks, "time_dim": time_dim,
                        "num_classes": num_classes, "dropout": float(dropout), "max_freq": float(max_freq)}
        self.in_channels = _positive_int(in_channels, name="in_channels")
        base_channels = _positive_int(base_channels, name="base_channels")
        num_res_blocks = _positive_int(num_res_blocks, name="num_res_blocks")
        time_dim = _positive_int(time_dim, name="time_dim")
        channel_mults = tuple(channel_mults)
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level, e.g. (1, 2)")
        for m in channel_mults:
            _positive_int(m, name="each channel_mults entry")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.channel_mults = channel_mults
        self.factor = 2 ** (len(channel_mults) - 1)

        self.time_emb = nn.Sequential(SinusoidalTimeEmbedding(time_dim, max_freq), nn.Linear(time_dim, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        self._init_labels(num_classes, time_dim)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        ch = base_channels
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(_ResBlock(ch, base_channels * mult, time_dim, dropout))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(_Down(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, time_dim, dropout), _ResBlock(ch, ch, time_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_ResBlock(ch + skips.pop(), base_channels * mult, time_dim, dropout))
                ch = base_channels * mult
            if level > 0:
                self.up.append(_Up())
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """x [B, C, H, W], t (number, 0-d, [1] or [B]) in [0, 1], y [B] labels or None → [B, C, H, W]."""
        x = _check_input(x, shape=(self.in_channels, None, None), what="UNet")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(f"UNet with {len(self.channel_mults)} levels needs H and W divisible by {self.factor}, "
                             f"got {tuple(x.shape[2:])}; choose channel_mults with fewer levels")
        t = as_time(t, x.shape[0], like=x)
        emb = self.time_emb(t)
        labels = self._labels(y, x.shape[0], x.device)
        if labels is not None:
            emb = emb + self.label_emb(labels).to(emb.dtype)
        emb = F.silu(emb)

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, _ResBlock) else block(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(block, _ResBlock) else block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Autoencoder(_Configured):
    """A small convolutional autoencoder for latent flow matching: ``encode`` x [B, C, H, W] → z [B, latent_dim],
    ``decode`` z → x̂, ``forward`` returns x̂. Trained with MSE (see :func:`fmlib.train.train`).

    The encoder halves the image while its side is even and larger than 4, at most twice (8 → 4;
    28 → 14 → 7; 16 → 8 → 4), doubling the channels each time, then maps the flattened features linearly to
    z. The decoder mirrors it (linear, nearest upsampling + convolutions) and ends with a linear 3×3
    convolution: x̂ is not squashed into [−1, 1] (clamp it for display). Deterministic (no sampling in z).

    Raises:
        ValueError: non-positive sizes; x not [B, in_channels, image_size, image_size]; z not [B, latent_dim].
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, latent_dim: int = 8, base_channels: int = 32) -> None:
        super().__init__()
        self._config = {"in_channels": in_channels, "image_size": image_size, "latent_dim": latent_dim,
                        "base_channels": base_channels}
        self.in_channels = _positive_int(in_channels, name="in_channels")
        self.image_size = _positive_int(image_size, name="image_size")
        self.latent_dim = _positive_int(latent_dim, name="latent_dim")
        base_channels = _positive_int(base_channels, name="base_channels")
        size, downs = image_size, 0
        while size % 2 == 0 and size > 4 and downs < 2:
            size, downs = size // 2, downs + 1
        self.feature_shape = (base_channels * 2 ** downs, size, size)

        enc: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 3, padding=1), nn.SiLU()]
        ch = base_channels
        for _ in range(downs):
            enc += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.SiLU(),
                    nn.Conv2d(2 * ch, 2 * ch, 3, padding=1), nn.SiLU()]
            ch *= 2
        enc += [nn.Flatten(), nn.Linear(ch * size * size, latent_dim)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Linear(latent_dim, ch * size * size), nn.SiLU(),
                                nn.Unflatten(1, self.feature_shape)]
        for _ in range(downs):
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch // 2, 3, padding=1), nn.SiLU(),
                    nn.Conv2d(ch // 2, ch // 2, 3, padding=1), nn.SiLU()]
            ch //= 2
        dec.append(nn.Conv2d(ch, in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        """x [B, in_channels, image_size, image_size] → z [B, latent_dim]."""
        s = self.image_size
        return self.encoder(_check_input(x, shape=(self.in_channels, s, s), what="Autoencoder.encode"))

    def decode(self, z: Tensor) -> Tensor:
        """z [B, latent_dim] → x̂ [B, in_channels, image_size, image_size]."""
        return self.decoder(_check_input(z, shape=(self.latent_dim,), what="Autoencoder.decode"))

    def forward(self, x: Tensor) -> Tensor:
        """x ↦ decode(encode(x)), same shape as x."""
        return self.decode(self.encode(x))
