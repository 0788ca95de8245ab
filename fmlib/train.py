"""One trainer for every chapter: seeded, AdamW, EMA, gradient clipping, tqdm progress, mixed precision on
GPU, and a checkpoint cache.

The cache key is a hash of: the run's ``name``, the model's class and constructor-relevant structure
(``repr(model)`` and parameter shapes), the :class:`TrainConfig`, the caller's ``key`` dict (data set, path,
parametrization, …), a fingerprint of ``loss_fn`` (:func:`loss_fingerprint`: its code and the values it
closes over), the fmlib version and a digest of fmlib's source files. A later chapter asking for the same
run gets the stored weights instead of training again; processes asking for the same uncached run at once
train it once (a lock file next to the checkpoint: the others wait, then load). The cache folder is
``FMLIB_CACHE_DIR`` (default ``~/.cache/fmlib``); ``FMLIB_CACHE=0`` turns it off; a folder that cannot be
written warns once and the runs train uncached. A corrupt cache file is retrained, not fatal.

A training step k = 0, …, steps − 1 is

    loss = loss_fn(model, batch_size, generator)          (under bf16 autocast on CUDA when config.amp)
    g = ∇loss, clipped to ‖g‖ ≤ grad_clip
    θ ← AdamW(θ, g, lr_k, weight_decay)                   (lr_k from :func:`learning_rate`)
    θ̄ ← d_k θ̄ + (1 − d_k) θ                               (:class:`EMA`)

with one CPU ``torch.Generator`` seeded by ``config.seed`` for every random draw of ``loss_fn``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._checks import loss_check_deferred
from ._readback import HostCopy
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "TrainResult", "EMA", "train", "cache_dir", "cache_key", "learning_rate", "progress_mode",
           "loss_fingerprint"]

LossFn = Callable[[nn.Module, int, torch.Generator], Tensor]
"""loss_fn(model, batch_size, generator) -> scalar loss: draws its own batch (on the model's device) and
returns the loss, e.g. a closure over :func:`fmlib.losses.conditional_flow_matching_loss`."""

LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")

logger = logging.getLogger("fmlib")
"""Cache housekeeping (loaded from the cache, waiting for another process) goes here, not to the page."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all part of the cache key).

    Raises:
        ValueError: steps or batch_size < 1, lr ≤ 0, weight_decay < 0, ema_decay outside [0, 1],
            grad_clip ≤ 0, warmup_steps < 0 or > steps, unknown lr_schedule, negative seed.
    """

    steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # "constant" | "cosine"
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA only; ignored on CPU

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"TrainConfig.warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps} exceeds steps={self.steps}: the "
                             "learning rate would never reach lr; use warmup_steps <= steps")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"TrainConfig.seed must be a non-negative int, got {self.seed!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be ≥ 0, got {self.weight_decay!r}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"TrainConfig.ema_decay must lie in [0, 1], got {self.ema_decay!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"TrainConfig.grad_clip must be None or a positive number, got {self.grad_clip!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}")


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step k = ``step`` (0-based).

    Linear warm-up over W = ``warmup_steps``: lr_k = lr · (k + 1) / W for k < W. After it, ``constant`` keeps
    lr_k = lr and ``cosine`` decays lr_k = lr · ½ (1 + cos(π p)) with p = (k − W) / (S − W), S = ``steps``
    (p runs from 0 at the first post-warm-up step towards 1 at the end).

    Raises:
        ValueError: ``step`` < 0.
    """
    if step < 0:
        raise ValueError(f"step must be ≥ 0, got {step}")
    w = config.warmup_steps
    if step < w:
        return config.lr * (step + 1) / w
    if config.lr_schedule == "cosine":
        p = min((step - w) / max(config.steps - w, 1), 1.0)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return config.lr


@dataclass
class TrainResult:
    """``model``: the EMA model (eval mode, on the training device); ``raw_model``: the last iterate;
    ``losses`` [steps]: the per-step training loss; ``seconds``: wall-clock of training (0 when cached);
    ``from_cache``; ``key``: the cache key; ``path``: the checkpoint file (None without cache).

    ``train_seconds`` is the wall-clock of the training that produced the weights: equal to ``seconds`` for
    a fresh run, read from the checkpoint for a cached one (so :attr:`steps_per_second` is meaningful for
    both). ``raw_model`` is in eval mode too (call ``.train()`` to train it further).
    """

    model: nn.Module
    raw_model: nn.Module
    losses: np.ndarray
    seconds: float
    from_cache: bool
    key: str
    path: Path | None
    train_seconds: float = field(default=float("nan"))

    def __post_init__(self) -> None:
        if math.isnan(self.train_seconds):
            self.train_seconds = float(self.seconds)

    @property
    def steps_per_second(self) -> float:
        """len(losses) / train_seconds: optimizer steps per second of the training run (NaN if unknown)."""
        if not self.train_seconds > 0:
            return float("nan")
        return len(self.losses) / self.train_seconds


class EMA:
    """Exponential moving average of parameters: θ̄ ← d θ̄ + (1 − d) θ, with warm-up d_k = min(d, (1 + k)/(10 + k)).

    k = 0, 1, … counts the calls of :meth:`update` (the first update uses d_0 = min(d, 0.1), so θ̄ forgets
    the initial weights quickly). θ̄ starts as a float32 copy of the parameters; buffers (e.g. BatchNorm
    statistics) are copied, not averaged. ``decay=0`` makes θ̄ the last iterate.

    Raises:
        ValueError: decay outside [0, 1].
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0
        self._model = model
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._float32 = all(p.dtype == torch.float32 for p in self._params)
        self.shadow: list[Tensor] = [p.detach().float().clone() for p in self._params]
        self.buffers: list[Tensor] = [b.detach().clone() for b in model.buffers()]

    def current_decay(self) -> float:
        """d_k = min(d, (1 + k)/(10 + k)) for the next update, k = :attr:`num_updates`."""
        k = self.num_updates
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ̄ ← d_k θ̄ + (1 − d_k) θ for the trainable parameters of ``model`` (the model the EMA was built on,
        whose parameters it took when it was built, or one with the same parameters in the same order);
        buffers are copied.

        Raises:
            ValueError: ``model`` has a different number of trainable parameters.
        """
        if model is self._model:  # the model the EMA was built on (every step of the trainer): its parameters
            params = self._params
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            if len(params) != len(self.shadow):
                raise ValueError(f"EMA tracks {len(self.shadow)} parameters, the model has {len(params)}")
        d = self.current_decay()
        current = params if self._float32 and params is self._params else [p.float() for p in params]
        torch._foreach_lerp_(self.shadow, current, 1.0 - d)  # (under no_grad: no detach needed)
        if self.buffers:
            for mine, theirs in zip(self.buffers, model.buffers()):
                mine.copy_(theirs)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write θ̄ (cast to each parameter's dtype) and the stored buffers into ``model``.

        Raises:
            ValueError: ``model`` does not have the tracked parameters' count or shapes.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != len(self.shadow) or any(p.shape != s.shape for p, s in zip(params, self.shadow)):
            raise ValueError("copy_to needs a model with the same trainable parameters as the one the EMA tracks")
        for p, s in zip(params, self.shadow):
            p.copy_(s)
        for b, mine in zip(model.buffers(), self.buffers):
            b.copy_(mine)


def cache_dir() -> Path:
    """The checkpoint-cache folder (``FMLIB_CACHE_DIR`` or ``~/.cache/fmlib``), created if missing."""
    env = os.environ.get("FMLIB_CACHE_DIR", "").strip()
    folder = Path(env).expanduser() if env else Path.home() / ".cache" / "fmlib"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _source_digest() -> str:
    """sha256 over the names and bytes of fmlib's ``*.py`` files (sorted), so any library change retrains."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _json_default(obj: object) -> object:
    """JSON form of the values a key dict may hold beyond JSON's own: NumPy/torch numbers and small arrays,
    paths, sets, dtypes and devices. Anything else raises, since ``repr`` could embed a memory address."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or torch.is_tensor(obj):
        return {"array": np.asarray(obj.detach().cpu() if torch.is_tensor(obj) else obj).tolist()}
    if isinstance(obj, Path | torch.dtype | torch.device):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    raise TypeError(f"cache key values must be JSON-like (numbers, strings, lists, dicts), got "
                    f"{type(obj).__name__}: describe it by its settings instead")


_PRIMITIVES = (type(None), bool, int, float, complex, str, bytes)


def _digest_array(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return f"array {arr.dtype} {arr.shape} {hashlib.sha256(arr.tobytes()).hexdigest()[:24]}"


def _fingerprint(obj: object, depth: int, seen: set[int]) -> object:
    """A JSON-able description of ``obj`` that is the same in every process for equal values: primitives as
    themselves, tensors and arrays by dtype, shape and a digest of their bytes, containers item by item,
    functions by their code (bytecode, constants, names; not line numbers), default values, closure values and
    the module-level values they read, other objects by class and attributes (or a ``repr`` free of memory
    addresses). Recursion stops at ``depth`` 0 and at cycles (described by type only)."""
    import types

    if isinstance(obj, _PRIMITIVES):
        return obj if not isinstance(obj, float | complex | bytes) else repr(obj)
    if isinstance(obj, torch.dtype | torch.device | Path):
        return str(obj)
    if torch.is_tensor(obj):
        return _digest_array(obj.detach().cpu().contiguous().numpy() if obj.dtype != torch.bfloat16
                             else obj.detach().float().cpu().numpy())
    if isinstance(obj, np.ndarray | np.generic):
        return _digest_array(np.asarray(obj))
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    if depth <= 0 or id(obj) in seen or isinstance(obj, torch.Generator | nn.Module):
        return f"<{type(obj).__module__}.{type(obj).__qualname__}>"
    seen = seen | {id(obj)}
    down = depth - 1
    if isinstance(obj, list | tuple):
        return [_fingerprint(v, down, seen) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_fingerprint(v, down, seen) for v in obj), key=repr)
    if isinstance(obj, Mapping):
        return sorted(([repr(k), _fingerprint(v, down, seen)] for k, v in obj.items()), key=lambda kv: kv[0])
    if isinstance(obj, types.CodeType):
        return {"code": hashlib.sha256(obj.co_code).hexdigest()[:24], "names": list(obj.co_names),
                "consts": [_fingerprint(c, down, seen) for c in obj.co_consts]}
    if isinstance(obj, types.MethodType):
        return {"method": _fingerprint(obj.__func__, down, seen), "self": _fingerprint(obj.__self__, down, seen)}
    if isinstance(obj, types.FunctionType):
        read = {n: obj.__globals__[n] for n in _global_names(obj.__code__) if n in obj.__globals__}
        cells = [c.cell_contents if _cell_filled(c) else None for c in (obj.__closure__ or ())]
        return {"function": f"{obj.__module__}.{obj.__qualname__}", "code": _fingerprint(obj.__code__, down, seen),
                "defaults": _fingerprint(obj.__defaults__, down, seen),
                "kwdefaults": _fingerprint(obj.__kwdefaults__, down, seen),
                "closure": _fingerprint(cells, down, seen), "globals": _fingerprint(read, down, seen)}
    if isinstance(obj, types.BuiltinFunctionType):
        return f"builtin {getattr(obj, '__module__', '')}.{obj.__qualname__}"
    import functools

    if isinstance(obj, functools.partial):
        return {"partial": _fingerprint(obj.func, down, seen), "args": _fingerprint(obj.args, down, seen),
                "keywords": _fingerprint(obj.keywords, down, seen)}
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if hasattr(obj, "__dict__") and vars(obj):
        return {"object": kind, "attributes": _fingerprint(vars(obj), down, seen)}
    text = repr(obj)
    return {"object": kind, "repr": text if not re.search(r"0x[0-9a-fA-F]{6,}", text) else None}


def _cell_filled(cell: object) -> bool:
    try:
        cell.cell_contents  # type: ignore[attr-defined]
    except ValueError:
        return False
    return True


def _global_names(code: object) -> list[str]:
    """Names a code object (and the code objects nested in it) may read from its module's globals."""
    import types

    names = list(code.co_names)  # type: ignore[attr-defined]
    for const in code.co_consts:  # type: ignore[attr-defined]
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return sorted(set(names))


def loss_fingerprint(loss_fn: Callable[..., Any], depth: int = 6) -> str:
    """A digest of what a loss function is, as far as fmlib can see it: its code, default values, the values its
    closure holds (data tensors, data-set names, paths, sizes) and the module-level values it reads, recursively
    through the functions it reaches, to ``depth`` levels. Part of every cache key (see :func:`train`), so a
    change of the data inside ``loss_fn`` trains a new model even when ``name`` and ``key`` stay the same.

    What it cannot see: data read through an object it does not describe (a file behind a path, a global
    generator's state, an attribute set after the key was made). Name the data in ``key`` as well.
    """
    text = json.dumps(_fingerprint(loss_fn, depth, set()), sort_keys=True, ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


_DATA_KEYS = ("data", "dataset", "source", "data_digest", "recipe")


def _describes_data(key: Mapping[str, Any] | None) -> bool:
    """Whether a cache ``key`` names its data (one of :data:`_DATA_KEYS`; fmlib's recipes, ``recipe``, put
    the data's settings into their keys)."""
    return bool(key) and any(k in key for k in _DATA_KEYS)


def cache_key(name: str, model: nn.Module, config: TrainConfig, key: Mapping[str, Any] | None = None) -> str:
    """A hex digest identifying a run (see the module docstring).

    sha256 of the JSON (sorted keys) of {name, model class, repr(model), parameter names and shapes,
    asdict(config), key, fmlib.__version__, digest of fmlib's *.py files}. The model's *values* are not
    hashed: its initial weights must follow from the seed the caller used (see :func:`train`).

    Raises:
        TypeError: ``key`` holds a value that has no stable JSON form.
    """
    from . import __version__

    model_class = type(model)
    payload = {
        "name": name,
        "model_class": f"{model_class.__module__}.{model_class.__qualname__}",
        "model_repr": repr(model),
        "parameter_shapes": [[n, list(p.shape)] for n, p in model.named_parameters()],
        "config": asdict(config),
        "key": dict(key or {}),
        "fmlib_version": __version__,
        "fmlib_source": _source_digest(),
    }
    text = json.dumps(payload, sort_keys=True, default=_json_default, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_file(name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    return cache_dir() / f"{safe[:80]}-{key[:16]}.pt"


_PROGRESS_MODES = {"1": "bar", "true": "bar", "yes": "bar", "on": "bar", "bar": "bar", "": "bar",
                   "summary": "summary", "0": "off", "false": "off", "no": "off", "off": "off"}


_INTERACTIVE_KERNEL_ENV = ("JPY_SESSION_NAME", "COLAB_RELEASE_TAG", "SPYDER_ARGS", "DATABRICKS_RUNTIME_VERSION")
"""Variables that the front ends people watch set in their kernels' environment (Jupyter server, Colab, Spyder,
Databricks); a kernel without any of them was started by a batch executor. (Editors' variables such as VS Code's
are left out: a book built from an editor's terminal inherits them. A notebook in such an editor gets the
one-line summary, not a bar.)"""


def _in_batch_kernel() -> bool:
    """True inside an IPython kernel started by a batch executor (jupyter-book/myst-nb, nbclient, papermill):
    a kernel whose environment has none of :data:`_INTERACTIVE_KERNEL_ENV`."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    return not any(os.environ.get(name) for name in _INTERACTIVE_KERNEL_ENV)


def progress_mode(progress: bool = True) -> str:
    """How a training run reports progress: ``"bar"``, ``"summary"`` or ``"off"``.

    ``progress=False`` is ``"off"``; otherwise ``FMLIB_PROGRESS`` decides: ``1``/``bar`` a tqdm bar;
    ``summary`` one line when the run ends (steps, seconds, steps per second, smoothed final loss), which
    ``tools/build_book.py`` uses so that a built page holds one line per run instead of the bar's frames;
    ``0``/``off`` nothing. Unset: ``summary`` inside a Jupyter kernel that no one watches (a book build, nbclient,
    papermill: see :func:`_in_batch_kernel`), so the page looks the same however the book is built; a bar
    elsewhere.

    Raises:
        ValueError: ``FMLIB_PROGRESS`` has another value.
    """
    if not progress:
        return "off"
    raw = os.environ.get("FMLIB_PROGRESS")
    if raw is None:
        return "summary" if _in_batch_kernel() else "bar"
    mode = _PROGRESS_MODES.get(raw.strip().lower())
    if mode is None:
        raise ValueError(f"FMLIB_PROGRESS={raw!r}: expected 1/bar, summary or 0/off")
    return mode


_SWITCH = {"": True, "1": True, "true": True, "yes": True, "on": True,
           "0": False, "false": False, "no": False, "off": False}


def _cache_enabled(cache: bool) -> bool:
    """``cache`` and ``FMLIB_CACHE`` (unset/1/on: on; 0/off: off).

    Raises:
        ValueError: ``FMLIB_CACHE`` has another value.
    """
    raw = os.environ.get("FMLIB_CACHE", "")
    enabled = _SWITCH.get(raw.strip().lower())
    if enabled is None:
        raise ValueError(f"FMLIB_CACHE={raw!r}: expected 1/on or 0/off")
    return cache and enabled


_WARNED_UNWRITABLE: set[str] = set()


def _usable_cache_file(name: str, key: str) -> Path | None:
    """The run's checkpoint path, or None (with one RuntimeWarning per folder and process) when the cache
    folder cannot be created or written: the run then trains without the cache."""
    try:
        folder = cache_dir()
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)
        probe.close()
    except OSError as err:
        where = os.environ.get("FMLIB_CACHE_DIR", "~/.cache/fmlib")
        if where not in _WARNED_UNWRITABLE:
            _WARNED_UNWRITABLE.add(where)
            warnings.warn(f"the checkpoint cache folder {where} is not usable ({type(err).__name__}: {err}); "
                          "training without the cache (set FMLIB_CACHE_DIR to a writable folder)",
                          RuntimeWarning, stacklevel=3)
        return None
    return _cache_file(name, key)


@contextlib.contextmanager
def _cache_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (POSIX ``flock``) for the block: of several processes asking for
    the same uncached run, one trains and writes it while the others wait here and then load it. No-op without
    a path or where ``fcntl`` is missing; a lock that cannot be taken (read-only folder) is skipped."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent processes may train the same run twice
        yield
        return
    if path is None:
        yield
        return
    try:
        handle = open(path.with_name(path.name + ".lock"), "a")
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: another process is training this run; waiting for its checkpoint", path.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


LEDGER_ENV = "FMLIB_CACHE_LOG"
"""Environment variable naming a JSON-lines file to which :func:`train` appends one record per run (the build
engine sets it, with ``FMLIB_CHAPTER``, to report which models one chapter trained and another loaded)."""


def _record_run(event: str, name: str, run_key: str, seconds: float) -> None:
    """Append ``{"event": "trained" | "loaded", "name", "key", "chapter", "seconds"}`` to the file named by
    ``$FMLIB_CACHE_LOG``; nothing when it is unset. A failed write warns and never stops training."""
    target = os.environ.get(LEDGER_ENV)
    if not target:
        return
    record = {"event": event, "name": name, "key": run_key, "seconds": round(float(seconds), 3),
              "chapter": os.environ.get("FMLIB_CHAPTER", "")}
    try:
        with open(target, "a", encoding="utf-8") as handle:  # one short line: appends do not interleave
            handle.write(json.dumps(record) + "\n")
    except OSError as err:
        warnings.warn(f"{LEDGER_ENV}={target!r}: cannot record the run ({err})", RuntimeWarning, stacklevel=3)


def _load_cached(model: nn.Module, path: Path, key: str) -> tuple[nn.Module, np.ndarray, float] | None:
    """(EMA model, losses, training seconds) from the checkpoint at ``path``, with the raw weights loaded into
    ``model``; None with a RuntimeWarning when the file is unreadable, for another key, or does not fit."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return None
    try:
        if ckpt.get("key") != key:
            raise ValueError(f"it stores key {str(ckpt.get('key'))[:16]}…, not {key[:16]}…")
        ema_model = copy.deepcopy(model)
        model.load_state_dict(ckpt["raw"])
        ema_model.load_state_dict(ckpt["ema"])
        losses = np.asarray(ckpt["losses"].numpy(), dtype=np.float64)
        seconds = float(ckpt["seconds"])
    except Exception as err:
        warnings.warn(f"cached checkpoint {path} does not fit this run ({type(err).__name__}: {err}); retraining",
                      RuntimeWarning, stacklevel=3)
        return None
    return ema_model, losses, seconds


CHECK_EVERY = 100
"""Every this many steps (and at the end) the trainer starts a copy of its recent losses to the host; it checks
them for NaN/inf once they have arrived (at once on the CPU; on CUDA at a later check, without waiting for the
device: see :class:`fmlib._readback.HostCopy`), and at the end of the run."""


def _raise_nonfinite(losses: list[float], first: int, name: str, steps: int) -> None:
    """Raise FloatingPointError if ``losses`` (steps ``first``, ``first + 1``, …, read back as Python floats)
    holds NaN or inf; the message names the checked step range and the first bad step."""
    bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
    if bad is not None:
        raise FloatingPointError(
            f"training {name!r}: the loss became non-finite between steps {first} and {first + len(losses) - 1} "
            f"of {steps} (first at step {first + bad}: {losses[bad]}); training stopped there. Lower the "
            "learning rate, check the data for NaN/inf and the loss for divisions by ~0")


def _warn_if_diverged(losses: np.ndarray, name: str) -> None:
    """RuntimeWarning when the run ended far above where it started: the mean loss of the last 10 % of the steps
    is more than 10× the lowest loss of the first 10 %, when that is positive (a learning rate too high, typically)."""
    n = max(1, len(losses) // 10)
    first, last = float(np.min(losses[:n])), float(np.mean(losses[-n:]))
    if len(losses) >= 20 and first > 0 and last > 10.0 * first:
        warnings.warn(f"training {name!r} diverged: the mean loss of the last {n} steps is {last:.3g}, more than "
                      f"10× the lowest of the first {n} ({first:.3g}); the returned model is not trained (lower "
                      "the learning rate)", RuntimeWarning, stacklevel=3)


def _check_loss(loss: object) -> Tensor:
    if not torch.is_tensor(loss) or loss.numel() != 1:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor, got {shape}")
    if not loss.requires_grad:
        raise ValueError("loss_fn returned a loss that does not depend on the model's parameters (no grad)")
    return loss.reshape(())


def train(
    model: nn.Module,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    name: str,
    key: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    cache: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn`` for ``config.steps`` AdamW steps, or load the cached result.

    ``model`` is moved to ``device`` (default :func:`fmlib.runtime.get_device`) and its initial weights are
    drawn from ``config.seed`` is the caller's job (build it after :func:`fmlib.runtime.seed_everything`);
    the batch generator is seeded from ``config.seed``. ``key`` must describe everything ``loss_fn`` depends
    on (data, path, parametrization), since functions cannot be hashed.

    ``loss_fn(model, batch_size, generator)`` returns a scalar loss tensor; ``generator`` is one CPU
    ``torch.Generator`` (seeded by ``config.seed``) shared by all steps: draw on the CPU and move to the
    model's device, so that runs are reproducible across devices. The step is described in the module
    docstring. ``model`` itself is trained in place and returned as ``raw_model``; on a cache hit its
    weights are replaced by the stored last iterate. A progress bar (``tqdm``, on stderr, refreshed at
    most once a second, and off a terminal only every 5% of the steps; smoothed loss in its postfix) shows
    unless ``progress=False`` or ``FMLIB_PROGRESS=0``; ``FMLIB_PROGRESS=summary`` prints one line at the end
    instead (:func:`progress_mode`). ``cache=False`` or ``FMLIB_CACHE=0`` neither reads
    nor writes the cache; an unreadable or mismatching cache file is retrained (with a RuntimeWarning), and a
    failure to write the checkpoint only warns. On CUDA the loss runs under bf16 autocast when ``config.amp``; the
    losses stay on the device, a copy of them starts to the host every :data:`CHECK_EVERY` steps and is checked
    for NaN/inf once it has arrived (no host sync in the steady state; at the end the run waits for the last
    copies; a non-finite loss stops the run with the step range in the message, on CUDA up to one check
    interval later).
    ``FMLIB_MAX_STEPS=N`` (a smoke test, see :mod:`fmlib.runtime`) trains min(steps, N) steps, with a
    RuntimeWarning; the cap is part of the cache key through the shortened config.

    Returns:
        :class:`TrainResult` with the EMA model (eval mode), the last iterate, the losses [steps], the
        wall-clock seconds and the key.

    Raises:
        FloatingPointError: the loss becomes NaN or infinite (the message gives the step).
        ValueError: non-positive steps or batch size, unknown lr_schedule (raised by :class:`TrainConfig`);
            ``loss_fn`` returns something other than a scalar tensor that depends on the parameters.
        TypeError: ``config`` is not a TrainConfig, or ``key`` holds a value without a stable JSON form.
    """
    from . import runtime

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string (it names the run and its cache file)")
    cap = runtime.max_train_steps()
    if cap is not None and config.steps > cap:
        warnings.warn(f"training {name!r}: FMLIB_MAX_STEPS caps it at {cap} of its {config.steps} steps "
                      "(a smoke test; its numbers are not the profile's)", RuntimeWarning, stacklevel=2)
        config = replace(config, steps=cap, warmup_steps=min(config.warmup_steps, cap))
    dev = torch.device(device) if device is not None else runtime.get_device()
    runtime.ensure_threads()
    model.to(dev)
    run_key = cache_key(name, model, config, {**dict(key or {}), "loss_fn": loss_fingerprint(loss_fn)})
    path = _usable_cache_file(name, run_key) if _cache_enabled(cache) else None
    mode = progress_mode(progress)

    with _cache_lock(path):  # one training per run: a second process asking for it waits here, then loads it
        if path is not None and path.exists():
            loaded = _load_cached(model, path, run_key)
            if loaded is not None:
                ema_model, losses, train_seconds = loaded
                logger.info("%s: loaded from the cache (%d steps, trained in %.1f s)", name, len(losses),
                            train_seconds)
                if mode == "bar":
                    print(f"{name}: loaded from the cache ({len(losses)} steps, trained in {train_seconds:.1f} s)",
                          file=sys.stderr)
                if not _describes_data(key):
                    warnings.warn(f"training {name!r}: returning a cached model for a key without a data "
                                  f"description ({dict(key or {})!r}); only the loss function's code and closure "
                                  "values identify its data. Pass key={'data': ...} naming the data set",
                                  RuntimeWarning, stacklevel=3)
                _record_run("loaded", name, run_key, train_seconds)
                return TrainResult(model=ema_model.eval(), raw_model=model.eval(), losses=losses, seconds=0.0,
                                   from_cache=True, key=run_key, path=path, train_seconds=train_seconds)
        result = _fit(model, loss_fn, config, name=name, run_key=run_key, path=path, dev=dev, mode=mode)
        _record_run("trained", name, run_key, result.seconds)
        return result


def _fit(model: nn.Module, loss_fn: LossFn, config: TrainConfig, *, name: str, run_key: str, path: Path | None,
         dev: torch.device, mode: str) -> TrainResult:
    """The training loop of :func:`train` (see there), writing the checkpoint to ``path`` unless None."""
    from tqdm import tqdm

    steps = config.steps
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=learning_rate(config, 0), weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_decay)
    use_amp = config.amp and dev.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    check_every = CHECK_EVERY  # the losses stay on the device; every check_every steps a copy to the host starts
    losses = torch.empty(steps, dtype=torch.float32, device=dev)
    values: list[float] = []  # the losses read back and checked so far
    pending: list[tuple[int, HostCopy]] = []  # (first step, copy on its way to the host) in step order
    smoothed: float | None = None
    copied = 0  # steps whose losses have been sent to the host
    checked = 0  # of which checked
    last_postfix = 0.0
    lr = learning_rate(config, 0)

    def check_arrived(wait: bool) -> None:
        """Check the copies that have arrived (all, waiting for them, if ``wait``): raise on a non-finite
        loss, record the values, advance the bar."""
        nonlocal smoothed, checked, last_postfix
        while pending and (wait or pending[0][1].ready()):
            first, arrived = pending.pop(0)
            recent = arrived.tolist()
            _raise_nonfinite(recent, first, name, steps)
            values.extend(recent)
            for value in recent:
                smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
            bar.update(len(recent))
            checked = first + len(recent)
            now = time.perf_counter()
            if mode == "bar" and (now - last_postfix >= 1.0 or checked == steps):
                bar.set_postfix(loss=f"{smoothed:.4g}", lr=f"{lr:.2g}", refresh=False)
                last_postfix = now

    # In a terminal the bar redraws in place once a second. Elsewhere (a notebook kernel, a log file) every
    # redraw may become a line of the built page, so it redraws only every 5% of the run (≤ ~20 lines); an
    # infinite maxinterval stops tqdm's monitor thread from dropping that to a redraw a second in slow runs.
    interactive = getattr(sys.stderr, "isatty", lambda: False)()
    bar = tqdm(total=steps, desc=name, file=sys.stderr, mininterval=1.0, disable=mode != "bar", dynamic_ncols=True,
               unit="step", miniters=None if interactive else max(1, steps // 20),
               maxinterval=10.0 if interactive else float("inf"))
    start = time.perf_counter()
    try:
        for step in range(steps):
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(), loss_check_deferred():
                loss = loss_fn(model, config.batch_size, generator)
            loss = _check_loss(loss) if step == 0 else loss.reshape(())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            ema.update(model)
            losses[step] = loss.detach().float()
            if (step + 1) % check_every == 0 or step + 1 == steps:
                # On CUDA the copy arrives while the next steps run; a check reads the copies that have
                # arrived (the previous one, in practice), so no step waits for the device. On the CPU every
                # copy has arrived at once: the losses are checked here.
                pending.append((copied, HostCopy(losses[copied:step + 1])))
                copied = step + 1
                check_arrived(wait=step + 1 == steps)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    finally:
        bar.close()
    if mode == "summary":
        rate = steps / max(seconds, 1e-9)
        speed = f"{rate:.0f} step/s" if rate >= 10 else f"{1e3 / rate:.0f} ms/step"
        print(f"{name}: {steps} steps in {seconds:.1f} s ({speed}), final loss {smoothed:.4g} (smoothed)",
              file=sys.stderr)

    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model)
    model.eval()
    ema_model.eval()
    losses_np = np.asarray(values, dtype=np.float64)  # float32 values, read back at the checks
    _warn_if_diverged(losses_np, name)
    if path is not None:
        _save_run(path, name=name, key=run_key, model=model, ema_model=ema_model,
                  losses=torch.tensor(values, dtype=torch.float32), seconds=seconds,
                  config=config)
    return TrainResult(model=ema_model, raw_model=model, losses=losses_np, seconds=seconds, from_cache=False,
                       key=run_key, path=path)


def model_architecture(model: nn.Module) -> dict | None:
    """``{"class": "MLP", "kwargs": {...}}`` for a model of :mod:`fmlib.models` (what
    :func:`fmlib.checkpoint.load_model` rebuilds), None for any other model."""
    from . import models

    cls = type(model)
    if getattr(models, cls.__name__, None) is not cls or not hasattr(model, "config"):
        return None
    return {"class": cls.__name__, "kwargs": model.config()}


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _save_run(path: Path, *, name: str, key: str, model: nn.Module, ema_model: nn.Module, losses: Tensor,
              seconds: float, config: TrainConfig) -> None:
    """Write the run's checkpoint; a failure (disk full, read-only folder) warns instead of raising."""
    from . import __version__

    ckpt = {"key": key, "name": name, "raw": _cpu_state(model), "ema": _cpu_state(ema_model),
            "losses": losses.detach().cpu(), "seconds": float(seconds), "config": asdict(config),
            "fmlib_version": __version__}
    architecture = model_architecture(model)
    if architecture is not None:
        ckpt["architecture"] = architecture
    try:
        save_checkpoint(ckpt, path)
    except (OSError, TypeError) as err:
        warnings.warn(f"could not write the checkpoint {path} ({type(err).__name__}: {err}); the run is not cached",
                      RuntimeWarning, stacklevel=3)
