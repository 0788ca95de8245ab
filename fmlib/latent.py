"""Flow matching in the latent space of an autoencoder, and the terms of its Wasserstein-2 bound.

Pipeline: an encoder E: R^d → R^k and a decoder D: R^k → R^d (:class:`Autoencoder`, deterministic or
KL-regularised), latents z = E(x) normalised to unit scale (:class:`LatentScale`), a flow-matching model
trained on them (:func:`train_latent_flow`), samples x̂ = D(ẑ). :func:`step_seconds` and
:func:`matched_steps` size a competitor's training to the same wall-clock budget.

The bound (derived in the book's latent chapter), with q = E#p the latent data, q̂ the latent model and
L_FM = ∫₀¹ E_{q_t} ‖u_t − v̂_t‖² dt the marginal flow-matching loss:

    W2(p, D#q̂) ≤ R + L_D W2(q, q̂),   R = (E_p ‖x − D(E(x))‖²)^{1/2}           (:func:`pixel_w2_bound`)
    W2(q, q̂)  ≤ (e^{1 + 2 L̂} L_FM)^{1/2},  L̂ the Lipschitz constant of v̂ in z   (:func:`latent_w2_bound`)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from . import losses, models, paths, runtime
from ._checks import check_positive_int, check_real
from .train import LossFn, TrainConfig, TrainResult, train

__all__ = ["Autoencoder", "train_autoencoder", "autoencoder_loss", "kl_to_standard_normal", "encode", "decode",
           "LatentScale", "reconstruction_rmse", "jacobian_spectral_norms", "lipschitz_estimate",
           "latent_w2_bound", "pixel_w2_bound", "marginal_fm_loss", "train_latent_flow", "latent_flow_loss",
           "step_seconds", "matched_steps", "pca_autoencoder", "gaussian_w2"]


def _flat(x: Tensor, dim: int, *, name: str) -> Tensor:
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"{name} must be a floating tensor [N, ...], got {type(x).__name__}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != dim:
        raise ValueError(f"{name} has {flat.shape[1]} features per sample, expected {dim}")
    return flat


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """MLP autoencoder of flattened data: E(x) = MLP_e(x) ∈ R^k, D(z) = MLP_d(z) ∈ R^d (``depth`` hidden SiLU
    layers of width ``hidden`` each, linear outputs).

    With ``variational=True`` the encoder outputs 2k numbers, the mean μ(x) and the log-variance ℓ(x) of a
    Gaussian posterior q(z | x) = N(μ(x), diag e^{ℓ(x)}) (:meth:`posterior`); training samples z from it and
    adds a KL penalty (:func:`autoencoder_loss`), and ``encode`` returns the mean, E(x) = μ(x).

    ``encode(x)`` takes [N, ...] with d features per sample and returns [N, k]; ``decode(z)`` returns
    [N, d] (reshape with :func:`decode`). ``forward(x)`` is D(E(x)) flattened.
    """

    def __init__(self, data_dim: int, latent_dim: int, *, hidden: int = 256, depth: int = 2,
                 variational: bool = False) -> None:
        super().__init__()
        for name, v in (("data_dim", data_dim), ("latent_dim", latent_dim), ("hidden", hidden), ("depth", depth)):
            check_positive_int(v, name)
        if not isinstance(variational, bool):
            raise ValueError(f"variational must be a bool, got {variational!r}")
        self.data_dim, self.latent_dim, self.variational = data_dim, latent_dim, variational
        self.encoder = _mlp([data_dim] + [hidden] * depth + [latent_dim * (2 if variational else 1)])
        self.decoder = _mlp([latent_dim] + [hidden] * depth + [data_dim])

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ(x), ℓ(x)), each [N, k]: mean and log-variance of q(z | x) (variational autoencoders only)."""
        if not self.variational:
            raise ValueError("a deterministic autoencoder has no posterior; build it with variational=True")
        out = self.encoder(_flat(x, self.data_dim, name="x"))
        return out[:, :self.latent_dim], out[:, self.latent_dim:]

    def encode(self, x: Tensor) -> Tensor:
        if self.variational:
            return self.posterior(x)[0]
        return self.encoder(_flat(x, self.data_dim, name="x"))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(_flat(z, self.latent_dim, name="z"))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def pca_autoencoder(x: Tensor, latent_dim: int) -> tuple[Autoencoder, Tensor]:
    """The linear autoencoder of principal components: E(x) = U_kᵀ (x − μ), D(z) = μ + U_k z, with U_k the top
    ``latent_dim`` eigenvectors of the covariance of x [N, d]. Returns (autoencoder, eigenvalues [d] descending);
    its mean squared reconstruction error is the sum of the discarded eigenvalues (population covariance, /N).
    """
    flat = x.reshape(x.shape[0], -1).double()
    d = flat.shape[1]
    if not 1 <= latent_dim <= d:
        raise ValueError(f"latent_dim must be in [1, {d}], got {latent_dim}")
    mu = flat.mean(0)
    cov = (flat - mu).T @ (flat - mu) / flat.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    u = evecs[:, :latent_dim]
    ae = Autoencoder(d, latent_dim, depth=1, hidden=1).double()
    ae.encoder = nn.Linear(d, latent_dim).double()
    ae.decoder = nn.Linear(latent_dim, d).double()
    with torch.no_grad():
        ae.encoder.weight.copy_(u.T)
        ae.encoder.bias.copy_(-(u.T @ mu))
        ae.decoder.weight.copy_(u)
        ae.decoder.bias.copy_(mu)
    return ae.requires_grad_(False), evals.clamp_min(0.0)


