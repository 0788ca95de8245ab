"""Checkpoints written atomically and read safely.

``save_checkpoint`` writes to a temporary file in the same folder and renames it over the target
(``os.replace`` is atomic), so a crash never leaves a half-written checkpoint. ``load_checkpoint`` uses
``torch.load(..., weights_only=True)``: a checkpoint holds tensors and plain Python containers/numbers
only, never pickled objects. A corrupt or unreadable file gives ``None`` (and a warning), so a cache
can retrain instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``obj`` (tensors, numbers, strings, lists, dicts) to ``path``; return the path."""
    raise NotImplementedError


def load_checkpoint(path: str | Path, *, map_location: str | None = "cpu") -> dict[str, Any] | None:
    """Load a checkpoint with ``weights_only=True``; ``None`` (with a ``RuntimeWarning``) if the file is
    missing, truncated or not a checkpoint."""
    raise NotImplementedError
