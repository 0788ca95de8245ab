"""Plotting helpers shared by the chapters (matplotlib). Every function draws on a given ``Axes`` and
returns it, labels its axes and never calls ``plt.show``.

Inputs may be torch tensors (CPU or GPU, with or without grad) or NumPy arrays. The 2-D plots use the
coordinates x₁ (horizontal) and x₂ (vertical), equal aspect and the square ``lims × lims``
(default :data:`DEFAULT_LIMITS`, which holds every toy data set of :mod:`fmlib.data`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor, nn

__all__ = [
    "plot_samples",
    "plot_density",
    "plot_trajectories",
    "plot_vector_field",
    "show_images",
    "column_figure",
    "log_ticks",
    "use_book_style",
    "BOOK_STYLE",
    "COLUMN_WIDTH_IN",
    "DEFAULT_LIMITS",
]

DEFAULT_LIMITS: tuple[float, float] = (-4.5, 4.5)

COLUMN_WIDTH_IN: float = 6.9
"""Width of a full-column figure in inches: at the book's 100 dpi this is the ~690 px text column, so a figure is
shown at scale 1 there and its 9–10 pt labels are 12–14 px on the page. Images are rendered at twice that
density (``retina`` PNG), so they stay sharp on high-DPI screens and when zoomed."""

BOOK_STYLE: dict[str, object] = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "lines.linewidth": 1.6,
    "image.cmap": "viridis",
    "figure.constrained_layout.use": True,
}
"""matplotlib rcParams of every figure of the book (applied by :func:`use_book_style`)."""


def use_book_style() -> None:
    """Apply :data:`BOOK_STYLE` to matplotlib and, inside IPython, ask the inline backend for ``retina`` PNGs
    (rendered at 2× the logical size, displayed at the logical size). Idempotent; chapters call it through
    :func:`column_figure`."""
    plt.rcParams.update(BOOK_STYLE)
    try:  # only in a running IPython kernel
        from IPython import get_ipython

        if get_ipython() is not None:
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("retina")
    except ImportError:  # IPython / matplotlib-inline missing: plain matplotlib
        pass


def column_figure(nrows: int = 1, ncols: int = 1, *, height: float | None = None, aspect: float = 1.0,
                  width: float = 1.0, **subplot_kw: object):
    """A figure sized for the book's text column, in the book's style: ``(fig, axes)`` as ``plt.subplots``.

    The width is ``width`` × :data:`COLUMN_WIDTH_IN` (so ≤ 1 column, readable labels at scale 1); the height is
    ``height`` inches if given, else the panel width × ``aspect`` × ``nrows`` plus room for labels. At most 3
    panels a row fit the column: ask for a grid (``nrows`` > 1) rather than a strip. ``subplot_kw`` goes to
    ``plt.subplots`` (``sharex``, ``squeeze``, …).

    Raises:
        ValueError: ``nrows`` or ``ncols`` < 1, ``ncols`` > 3, or ``width``/``aspect``/``height`` not positive
            (``width`` at most 1).
    """
    for name, value in (("nrows", nrows), ("ncols", ncols)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if ncols > 3:
        raise ValueError(f"at most 3 panels fit a row of the text column, got ncols={ncols}: use a grid "
                         f"(e.g. nrows={math.ceil(ncols / 3)}, ncols=3)")
    if not (0 < width <= 1) or not aspect > 0 or (height is not None and not height > 0):
        raise ValueError(f"width must lie in (0, 1] and aspect/height be positive, got width={width!r}, "
                         f"aspect={aspect!r}, height={height!r}")
    use_book_style()
    fig_w = width * COLUMN_WIDTH_IN
    if height is None:
        height = nrows * (fig_w / ncols) * aspect * 0.92 + 0.25
    return plt.subplots(nrows, ncols, figsize=(fig_w, height), **subplot_kw)

def log_ticks(ax: Axes, values, *, axis: str = "x") -> Axes:
    """Put ``axis`` ("x" or "y") of ``ax`` on a log scale with major ticks at ``values``, labelled as plain
    numbers, and no minor tick labels (matplotlib labels minor ticks as "4×10⁰, 6×10⁰, …" when a log axis spans
    less than about a decade, and they overlap at column width).

    Raises:
        ValueError: ``axis`` not "x"/"y", or ``values`` empty or not all positive.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    ticks = [float(v) for v in values]
    if not ticks or min(ticks) <= 0:
        raise ValueError(f"log ticks need positive values, got {list(values)!r}")
    which = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    which.set_ticks(ticks, labels=[f"{v:g}" for v in ticks])
    which.set_minor_formatter(plt.NullFormatter())
    return ax


_XLABEL, _YLABEL = "$x_1$", "$x_2$"


def _to_numpy(x: Tensor | np.ndarray, *, name: str) -> np.ndarray:
    """A float NumPy copy of a tensor (any device, grad or not) or array."""
    if torch.is_tensor(x):
        return x.detach().cpu().to(torch.float64 if x.dtype == torch.float64 else torch.float32).numpy()
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")


