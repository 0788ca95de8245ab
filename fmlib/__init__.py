"""fmlib: the small PyTorch library behind the executable textbook of Flow Matching.

Time convention everywhere: t = 0 is noise (x0 ~ p), t = 1 is data (x1 ~ q); the linear path is
x_t = t x1 + (1 − t) x0.

Modules: :mod:`~fmlib.runtime` (device, profile, threads, seeds), :mod:`~fmlib.paths` (schedulers, affine
paths, parametrization conversions), :mod:`~fmlib.losses` (CFM losses), :mod:`~fmlib.solvers` (ODE/SDE
samplers), :mod:`~fmlib.likelihood` (CNF log-likelihood), :mod:`~fmlib.guidance` (classifier-free guidance),
:mod:`~fmlib.analytic` (closed-form oracles), :mod:`~fmlib.latent` (autoencoders, latent
flows and their W2 bound), :mod:`~fmlib.diffusion` (SDEs, log-SNR, DDIM/η
samplers, loss weightings), :mod:`~fmlib.models`, :mod:`~fmlib.data`, :mod:`~fmlib.train`,
:mod:`~fmlib.checkpoint`, :mod:`~fmlib.metrics`, :mod:`~fmlib.plotting`, :mod:`~fmlib.report` (tables, glue
and checks in a page), :mod:`~fmlib.symbolic` (sympy checks),
:mod:`~fmlib.zoo` (standard training recipes shared by the chapters), :mod:`~fmlib.couplings`
(independent, minibatch-OT and entropic couplings), :mod:`~fmlib.transport` (kinetic energy, Gaussian OT, reflow).
"""

__version__ = "0.1.0"

from . import (  # noqa: E402
    analytic,
    checkpoint,
    couplings,
    data,
    diffusion,
    guidance,
    latent,
    likelihood,
    losses,
    metrics,
    models,
    paths,
    plotting,
    report,
    runtime,
    solvers,
    symbolic,
    train,
    transport,
    zoo,
)

__all__ = [
    "__version__",
    "analytic",
    "checkpoint",
    "couplings",
    "data",
    "diffusion",
    "guidance",
    "latent",
    "likelihood",
    "losses",
    "metrics",
    "models",
    "paths",
    "plotting",
    "report",
    "runtime",
    "solvers",
    "symbolic",
    "train",
    "transport",
    "zoo",
]
