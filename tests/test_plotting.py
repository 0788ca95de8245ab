"""fmlib.plotting on the Agg backend: every function takes tensors and arrays, returns its Axes and labels it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from fmlib import plotting  # noqa: E402


@pytest.fixture
def ax():
    fig, axis = plt.subplots()
    yield axis
    plt.close(fig)


def assert_framed(axis, title=None, lims=plotting.DEFAULT_LIMITS):
    assert axis.get_xlabel() == "$x_1$" and axis.get_ylabel() == "$x_2$"
    assert axis.get_aspect() == 1.0
    assert axis.get_xlim() == pytest.approx(lims) and axis.get_ylim() == pytest.approx(lims)
    if title is not None:
        assert axis.get_title() == title


@pytest.mark.parametrize("kind", ["tensor", "grad", "numpy"])
def test_plot_samples(ax, kind):
    x = torch.randn(100, 2)
    if kind == "grad":
        x = x.requires_grad_(True)
    elif kind == "numpy":
        x = x.numpy()
    out = plotting.plot_samples(ax, x, title="samples", label="data", lims=(-3, 3))
    assert out is ax
    assert_framed(ax, "samples", (-3, 3))
    assert ax.collections[0].get_offsets().shape == (100, 2)
    assert ax.get_legend_handles_labels()[1] == ["data"]


def test_plot_samples_errors(ax):
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plotting.plot_samples(ax, torch.randn(10, 3))
    with pytest.raises(ValueError, match="NaN"):
        plotting.plot_samples(ax, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match="lims"):
        plotting.plot_samples(ax, torch.randn(4, 2), lims=(1, -1))


@pytest.mark.parametrize("log_scale", [False, True])
def test_plot_density_standard_normal(ax, log_scale):
    seen = []

    def log_p(pts):
        seen.append(pts)
        return -0.5 * (pts ** 2).sum(1) - np.log(2 * np.pi)

    out = plotting.plot_density(ax, log_p, n=40, title="N(0, I)", log_scale=log_scale)
    assert out is ax and len(seen) == 1 and seen[0].shape == (1600, 2)
    assert_framed(ax, "N(0, I)")
    values = ax.images[0].get_array()
    assert values.shape == (40, 40)
    if not log_scale:  # mean over cell centres × area = midpoint rule for ∫ p ≈ 1 on [−4.5, 4.5]²
        assert float(values.mean()) * 9.0 ** 2 == pytest.approx(1.0, abs=1e-3)
    # the grid is row-major: row ↔ x₂, column ↔ x₁ (origin lower)
    pts = seen[0].reshape(40, 40, 2)
    assert torch.all(pts[0, 1:, 0] > pts[0, :-1, 0]) and torch.all(pts[1:, 0, 1] > pts[:-1, 0, 1])


def test_plot_density_accepts_numpy_and_rejects_bad_shapes(ax):
    plotting.plot_density(ax, lambda p: np.zeros(len(p)), n=10)
    assert ax.get_xlabel() == "$x_1$"
    with pytest.raises(ValueError, match="map"):
        plotting.plot_density(ax, lambda p: torch.zeros(len(p), 2), n=10)
    with pytest.raises(ValueError, match="NaN"):
        plotting.plot_density(ax, lambda p: torch.full((len(p),), float("nan")), n=10)


def test_plot_density_shared_colour_range(ax):
    plotting.plot_density(ax, lambda p: -0.5 * (p ** 2).sum(1), n=10, log_scale=True, vmin=-3.0, vmax=0.0,
                          colorbar=True)
    assert ax.images[0].get_clim() == (-3.0, 0.0)
    assert ax.figure.axes[-1].get_ylabel() == "log density"                       # the colour bar
    with pytest.raises(ValueError, match="vmin"):
        plotting.plot_density(ax, lambda p: torch.zeros(len(p)), n=10, vmin=1.0, vmax=1.0)


def test_plot_trajectories(ax):
    traj = torch.cumsum(torch.randn(11, 300, 2) * 0.1, dim=0).requires_grad_(True)
    out = plotting.plot_trajectories(ax, traj, n_show=50, title="paths")
    assert out is ax
    assert_framed(ax, "paths")
    assert len(ax.lines) == 50
    starts, ends = ax.collections[0].get_offsets(), ax.collections[1].get_offsets()
    assert np.allclose(starts, traj[0, :50].detach().numpy()) and np.allclose(ends, traj[-1, :50].detach().numpy())
    plotting.plot_trajectories(ax, traj.detach().numpy(), n_show=1000)
    with pytest.raises(ValueError, match=r"\[T, B, 2\]"):
        plotting.plot_trajectories(ax, torch.randn(300, 2))


class Rotation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, t):
        return self.scale * torch.stack([-x[:, 1], x[:, 0]], dim=1) * (1 + t[:, None])


@pytest.mark.parametrize("stream", [True, False])
def test_plot_vector_field(ax, stream):
    out = plotting.plot_vector_field(ax, Rotation(), 0.5, n=15, stream=stream, title="rotation")
    assert out is ax
    assert_framed(ax, "rotation")
    assert len(ax.collections) >= 1


def test_plot_vector_field_default_title_numpy_field_and_errors(ax):
    plotting.plot_vector_field(ax, lambda x, t: np.zeros((len(x), 2)), 0.25, n=10)
    assert ax.get_title() == "velocity field at t = 0.25"
    with pytest.raises(ValueError, match="t must lie"):
        plotting.plot_vector_field(ax, Rotation(), 1.5)
    with pytest.raises(ValueError, match="map"):
        plotting.plot_vector_field(ax, lambda x, t: x[:, :1], 0.0, n=10)


@pytest.mark.parametrize("count,nrow,grid", [(10, 4, (3, 4)), (3, 8, (1, 3)), (16, 8, (2, 8))])
def test_show_images_grid_shape(ax, count, nrow, grid):
    images = torch.rand(count, 1, 8, 8) * 2 - 1
    out = plotting.show_images(ax, images, nrow=nrow, title="digits")
    assert out is ax and ax.get_title() == "digits"
    rows, cols = grid
    assert ax.images[0].get_array().shape == (rows * 9 + 1, cols * 9 + 1)
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    # first image lands top-left, mapped from [−1, 1] to [0, 1]
    assert np.allclose(ax.images[0].get_array()[1:9, 1:9], (images[0, 0].numpy() + 1) / 2)


def test_show_images_rgb_numpy_and_errors(ax):
    plotting.show_images(ax, np.zeros((5, 3, 4, 4), dtype=np.float32), nrow=5)
    assert ax.images[0].get_array().shape == (6, 26, 3)
    with pytest.raises(ValueError, match="empty"):
        plotting.show_images(ax, torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="C in"):
        plotting.show_images(ax, torch.zeros(2, 2, 8, 8))


def test_column_figure_fits_the_column_and_applies_the_style():
    import matplotlib.pyplot as plt

    from fmlib.plotting import BOOK_STYLE, COLUMN_WIDTH_IN, column_figure

    fig, axes = column_figure(2, 3)
    w, h = fig.get_size_inches()
    assert w == pytest.approx(COLUMN_WIDTH_IN) and axes.shape == (2, 3) and h > w / 3
    assert plt.rcParams["font.size"] == BOOK_STYLE["font.size"]
    plt.close(fig)
    fig, ax = column_figure(width=0.5)
    assert fig.get_size_inches()[0] == pytest.approx(COLUMN_WIDTH_IN / 2)
    plt.close(fig)


@pytest.mark.parametrize("kwargs, match", [({"ncols": 4}, "at most 3 panels"), ({"nrows": 0}, "positive int"),
                                           ({"width": 1.5}, "width"), ({"height": -1.0}, "height")])
def test_column_figure_rejects_bad_layouts(kwargs, match):
    from fmlib.plotting import column_figure

    with pytest.raises(ValueError, match=match):
        column_figure(**kwargs)


def test_log_ticks_labels_the_given_values_and_no_minor_ticks():
    fig, ax = plotting.column_figure(1, 1)
    ax.plot([4, 8, 16], [1.0, 0.5, 0.25])
    plotting.log_ticks(ax, [4, 8, 16])
    fig.canvas.draw()
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "16"]
    assert all(t.get_text() == "" for t in ax.xaxis.get_minorticklabels())
    with pytest.raises(ValueError):
        plotting.log_ticks(ax, [0, 1])
    with pytest.raises(ValueError):
        plotting.log_ticks(ax, [1, 2], axis="z")
    plt.close(fig)