def _check_lims(lims: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(lims[0]), float(lims[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lims must be two finite numbers (low, high) with low < high, got {lims}")
    return lo, hi


def _frame_2d(ax: Axes, lims: tuple[float, float], title: str | None) -> None:
    """Square limits, equal aspect, x₁/x₂ labels and an optional title."""
    ax.set_xlim(*lims)
    ax.set_ylim(*lims)
    ax.set_aspect("equal")
    ax.set_xlabel(_XLABEL)
    ax.set_ylabel(_YLABEL)
    if title is not None:
        ax.set_title(title)


def _grid(lims: tuple[float, float], n: int) -> tuple[np.ndarray, Tensor]:
    """Cell centres of an n×n grid on lims²: the 1-D coordinates [n] and the points [n², 2] (float32, row-major:
    point k = (xs[k % n], xs[k // n]), so a result reshaped to (n, n) is indexed [row = x₂, column = x₁])."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int ≥ 2, got {n!r}")
    lo, hi = lims
    xs = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    gx, gy = np.meshgrid(xs, xs, indexing="xy")
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))
    return xs, pts


def _infer_device(fn: Callable, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(fn, nn.Module):
        p = next(fn.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def plot_samples(ax: Axes, x: Tensor, *, title: str | None = None, lims: tuple[float, float] = DEFAULT_LIMITS,
                 color: str = "C0", s: float = 2.0, alpha: float = 0.5, label: str | None = None) -> Axes:
    """Scatter of 2-D samples x [N, 2] with equal aspect and fixed limits.

    Args:
        ax: the Axes to draw on.
        x: [N, 2] tensor or array (N ≥ 0; points outside ``lims`` are clipped by the view, not dropped).
        title, lims, color, s (marker area), alpha, label (for a legend).

    Raises:
        ValueError: x is not [N, 2] or holds NaN.
    """
    pts = _to_numpy(x, name="x")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"x must have shape [N, 2], got {pts.shape}")
    if np.isnan(pts).any():
        raise ValueError("x contains NaN")
    lims = _check_lims(lims)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, color=color, label=label, linewidths=0, rasterized=len(pts) > 5000)
    _frame_2d(ax, lims, title)
    return ax


def plot_density(ax: Axes, log_density: Callable[[Tensor], Tensor], *, lims: tuple[float, float] = DEFAULT_LIMITS,
                 n: int = 100, title: str | None = None, log_scale: bool = False, cmap: str = "viridis",
                 colorbar: bool = False, vmin: float | None = None, vmax: float | None = None) -> Axes:
    """Heat map of exp(log_density) (or of log_density itself with ``log_scale=True``) on an n×n grid;
    ``log_density`` maps [M, 2] points to [M].

    The grid is the n² cell centres of the square lims² (M = n²), passed in **one** call as a float32 CPU tensor
    (move it to your model's device inside ``log_density``); the mean of exp(log p) over these points times the
    square's area is the midpoint rule for ∫ p over the square. The call is made with autograd enabled (so a
    density computed through divergences works); the result is detached.

    Args:
        log_density: [M, 2] → [M] (tensor or array; −inf allowed, shown as the lowest colour).
        n: grid points per side (≥ 2).
        log_scale: show log p instead of p.
        colorbar: add a colour bar next to ``ax``.
        vmin, vmax: the values mapped to the ends of the colour scale (default: this panel's range); give
            several panels the same pair to make their colours comparable. Values outside are clipped.

    Raises:
        ValueError: the returned shape is not [M] (or [M, 1]), or it contains NaN; vmin ≥ vmax.
    """
    lims = _check_lims(lims)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got {vmin} and {vmax}")
    _, pts = _grid(lims, n)
    out = _to_numpy(log_density(pts), name="log_density(points)").astype(np.float64)
    if out.shape not in ((n * n,), (n * n, 1)):
        raise ValueError(f"log_density must map [{n * n}, 2] points to [{n * n}], got shape {out.shape}")
    if np.isnan(out).any():
        raise ValueError("log_density returned NaN")
    values = out.reshape(n, n) if log_scale else np.exp(out.reshape(n, n))
    if log_scale and np.isneginf(values).any():
        finite = values[np.isfinite(values)]
        values = np.where(np.isneginf(values), finite.min() if finite.size else 0.0, values)
    image = ax.imshow(values, origin="lower", extent=(lims[0], lims[1], lims[0], lims[1]), cmap=cmap,
                      interpolation="nearest", aspect="equal", vmin=vmin, vmax=vmax)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="log density" if log_scale else "density")
    _frame_2d(ax, lims, title)
    return ax


def plot_trajectories(ax: Axes, trajectory: Tensor, *, n_show: int = 200, title: str | None = None,
                      lims: tuple[float, float] = DEFAULT_LIMITS, color: str = "C1") -> Axes:
    """Paths of a [T, B, 2] trajectory (first ``n_show``), start points grey, end points coloured.

    ``trajectory[k]`` is the batch at the k-th recorded time (T ≥ 1); the first ``min(n_show, B)`` particles are
    drawn as thin lines from ``trajectory[0]`` (grey dots) to ``trajectory[-1]`` (dots in ``color``).

    Raises:
        ValueError: not [T, B, 2], T = 0, n_show < 1, or NaN in the shown paths.
    """
    traj = _to_numpy(trajectory, name="trajectory")
    if traj.ndim != 3 or traj.shape[2] != 2 or traj.shape[0] < 1:
        raise ValueError(f"trajectory must have shape [T, B, 2] with T ≥ 1, got {traj.shape}")
    if not isinstance(n_show, int) or n_show < 1:
        raise ValueError(f"n_show must be a positive int, got {n_show!r}")
    lims = _check_lims(lims)
    traj = traj[:, :n_show]
    if np.isnan(traj).any():
        raise ValueError("trajectory contains NaN")
    ax.plot(traj[:, :, 0], traj[:, :, 1], color=color, lw=0.6, alpha=0.35)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=6, color="0.5", label="start", zorder=3, linewidths=0)
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=6, color=color, label="end", zorder=4, linewidths=0)
    _frame_2d(ax, lims, title)
    return ax


def plot_vector_field(ax: Axes, velocity: Callable[[Tensor, Tensor], Tensor], t: float, *,
                      lims: tuple[float, float] = DEFAULT_LIMITS, n: int = 25, stream: bool = True,
                      title: str | None = None, cmap: str = "viridis",
                      device: torch.device | str | None = None) -> Axes:
    """Stream (or quiver) plot of a velocity field v(x [M, 2], t [M]) at time t, coloured by speed.

    ``velocity`` is called once, without grad, on the n×n cell centres of lims² (M = n², float32) and
    t = ``t`` · 1 [M], on ``device`` (default: the device of ``velocity``'s parameters when it is an
    ``nn.Module``, else the CPU). The colour is the speed ‖v(x, t)‖. ``stream=False`` (or a field that is zero
    everywhere) draws arrows instead of streamlines.

    Raises:
        ValueError: t outside [0, 1]; the field's shape is not [M, 2]; NaN in the field.
    """
    if not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"t must lie in [0, 1], got {t}")
    lims = _check_lims(lims)
    xs, pts = _grid(lims, n)
    dev = _infer_device(velocity, device)
    with torch.no_grad():
        pts_dev = pts.to(dev)
        out = velocity(pts_dev, torch.full((n * n,), float(t), device=dev))
    v = _to_numpy(out, name="velocity(x, t)").astype(np.float64)
    if v.shape != (n * n, 2):
        raise ValueError(f"velocity must map [{n * n}, 2] points to [{n * n}, 2], got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("velocity returned NaN")
    u, w = v[:, 0].reshape(n, n), v[:, 1].reshape(n, n)
    speed = np.hypot(u, w)
    gx, gy = np.meshgrid(xs, xs, indexing="xy")
    if stream and speed.max() > 0:
        lw = 0.6 + 1.4 * speed / speed.max()
        stream_set = ax.streamplot(gx, gy, u, w, color=speed, cmap=cmap, linewidth=lw, density=1.2, arrowsize=0.8)
        mappable = stream_set.lines
    else:
        mappable = ax.quiver(gx, gy, u, w, speed, cmap=cmap, angles="xy", pivot="mid")
    mappable.set_clim(0.0, max(float(speed.max()), 1e-12))
    _frame_2d(ax, lims, title if title is not None else f"velocity field at t = {float(t):.2f}")
    return ax


def show_images(ax: Axes, images: Tensor, *, nrow: int = 8, title: str | None = None, padding: int = 1) -> Axes:
    """Grid of images [N, C, H, W] in [−1, 1] (grayscale for C = 1), no ticks.

    The images fill rows of ``nrow`` (the number of columns), left to right, top to bottom, separated by
    ``padding`` pixels of white; values are mapped by (x + 1)/2 and clipped to [0, 1]. The picture has
    ceil(N / nrow) rows: its shape is (rows (H + p) + p, cols (W + p) + p) with cols = min(nrow, N).
    [N, H, W] is read as C = 1; C must be 1 or 3.

    Raises:
        ValueError: wrong shape, N = 0, nrow < 1, NaN.
    """
    imgs = _to_numpy(images, name="images")
    if imgs.ndim == 3:
        imgs = imgs[:, None]
    if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, C, H, W] with C in (1, 3) (or [N, H, W]), got {imgs.shape}")
    if imgs.shape[0] == 0:
        raise ValueError("images is empty")
    if not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if np.isnan(imgs).any():
        raise ValueError("images contains NaN")
    count, channels, h, w = imgs.shape
    cols = min(nrow, count)
    rows = math.ceil(count / cols)
    p = int(padding)
    canvas = np.ones((rows * (h + p) + p, cols * (w + p) + p, channels), dtype=np.float32)
    scaled = np.clip((imgs + 1.0) / 2.0, 0.0, 1.0).transpose(0, 2, 3, 1)
    for k in range(count):
        r, c = divmod(k, cols)
        top, left = p + r * (h + p), p + c * (w + p)
        canvas[top:top + h, left:left + w] = scaled[k]
    if channels == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return ax
