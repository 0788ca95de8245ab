"""Where and how big: the device, the build profile, threads and seeds.

Every chapter sizes its work the same way, through this module:

* the **device** is CUDA when available, else Apple's MPS, else the CPU; ``FMLIB_DEVICE`` overrides it
  (``cpu``, ``cuda``, ``cuda:1``, ``mps``);
* the **profile** is ``quick`` (small models, short training: a 2-core CPU builds the whole book in minutes)
  or ``full`` (bigger models, real training: meant for a GPU). The default is ``full`` when the chosen device
  is a GPU and ``quick`` otherwise; ``FMLIB_PROFILE=quick|full`` overrides it;
* :func:`by_profile` picks a value per profile, so a chapter writes ``steps = by_profile(quick=2_000,
  full=20_000)`` and the prose, which quotes only printed numbers, stays true in both profiles;
* ``FMLIB_MAX_STEPS=N`` caps every training run of :func:`fmlib.train.train` at N optimizer steps
  (:func:`max_train_steps`). It is a *smoke test*: it runs a profile's code paths (model sizes, sample
  counts, sweeps) on a machine too slow to train them for real, and :func:`describe` names the cap in every
  chapter's first output, so a page built this way says so. Its numbers are not the profile's numbers.

Environment variables reach the notebook kernels that ``jupyter-book`` starts, so
``FMLIB_PROFILE=full jupyter-book build book/`` builds the full profile.
"""

from __future__ import annotations

import os
import platform
import random
import time
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "PROFILES",
    "get_profile",
    "get_device",
    "by_profile",
    "max_train_steps",
    "configure_threads",
    "ensure_threads",
    "seed_everything",
    "describe",
]

PROFILES: tuple[str, ...] = ("quick", "full")
"""The known build profiles."""

T = TypeVar("T")


def get_device() -> torch.device:
    """The device every chapter computes on.

    ``FMLIB_DEVICE`` wins when set (any string :class:`torch.device` accepts); otherwise CUDA, then MPS,
    then the CPU.

    Raises:
        ValueError: ``FMLIB_DEVICE`` names a device torch does not know, or a CUDA device when CUDA is
            unavailable.
    """
    wanted = os.environ.get("FMLIB_DEVICE", "").strip()
    if wanted:
        try:
            device = torch.device(wanted)
        except RuntimeError as err:
            raise ValueError(f"FMLIB_DEVICE={wanted!r} is not a device torch knows: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"FMLIB_DEVICE={wanted!r} asks for CUDA, but torch sees no CUDA device")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_profile() -> str:
    """The build profile: ``"quick"`` or ``"full"``.

    ``FMLIB_PROFILE`` wins when set; otherwise ``"full"`` on a CUDA device and ``"quick"`` elsewhere.

    Raises:
        ValueError: ``FMLIB_PROFILE`` is set to something other than ``quick`` or ``full``.
    """
    wanted = os.environ.get("FMLIB_PROFILE", "").strip().lower()
    if wanted:
        if wanted not in PROFILES:
            raise ValueError(f"FMLIB_PROFILE={wanted!r} is not a profile; choose one of {PROFILES}")
        return wanted
    return "full" if get_device().type == "cuda" else "quick"


def by_profile(*, quick: T, full: T) -> T:
    """Return ``quick`` or ``full`` according to :func:`get_profile`.

    Example: ``steps = by_profile(quick=2_000, full=20_000)``.
    """
    return quick if get_profile() == "quick" else full


def max_train_steps() -> int | None:
    """The cap ``FMLIB_MAX_STEPS`` puts on every training run's optimizer steps, or None when it is unset.

    Raises:
        ValueError: ``FMLIB_MAX_STEPS`` is set but is not a positive integer.
    """
    return _positive_env_int("FMLIB_MAX_STEPS", "a cap on training steps")


def _positive_env_int(name: str, what: str) -> int | None:
    """The environment variable ``name`` as a positive int, None when unset or blank.

    Raises:
        ValueError: it is set to anything else (the message says what it is: ``what``).
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer; it must be a positive integer ({what})") from None
    if value < 1:
        raise ValueError(f"{name}={text!r} must be a positive integer ({what})")
    return value


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_cores(window: float = 0.25) -> int:
    """Cores kept busy by other work right now, rounded.

    On Linux: the busy share of all CPUs over ``window`` seconds (read from /proc/stat while this process
    sleeps, so it counts only the others). Elsewhere: the 1-minute load average. 0 where neither exists.
    """
    before = _cpu_times()
    if before is not None:
        time.sleep(window)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            share = (after[0] - before[0]) / (after[1] - before[1])
            return int(share * _available_cores() + 0.5)
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        return 0


def _env_threads() -> int | None:
    """``FMLIB_THREADS`` as a positive int, None when unset; ``ValueError`` for anything else."""
    return _positive_env_int("FMLIB_THREADS", "torch CPU threads")


def configure_threads(max_threads: int | None = None) -> int:
    """Set torch's CPU threads to the cores that are free now (at least 1, at most ``max_threads``); return it.

    The default is the number of cores minus those busy with other work at this moment (measured over a
    quarter of a second from /proc/stat on Linux, else from the load average), clamped to [1, cores]. An
    oversubscribed intra-op thread pool is pathological on small machines: measured on a 2-core CPU with one
    other busy process, a 2-D MLP flow-matching step took 23 ms with 2 threads and 4.3 ms with 1, a
    maximum-likelihood CNF step 1.13 s against 0.27 s, while on an idle machine 2 threads were at most 1.6×
    faster (U-Net on 8×8 digits). ``FMLIB_THREADS`` overrides the choice. Every chapter calls this once.

    Raises:
        ValueError: ``FMLIB_THREADS`` is not a positive integer, or ``max_threads < 1``.
    """
    n = _env_threads()
    if n is None:
        if max_threads is not None and max_threads < 1:
            raise ValueError(f"max_threads must be positive, got {max_threads}")
        cores = _available_cores()
        n = min(cores, max(1, cores - _busy_cores()))
        if max_threads is not None:
            n = min(n, max_threads)
    torch.set_num_threads(n)
    global _threads_configured
    _threads_configured = True
    return n


_THREADS_AT_IMPORT = torch.get_num_threads()
_threads_configured = False


def ensure_threads() -> None:
    """Apply the thread policy of :func:`configure_threads` once per process, where fmlib's torch work starts
    (:func:`fmlib.train.train` calls it): unless :func:`configure_threads` already ran, or the caller changed
    torch's thread count since fmlib was imported (their choice is kept). ``FMLIB_THREADS`` is validated here.

    Raises:
        ValueError: ``FMLIB_THREADS`` is not a positive integer.
    """
    _env_threads()
    if _threads_configured or torch.get_num_threads() != _THREADS_AT_IMPORT:
        return
    configure_threads()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh CPU generator seeded with ``seed``.

    fmlib's own functions take explicit ``torch.Generator`` arguments; this is for the chapter's own code.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe() -> str:
    """One line naming the profile, the device, the thread count and the versions, for a chapter's first cell."""
    from . import __version__

    device = get_device()
    name = device.type
    if device.type == "cuda":
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    cap = max_train_steps()
    smoke = f" (SMOKE TEST: training capped at {cap} steps by FMLIB_MAX_STEPS)" if cap is not None else ""
    return (
        f"fmlib {__version__} | profile={get_profile()}{smoke} | device={name} | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) | python {platform.python_version()}"
    )
