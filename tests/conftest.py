"""Shared pytest setup: one torch thread per test process, an isolated checkpoint cache, quick profile, no step cap."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FMLIB_PROFILE", "quick")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty checkpoint cache and the default training environment."""
    monkeypatch.setenv("FMLIB_CACHE_DIR", str(tmp_path / "fmlib-cache"))
    monkeypatch.delenv("FMLIB_MAX_STEPS", raising=False)  # a smoke-test cap in the shell must not shorten tests
    monkeypatch.delenv("FMLIB_PROGRESS", raising=False)  # tests of the bar expect the default mode
    yield


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(1234)