def gaussian_w2(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> float:
    """W2 between N(mean_a, cov_a) and N(mean_b, cov_b), covariances PSD and possibly singular: the square root
    of :func:`fmlib.metrics.gaussian_w2_squared` (the formula's one implementation)."""
    from .metrics import gaussian_w2_squared
    return math.sqrt(gaussian_w2_squared(mean_a, cov_a, mean_b, cov_b))


def _digest(*tensors: Tensor) -> str:
    from .metrics import _tensor_digest
    return _tensor_digest(*tensors)


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag e^ℓ) ‖ N(0, I)) = ½ Σ_j (μ_j² + e^{ℓ_j} − 1 − ℓ_j) for each row of μ, ℓ [N, k]; returns [N]."""
    if mean.shape != logvar.shape or mean.dim() != 2:
        raise ValueError(f"mean and logvar must both be [N, k], got {tuple(mean.shape)} and {tuple(logvar.shape)}")
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(1)


def autoencoder_loss(x: Tensor, *, kl_weight: float | None = None) -> LossFn:
    """The trainer's loss (``loss_fn(model, batch_size, generator)``) of an :class:`Autoencoder` on the rows of
    x [N, ...] (flattened to d features):

        deterministic (``kl_weight`` None):  ‖x − D(E(x))‖² / d
        KL-regularised (``kl_weight`` β ≥ 0): ‖x − D(z)‖² / d + β KL(q(z | x) ‖ N(0, I)) / d,
                                              z = μ(x) + e^{ℓ(x)/2} ε, ε ~ N(0, I)

    averaged over a batch of rows drawn uniformly with replacement (the variational form needs a model built
    with ``variational=True``).
    """
    flat = x.reshape(x.shape[0], -1).float()
    beta = None if kl_weight is None else check_real(kl_weight, "kl_weight", low=0.0)
    d = flat.shape[1]

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, flat.shape[0], (batch,), generator=g)
        dev = next(m.parameters()).device
        xb = flat[idx].to(dev)
        if beta is None:
            return (m.decode(m.encode(xb)) - xb).square().mean()
        mean, logvar = m.posterior(xb)
        eps = torch.randn(mean.shape, generator=g).to(dev)
        z = mean + (0.5 * logvar).exp() * eps
        rec = (m.decode(z) - xb).square().sum(1)
        return (rec + beta * kl_to_standard_normal(mean, logvar)).mean() / d

    return loss_fn


def train_autoencoder(x: Tensor, latent_dim: int, *, name: str, steps: int, kl_weight: float | None = None,
                      batch_size: int = 128, lr: float = 2e-3, hidden: int = 256, depth: int = 2, seed: int = 0,
                      progress: bool = True) -> TrainResult:
    """Train (or load from the cache) an :class:`Autoencoder` on x [N, ...] with :func:`autoencoder_loss`
    through :func:`fmlib.train.train` (cache key: a digest of x and ``kl_weight``). ``kl_weight`` None gives
    the deterministic autoencoder, a number β ≥ 0 the KL-regularised (variational) one."""
    flat = x.reshape(x.shape[0], -1).float()
    loss_fn = autoencoder_loss(flat, kl_weight=kl_weight)
    runtime.seed_everything(seed)
    model = Autoencoder(flat.shape[1], latent_dim, hidden=hidden, depth=depth, variational=kl_weight is not None)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, amp=False,
                         warmup_steps=min(100, steps // 10), lr_schedule="cosine")
    key = {"recipe": "autoencoder", "data": _digest(flat), "latent_dim": latent_dim, "kl_weight": kl_weight}
    return train(model, loss_fn, config, name=name, key=key, progress=progress)


@torch.no_grad()
def encode(ae: Autoencoder, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """E(x) for a data set x [N, ...] in batches, on the autoencoder's device; returns [N, k] on the CPU."""
    dev = next(ae.parameters()).device
    dtype = next(ae.parameters()).dtype
    return torch.cat([ae.encode(x[i:i + batch_size].to(dev, dtype)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def decode(ae: Autoencoder, z: Tensor, shape: tuple[int, ...] | None = None, *, batch_size: int = 1024) -> Tensor:
    """D(z) for latents z [N, k] in batches; reshaped to [N, *shape] when ``shape`` is given (CPU)."""
    dev = next(ae.parameters()).device
    dtype = next(ae.parameters()).dtype
    out = torch.cat([ae.decode(z[i:i + batch_size].to(dev, dtype)).cpu() for i in range(0, len(z), batch_size)])
    return out if shape is None else out.reshape(len(z), *shape)


@dataclass(frozen=True)
class LatentScale:
    """z ↦ (z − mean) / scale with one scalar ``scale`` for all coordinates (as latent diffusion's 0.18215 =
    1/scale does). :meth:`fit` takes the mean and the overall standard deviation of latents [N, k]; a chosen
    ``target_std`` gives latents of that std (the scale ablation)."""

    mean: Tensor
    scale: float

    @staticmethod
    def fit(z: Tensor, target_std: float = 1.0) -> "LatentScale":
        if not (math.isfinite(target_std) and target_std > 0):
            raise ValueError(f"target_std must be positive, got {target_std}")
        mean = z.mean(0)
        std = float((z - mean).pow(2).mean().sqrt())
        if not std > 0:
            raise ValueError("latents have zero spread")
        return LatentScale(mean=mean.detach(), scale=std / target_std)

    def normalise(self, z: Tensor) -> Tensor:
        return (z - self.mean.to(z)) / self.scale

    def denormalise(self, zn: Tensor) -> Tensor:
        return zn * self.scale + self.mean.to(zn)


@torch.no_grad()
def reconstruction_rmse(ae: Autoencoder, x: Tensor) -> float:
    """R = (mean_i ‖x_i − D(E(x_i))‖²)^{1/2}, the norm summed over all d coordinates."""
    flat = x.reshape(x.shape[0], -1)
    rec = decode(ae, encode(ae, x)).to(flat)
    return float((flat - rec).pow(2).sum(1).mean().sqrt())


def jacobian_spectral_norms(fn: Callable[[Tensor], Tensor], z: Tensor, *, batch_size: int = 256) -> Tensor:
    """‖∂fn/∂z (z_i)‖₂ (largest singular value of the Jacobian) at each row of z [N, k]; fn maps [B, k] to
    [B, m] row by row. Returns [N]. Forward-mode Jacobians when k ≤ m (a decoder), reverse-mode otherwise;
    rows are processed ``batch_size`` at a time (a batch's Jacobians and their intermediates cost memory)."""
    if z.dim() != 2:
        raise ValueError(f"z must be [N, k], got {tuple(z.shape)}")
    check_positive_int(batch_size, "batch_size")
    from torch.func import jacfwd, jacrev, vmap

    with torch.no_grad():
        m = fn(z[:1]).shape[1]
    # forward mode costs k passes, reverse mode m: take the fewer
    jac = jacfwd if z.shape[1] <= m else jacrev
    jac_fn = vmap(jac(lambda v: fn(v[None])[0]))             # [B, k] -> [B, m, k]
    with warnings.catch_warnings():   # torch's forward-mode set-up calls its deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
        return torch.cat([torch.linalg.matrix_norm(jac_fn(zb).detach(), ord=2) for zb in z.split(batch_size)])


def lipschitz_estimate(fn: Callable[[Tensor], Tensor], z: Tensor, *, batch_size: int = 256) -> float:
    """max_i ‖∂fn/∂z (z_i)‖₂ over the rows of z: the Lipschitz constant of fn restricted to where the samples
    are (a lower estimate of the global one; exact for a linear fn). ``batch_size`` as in
    :func:`jacobian_spectral_norms`."""
    return float(jacobian_spectral_norms(fn, z, batch_size=batch_size).max())


def _nonneg(value: float, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def latent_w2_bound(fm_loss: float, velocity_lipschitz: float) -> float:
    """(e^{1 + 2 L̂} L_FM)^{1/2}: Grönwall's bound of W2(q, q̂) by the marginal flow-matching loss
    L_FM = ∫₀¹ E_{q_t} ‖u_t − v̂_t‖² dt (summed over coordinates) and L̂ = Lip(v̂)."""
    fm_loss = _nonneg(fm_loss, "fm_loss")
    lip = _nonneg(velocity_lipschitz, "velocity_lipschitz")
    return math.sqrt(fm_loss) * math.exp((1.0 + 2.0 * lip) / 2.0)


def pixel_w2_bound(reconstruction: float, decoder_lipschitz: float, latent_w2: float) -> float:
    """R + L_D W2(q, q̂): the bound of W2(p, D#q̂) by the reconstruction error R, Lip(D) and the latent W2."""
    return (_nonneg(reconstruction, "reconstruction")
            + _nonneg(decoder_lipschitz, "decoder_lipschitz") * _nonneg(latent_w2, "latent_w2"))


def marginal_fm_loss(velocity: Callable[[Tensor, Tensor], Tensor], exact: Callable[[Tensor, Tensor], Tensor],
                     x1: Tensor, *, n: int, t_max: float = 0.999, generator: torch.Generator | None = None,
                     batch_size: int = 1024) -> float:
    """Monte Carlo L_FM = E_{t ~ U[0, t_max], x_t} ‖u_t(x_t) − v̂(x_t, t)‖² (summed over coordinates) on the
    linear path x_t = t x1 + (1 − t) x0, x1 drawn from the rows of x1 [M, k], x0 ~ N(0, I); ``exact`` is the
    marginal field u (e.g. :class:`fmlib.analytic.MarginalField` of the empirical latents, whose memory grows
    as batch × M × k: the n points are evaluated ``batch_size`` at a time)."""
    if not 0 < t_max <= 1:
        raise ValueError(f"t_max must be in (0, 1], got {t_max}")
    check_positive_int(batch_size, "batch_size")
    t = t_max * torch.rand(n, generator=generator, dtype=x1.dtype)
    idx = torch.randint(0, x1.shape[0], (n,), generator=generator)
    x0 = torch.randn(n, x1.shape[1], generator=generator, dtype=x1.dtype)
    xt = t[:, None] * x1[idx] + (1 - t[:, None]) * x0
    total = 0.0
    with torch.no_grad():
        for xb, tb in zip(xt.split(batch_size), t.split(batch_size)):
            total += float((exact(xb, tb) - velocity(xb, tb).to(xb)).pow(2).sum())
    return t_max * total / n


def latent_flow_loss(z: Tensor, labels: Tensor | None = None, *, label_dropout: float = 0.2) -> LossFn:
    """The trainer's loss of a velocity model on the rows of z [N, k]: the CFM loss of the linear path
    z_t = t z1 + (1 − t) z0 (:func:`fmlib.losses.conditional_flow_matching_loss`); with ``labels`` [N] each label
    is replaced by the null label with probability ``label_dropout`` (classifier-free guidance)."""
    from .guidance import drop_labels

    z = z.detach().float()
    if z.dim() != 2:
        raise ValueError(f"z must be [N, k], got {tuple(z.shape)}")
    if labels is not None and tuple(labels.shape) != (z.shape[0],):
        raise ValueError(f"labels must be [{z.shape[0]}], got {tuple(labels.shape)}")
    path = paths.AffinePath(paths.get_scheduler("condot"))

    def loss_fn(m: nn.Module, batch: int, g: torch.Generator) -> Tensor:
        idx = torch.randint(0, z.shape[0], (batch,), generator=g)
        dev = next(m.parameters()).device
        y = None
        if labels is not None:
            y = drop_labels(labels[idx], p=label_dropout, null_label=m.null_label, generator=g).to(dev)
        return losses.conditional_flow_matching_loss(m, path, z[idx].to(dev), y=y, generator=g)

    return loss_fn


def train_latent_flow(z: Tensor, labels: Tensor | None = None, *, name: str, steps: int, label_dropout: float = 0.2,
                      hidden: int = 256, depth: int = 3, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
                      progress: bool = True) -> TrainResult:
    """Train (or load) a velocity :class:`fmlib.models.MLP` on latents z [N, k] with :func:`latent_flow_loss`
    (class-conditional with label dropout when ``labels`` [N] are given). Any data [N, k] will do: on flattened
    pixels it is the same model in pixel space."""
    z = z.detach().float()
    loss_fn = latent_flow_loss(z, labels, label_dropout=label_dropout)
    num_classes = None if labels is None else int(labels.max()) + 1
    path = paths.AffinePath(paths.get_scheduler("condot"))
    runtime.seed_everything(seed)
    model = models.MLP(dim=z.shape[1], hidden=hidden, depth=depth, num_classes=num_classes)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, amp=False)
    key = {"recipe": "latent_flow", "latents": _digest(z) if labels is None else _digest(z, labels),
           "label_dropout": label_dropout if labels is not None else None, "path": path.config()}
    return train(model, loss_fn, config, name=name, key=key, progress=progress)


def step_seconds(runs: Mapping[str, tuple[nn.Module, LossFn, int]], *, lr: float = 1e-3, n_steps: int = 10,
                 rounds: int = 3) -> dict[str, float]:
    """Wall-clock seconds of one optimizer step of each run ``name: (model, loss_fn, batch_size)``, measured by
    :func:`fmlib.timing.seconds_per_step` (on a copy; the models are not changed) in ``rounds`` interleaved
    rounds of ``n_steps`` steps each; the minimum over the rounds, the least disturbed measurement on a shared
    machine. Interleaving exposes every run to the same load, so ratios of the results are more robust than
    the times themselves.

    Raises:
        ValueError: no runs, ``n_steps`` or ``rounds`` < 1, a batch size < 1.
    """
    from .timing import seconds_per_step

    if not runs:
        raise ValueError("no runs to time")
    check_positive_int(n_steps, "n_steps")
    check_positive_int(rounds, "rounds")
    best = {name: math.inf for name in runs}
    for _ in range(rounds):
        for name, (model, loss_fn, batch_size) in runs.items():
            cost = seconds_per_step(model, loss_fn, n_steps, batch_size=batch_size, lr=lr)
            best[name] = min(best[name], cost.seconds)
    return best


def matched_steps(budget_seconds: float, seconds_per_step: float, *, multiple: int = 100) -> int:
    """The number of optimizer steps of ``seconds_per_step`` each that fits a wall-clock budget: budget / cost,
    rounded to the nearest positive multiple of ``multiple`` (so that small timing noise gives the same count
    and the same cached run).

    Raises:
        ValueError: a non-positive or non-finite budget or cost, ``multiple`` < 1.
    """
    budget = check_real(budget_seconds, "budget_seconds")
    cost = check_real(seconds_per_step, "seconds_per_step")
    if budget <= 0 or cost <= 0:
        raise ValueError(f"budget_seconds and seconds_per_step must be positive, got {budget}, {cost}")
    multiple = check_positive_int(multiple, "multiple")
    return max(1, round(budget / cost / multiple)) * multiple
