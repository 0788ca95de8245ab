"""Checkpoints written atomically and read safely.

``save_checkpoint`` writes to a temporary file in the same folder and renames it over the target
(``os.replace`` is atomic), so a crash never leaves a half-written checkpoint. ``load_checkpoint`` uses
``torch.load(..., weights_only=True)``: a checkpoint holds tensors and plain Python containers/numbers
only, never pickled objects. A corrupt or unreadable file gives ``None`` (and a warning), so a cache
can retrain instead of failing.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "load_model"]

_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device)


def _check_plain(obj: object, where: str = "obj") -> None:
    """Raise ``TypeError`` naming the first entry of ``obj`` that ``weights_only`` loading would refuse."""
    if torch.is_tensor(obj) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool | type(None)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; keys must be str or numbers")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, numbers, strings, "
                    "None and lists/tuples/dicts of them (convert NumPy arrays with torch.as_tensor)")


def _fsync_dir(folder: Path) -> None:
    """Flush the folder entry of a rename to disk where the platform allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``obj`` (tensors, numbers, strings, lists, dicts) to ``path``; return the path.

    The bytes go to ``<path>.tmp<random>`` in the same folder, are flushed and fsynced, and the file is then
    renamed over ``path`` with ``os.replace``: readers see either the old file or the complete new one. The
    folder is created if missing. On any error the temporary file is removed and the old ``path`` (if any)
    is left as it was.

    Raises:
        TypeError: ``obj`` is not a dict, or holds something ``weights_only`` loading would refuse (the
            message names the entry); nothing is written then.
        OSError: the folder cannot be created or written.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    _check_plain(obj)
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"cannot write the checkpoint {path}: {folder} is a file, not a folder")
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(obj), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | None = "cpu") -> dict[str, Any] | None:
    """Load a checkpoint with ``weights_only=True``; ``None`` (with a ``RuntimeWarning``) if the file is
    missing, truncated or not a checkpoint.

    ``map_location`` is passed to :func:`torch.load` (``"cpu"`` by default, so a GPU checkpoint loads
    anywhere). A file holding pickled objects other than tensors and plain containers is refused by
    ``weights_only`` and also gives ``None``; so does a file whose top level is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        warnings.warn(f"no checkpoint at {path}", RuntimeWarning, stacklevel=2)
        return None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, refused globals, …: all mean "not a checkpoint"
        # torch's message for a refused file advises weights_only=False, i.e. running whatever the file holds:
        # fmlib never passes that advice on
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip() and "weights_only" not in ln]
        reason = lines[0][:300] if lines else "not a torch checkpoint"
        warnings.warn(f"could not read checkpoint {path} ({type(err).__name__}: {reason}); it is not used",
                      RuntimeWarning, stacklevel=2)
        return None
    if not isinstance(obj, dict):
        warnings.warn(f"{path} holds a {type(obj).__name__}, not a checkpoint dict", RuntimeWarning, stacklevel=2)
        return None
    return obj


def load_model(source: str | Path | Any, *, ema: bool = True, device: str | torch.device | None = None):
    """Rebuild a trained :mod:`fmlib.models` network from a checkpoint written by :func:`fmlib.train.train`:
    its architecture (class and constructor arguments, stored in the checkpoint) and its weights — the EMA
    weights by default, the last iterate with ``ema=False``. Returns the model in eval mode on ``device``
    (default :func:`fmlib.runtime.get_device`).

    ``source`` is a checkpoint path or a :class:`fmlib.train.TrainResult` (its ``path``). Only classes of
    :mod:`fmlib.models` are rebuilt; nothing in the file is executed.

        result = train.train(...)                       # later, in another process:
        model = checkpoint.load_model(result.path)

    Raises:
        FileNotFoundError: no readable checkpoint there.
        ValueError: the checkpoint has no architecture (a model outside fmlib.models, or written by an older
            fmlib): build the model yourself and ``load_state_dict(load_checkpoint(path)["ema"])``.
    """
    from . import models, runtime

    path = Path(getattr(source, "path", source)) if source is not None else None
    if path is None or str(path) == "None":
        raise FileNotFoundError("this result has no checkpoint file (it was trained with the cache off)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ckpt = load_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no readable checkpoint at {path}")
    arch = ckpt.get("architecture")
    if not isinstance(arch, dict) or not isinstance(getattr(models, str(arch.get("class")), None), type):
        raise ValueError(f"{path} does not record an fmlib.models architecture; build the model yourself and load "
                         "its weights with model.load_state_dict(load_checkpoint(path)['ema'])")
    kwargs = dict(arch["kwargs"])
    if "channel_mults" in kwargs:
        kwargs["channel_mults"] = tuple(kwargs["channel_mults"])
    model = getattr(models, arch["class"])(**kwargs)
    model.load_state_dict(ckpt["ema" if ema else "raw"])
    return model.to(device if device is not None else runtime.get_device()).eval()
