"""fmlib.runtime: profile, device, threads and seeds are chosen as documented, and bad settings are errors."""

import random

import numpy as np
import pytest
import torch

from fmlib import runtime


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("FMLIB_PROFILE", "full")
    assert runtime.get_profile() == "full" and runtime.by_profile(quick=1, full=2) == 2
    monkeypatch.setenv("FMLIB_PROFILE", " Quick ")
    assert runtime.get_profile() == "quick" and runtime.by_profile(quick=1, full=2) == 1
    monkeypatch.setenv("FMLIB_PROFILE", "medium")
    with pytest.raises(ValueError, match="not a profile"):
        runtime.get_profile()


def test_default_profile_follows_the_device(monkeypatch):
    monkeypatch.delenv("FMLIB_PROFILE", raising=False)
    monkeypatch.setenv("FMLIB_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu") and runtime.get_profile() == "quick"


def test_device_errors(monkeypatch):
    monkeypatch.setenv("FMLIB_DEVICE", "abacus")
    with pytest.raises(ValueError, match="not a device"):
        runtime.get_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("FMLIB_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA"):
            runtime.get_device()


def test_threads_from_environment(monkeypatch, restore_threads):
    monkeypatch.setenv("FMLIB_THREADS", "1")
    assert runtime.configure_threads() == 1 and torch.get_num_threads() == 1
    for bad, match in [("two", "not an integer"), ("0", "positive")]:
        monkeypatch.setenv("FMLIB_THREADS", bad)
        with pytest.raises(ValueError, match=match):
            runtime.configure_threads()


@pytest.mark.parametrize("cores, busy, expected", [(2, 0, 2), (2, 1, 1), (2, 3, 1), (8, 2, 6), (1, 0, 1)])
def test_default_threads_leave_busy_cores_alone(monkeypatch, restore_threads, cores, busy, expected):
    monkeypatch.delenv("FMLIB_THREADS", raising=False)
    monkeypatch.setattr(runtime, "_available_cores", lambda: cores)
    monkeypatch.setattr(runtime, "_busy_cores", lambda: busy)
    assert runtime.configure_threads() == expected
    assert runtime.configure_threads(max_threads=1) == 1
    with pytest.raises(ValueError, match="positive"):
        runtime.configure_threads(max_threads=0)


def test_seed_everything_is_reproducible():
    g = runtime.seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    g = runtime.seed_everything(3)
    assert first == (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    with pytest.raises(ValueError):
        runtime.seed_everything(-1)


def test_describe_names_profile_device_and_threads(monkeypatch):
    monkeypatch.setenv("FMLIB_PROFILE", "quick")
    monkeypatch.setenv("FMLIB_DEVICE", "cpu")
    line = runtime.describe()
    assert "profile=quick" in line and "device=cpu" in line and "threads" in line
    assert "SMOKE" not in line
    monkeypatch.setenv("FMLIB_MAX_STEPS", "25")
    assert "SMOKE TEST: training capped at 25 steps" in runtime.describe()


@pytest.mark.parametrize("text, expected", [("", None), ("  ", None), ("1", 1), (" 300 ", 300)])
def test_max_train_steps_from_environment(monkeypatch, text, expected):
    monkeypatch.setenv("FMLIB_MAX_STEPS", text)
    assert runtime.max_train_steps() == expected


@pytest.mark.parametrize("bad", ["0", "-5", "ten", "2.5"])
def test_max_train_steps_rejects_non_positive_integers(monkeypatch, bad):
    monkeypatch.setenv("FMLIB_MAX_STEPS", bad)
    with pytest.raises(ValueError, match="FMLIB_MAX_STEPS"):
        runtime.max_train_steps()


def test_busy_cores_from_proc_stat(monkeypatch):
    samples = iter([(100, 1000), (100 + 150, 1000 + 200)])  # 75% of 2 cores busy → 2 busy (rounded 1.5)
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(runtime, "_available_cores", lambda: 2)
    assert runtime._busy_cores(window=0) == 2
    samples = iter([(0, 0), (10, 200)])  # 5% busy → 0
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(samples))
    assert runtime._busy_cores(window=0) == 0


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_times", lambda: None)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.4, 1.0, 1.0))
    assert runtime._busy_cores(window=0) == 1
