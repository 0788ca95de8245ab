"""Tests of fmlib.train: optimisation, determinism, cache (hit, key, corruption, off), NaN, EMA, schedules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from _slow_copy import SlowCopy
from fmlib import train as train_mod
from fmlib._readback import HostCopy, ReadbackCounter
from fmlib.models import MLP
from fmlib.train import EMA, TrainConfig, TrainResult, cache_dir, cache_key, learning_rate, progress_mode, train

W_TRUE = torch.tensor([[1.5, -2.0, 0.5]])


def regression_loss(model: nn.Module, batch: int, gen: torch.Generator) -> torch.Tensor:
    """y = W x + 0.3, x ~ N(0, I): a linear model can reach zero loss."""
    x = torch.randn(batch, 3, generator=gen)
    return (model(x) - (x @ W_TRUE.T + 0.3)).square().mean()


class Counting:
    """A loss function that counts its calls."""

    def __init__(self, fn=regression_loss) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, model, batch, gen):
        self.calls += 1
        return self.fn(model, batch, gen)


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, 1)


CONFIG = TrainConfig(steps=150, batch_size=32, lr=0.05, ema_decay=0.9, seed=0)


def _run(config: TrainConfig = CONFIG, name: str = "regression", **kwargs) -> TrainResult:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("key", {"data": "y = W x + 0.3"})
    return train(_linear(), kwargs.pop("loss_fn", regression_loss), config, name=name, device="cpu", **kwargs)


def test_loss_decreases_on_a_tiny_regression():
    result = _run(cache=False)
    assert result.losses.shape == (150,) and result.losses.dtype == np.float64
    assert result.losses[-20:].mean() < 0.01 * result.losses[:5].mean()
    torch.testing.assert_close(result.model.weight.detach(), W_TRUE, atol=0.05, rtol=0)
    assert not result.from_cache and result.path is None and result.seconds > 0
    assert result.steps_per_second == pytest.approx(150 / result.seconds)


def test_same_seed_gives_the_same_losses_and_weights():
    a, b = _run(cache=False), _run(cache=False)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert torch.equal(a.raw_model.weight, b.raw_model.weight)
    c = _run(TrainConfig(steps=150, batch_size=32, lr=0.05, ema_decay=0.9, seed=1), cache=False)
    assert not np.array_equal(a.losses, c.losses)


def test_returned_models_are_ema_and_last_iterate_in_eval_mode():
    result = _run(cache=False)
    assert not result.model.training and not result.raw_model.training
    assert result.model is not result.raw_model
    assert not torch.equal(result.model.weight, result.raw_model.weight)
    no_ema = _run(TrainConfig(steps=20, batch_size=8, ema_decay=0.0), cache=False)
    assert torch.equal(no_ema.model.weight, no_ema.raw_model.weight)


def test_cache_hit_returns_identical_weights_without_training():
    first = _run(loss_fn=Counting())  # the cache key holds the loss function's fingerprint: the same class and state
    assert first.path is not None and first.path.is_file() and first.path.parent == cache_dir()
    assert first.path.name == f"regression-{first.key[:16]}.pt"
    counting = Counting()
    second = _run(loss_fn=counting)
    assert second.from_cache and counting.calls == 0 and second.seconds == 0.0
    assert second.key == first.key and second.path == first.path
    for a, b in ((first.model, second.model), (first.raw_model, second.raw_model)):
        for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(pa, pb)
    np.testing.assert_array_equal(first.losses, second.losses)
    assert second.steps_per_second == pytest.approx(first.steps_per_second)
    assert not second.model.training


def test_different_config_key_name_or_model_gives_a_different_key():
    base = cache_key("run", _linear(), CONFIG, {"data": "a"})
    assert cache_key("run", _linear(1), CONFIG, {"data": "a"}) == base   # weights are not hashed, structure is
    assert cache_key("run", _linear(), TrainConfig(steps=151, batch_size=32, lr=0.05, ema_decay=0.9), {"data": "a"}) != base
    assert cache_key("run", _linear(), CONFIG, {"data": "b"}) != base
    assert cache_key("run", _linear(), CONFIG) != base
    assert cache_key("other", _linear(), CONFIG, {"data": "a"}) != base
    assert cache_key("run", nn.Linear(3, 2), CONFIG, {"data": "a"}) != base
    assert cache_key("run", MLP(hidden=16), CONFIG) != cache_key("run", MLP(hidden=32), CONFIG)
    assert len(base) == 64 and int(base, 16) >= 0


def test_cache_key_includes_the_fmlib_source_digest(monkeypatch):
    base = cache_key("run", _linear(), CONFIG)
    monkeypatch.setattr(train_mod, "_source_digest", lambda: "edited")
    assert cache_key("run", _linear(), CONFIG) != base


def test_cache_key_rejects_values_without_a_stable_form():
    with pytest.raises(TypeError):
        cache_key("run", _linear(), CONFIG, {"fn": object()})
    assert cache_key("run", _linear(), CONFIG, {"x": np.float32(0.5), "t": torch.tensor([1.0])})


def test_corrupt_cache_file_is_retrained_with_a_warning():
    first = _run(loss_fn=Counting())
    first.path.write_bytes(b"garbage")
    counting = Counting()
    with pytest.warns(RuntimeWarning) as caught:
        again = _run(loss_fn=counting)
    assert not again.from_cache and counting.calls == CONFIG.steps
    assert not any("weights_only" in str(w.message) for w in caught)  # never advise unsafe loading
    np.testing.assert_array_equal(again.losses, first.losses)
    assert _run(loss_fn=Counting()).from_cache                               # the retrained run was written back


def test_cache_file_with_another_key_is_retrained(monkeypatch):
    first = _run()
    ckpt = torch.load(first.path, weights_only=True)
    ckpt["key"] = "0" * 64
    torch.save(ckpt, first.path)
    with pytest.warns(RuntimeWarning, match="does not fit"):
        assert not _run().from_cache


def test_cache_can_be_disabled(monkeypatch):
    monkeypatch.setenv("FMLIB_CACHE", "0")
    result = _run()
    assert result.path is None and list(cache_dir().iterdir()) == []
    assert not _run().from_cache


def test_step_cap_shortens_the_run_warns_and_keys_the_cache(monkeypatch):
    full = _run()
    monkeypatch.setenv("FMLIB_MAX_STEPS", "40")
    with pytest.warns(RuntimeWarning, match="FMLIB_MAX_STEPS caps it at 40 of its 150 steps"):
        capped = _run()
    assert capped.losses.shape == (40,) and not capped.from_cache and capped.key != full.key
    np.testing.assert_array_equal(capped.losses, full.losses[:40])  # the same run, stopped early
    short = TrainConfig(steps=30, batch_size=32, lr=0.05, seed=0)
    assert _run(short, cache=False).losses.shape == (30,)  # a run below the cap is untouched
    monkeypatch.delenv("FMLIB_MAX_STEPS")
    assert _run().from_cache and _run().key == full.key  # the uncapped run still finds its own checkpoint


def test_nan_loss_raises_naming_the_step():
    calls = {"n": 0}

    def nan_at_3(model, batch, gen):
        loss = regression_loss(model, batch, gen)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 4 else loss

    with pytest.raises(FloatingPointError, match="step 3"):
        _run(loss_fn=nan_at_3, cache=False)


def test_loss_fn_must_return_a_scalar_with_grad():
    with pytest.raises(ValueError, match="scalar"):
        _run(loss_fn=lambda m, b, g: m(torch.randn(b, 3, generator=g)), cache=False)
    with pytest.raises(ValueError, match="grad"):
        _run(loss_fn=lambda m, b, g: torch.tensor(1.0), cache=False)


def test_progress_bar_on_stderr_and_silenced_by_env(capsys, monkeypatch):
    _run(TrainConfig(steps=5, batch_size=4), name="bar", cache=False, progress=True)
    assert "bar" in capsys.readouterr().err
    monkeypatch.setenv("FMLIB_PROGRESS", "0")
    _run(TrainConfig(steps=5, batch_size=4), name="bar", cache=False, progress=True)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_off_a_terminal_redraws_only_every_5_percent(monkeypatch):
    import tqdm as tqdm_module

    seen = {}

    class Recording(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm_module, "tqdm", Recording)
    _run(TrainConfig(steps=40, batch_size=4), name="bar", cache=False, progress=True)
    # tqdm's monitor thread resets miniters to 1 after maxinterval seconds without a redraw; off a terminal
    # that would put a frame a second into a built page, so maxinterval must be infinite there
    assert seen["miniters"] == 2 and seen["maxinterval"] == float("inf")


def test_progress_summary_is_one_line_and_unknown_modes_raise(capsys, monkeypatch):
    monkeypatch.setenv("FMLIB_PROGRESS", "summary")
    _run(TrainConfig(steps=7, batch_size=4), name="quiet-run", cache=False, progress=True)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and "\r" not in captured.err
    assert lines[0].startswith("quiet-run: 7 steps in ") and "final loss" in lines[0]
    assert progress_mode(progress=False) == "off"
    monkeypatch.setenv("FMLIB_PROGRESS", "Bar ")
    assert progress_mode() == "bar"
    monkeypatch.setenv("FMLIB_PROGRESS", "verbose")
    with pytest.raises(ValueError, match="FMLIB_PROGRESS='verbose'"):
        _run(TrainConfig(steps=2, batch_size=4), name="x", cache=False, progress=True)


def test_ema_matches_the_hand_computation():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.5)
    expected = 1.0
    for k, value in enumerate([2.0, 4.0, 8.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        d = min(0.5, (1 + k) / (10 + k))                       # 0.1, 2/11, 0.25
        expected = d * expected + (1 - d) * value
    # by hand: 0.1·1 + 0.9·2 = 1.9; (2/11)·1.9 + (9/11)·4 = 3.6182; 0.25·3.6182 + 0.75·8 = 6.9045
    assert expected == pytest.approx(6.904545, abs=1e-5)
    target = nn.Linear(1, 1, bias=False)
    ema.copy_to(target)
    assert target.weight.item() == pytest.approx(expected, abs=1e-6)
    assert model.weight.item() == 8.0


def test_ema_rejects_a_different_model():
    ema = EMA(nn.Linear(2, 2), 0.9)
    with pytest.raises(ValueError):
        ema.copy_to(nn.Linear(3, 2))
    with pytest.raises(ValueError):
        EMA(nn.Linear(2, 2), 1.5)


def test_warmup_and_cosine_learning_rates():
    cfg = TrainConfig(steps=110, batch_size=1, lr=1.0, warmup_steps=10, lr_schedule="cosine")
    assert [learning_rate(cfg, k) for k in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 60) == pytest.approx(0.5)                    # halfway through the cosine
    assert learning_rate(cfg, 35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(cfg, 109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    const = TrainConfig(steps=50, batch_size=1, lr=0.3, warmup_steps=5)
    assert learning_rate(const, 2) == pytest.approx(0.18) and learning_rate(const, 40) == pytest.approx(0.3)
    assert learning_rate(TrainConfig(steps=5, batch_size=1, lr=0.3), 0) == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(batch_size=0), dict(lr_schedule="linear"), dict(lr=-1.0),
                                 dict(ema_decay=1.2), dict(grad_clip=0.0), dict(warmup_steps=-1),
                                 dict(warmup_steps=11)])
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        TrainConfig(**{"steps": 10, "batch_size": 4, **bad})


def test_trains_an_mlp_velocity_model_end_to_end():
    def loss_fn(model, batch, gen):
        x1 = torch.randn(batch, 2, generator=gen) * 0.1 + 2.0
        x0 = torch.randn(batch, 2, generator=gen)
        t = torch.rand(batch, generator=gen)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        return (model(xt, t) - (x1 - x0)).square().mean()

    torch.manual_seed(0)
    result = train(MLP(hidden=32, depth=2), loss_fn, TrainConfig(steps=60, batch_size=64, lr=3e-3, warmup_steps=5,
                   lr_schedule="cosine"), name="mlp", device="cpu", progress=False)
    assert result.losses[-10:].mean() < result.losses[:5].mean()
    assert result.model(torch.zeros(3, 2), 0.5).shape == (3, 2)


def test_nonfinite_loss_is_checked_every_n_steps_and_named_by_step_range():
    calls = {"n": 0}

    def nan_at_130(model, batch, gen):
        calls["n"] += 1
        loss = regression_loss(model, batch, gen)
        return loss * float("inf") if calls["n"] == 131 else loss

    config = TrainConfig(steps=1000, batch_size=8, lr=0.01)
    with pytest.raises(FloatingPointError, match=r"between steps 100 and 199 of 1000 \(first at step 130: inf\)"):
        _run(config, loss_fn=nan_at_130, cache=False)
    assert calls["n"] == 200  # stopped at the first check after the bad step, not at the end


@pytest.mark.parametrize("scheduler", ["condot", "cosine", "ve"])
def test_flow_matching_training_steps_read_nothing_back_between_checks(scheduler):
    # the steady state of a training step with fmlib's loss, path and model has no host sync: the number of
    # read-backs does not grow with the steps between two loss checks
    from fmlib import losses, paths

    path = paths.AffinePath(paths.get_scheduler(scheduler))

    def loss_fn(model, batch, gen):
        return losses.conditional_flow_matching_loss(model, path, torch.randn(batch, 2, generator=gen), generator=gen)

    counts = []
    for steps in (10, 90):
        with ReadbackCounter() as readbacks:
            train(MLP(hidden=8, depth=1), loss_fn, TrainConfig(steps=steps, batch_size=16), name="sync", device="cpu",
                  cache=False, progress=False)
        counts.append(readbacks.count)
    assert counts[0] == counts[1], counts


def test_a_diverging_run_warns():
    model_loss = lambda m, b, g: (m.weight.square().sum() + m.bias.square().sum()) + 0 * g.initial_seed()  # noqa: E731
    with pytest.warns(RuntimeWarning, match="diverged"):
        _run(TrainConfig(steps=50, batch_size=1, lr=1e6, grad_clip=None), loss_fn=model_loss, cache=False)


def test_run_ledger_records_trained_then_loaded_with_the_chapter(monkeypatch, tmp_path):
    ledger = tmp_path / "runs.jsonl"
    monkeypatch.setenv("FMLIB_CACHE_LOG", str(ledger))
    monkeypatch.setenv("FMLIB_CHAPTER", "chapter_a")
    first = _run(loss_fn=Counting())
    monkeypatch.setenv("FMLIB_CHAPTER", "chapter_b")
    second = _run(loss_fn=Counting())
    assert second.from_cache
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(r["event"], r["chapter"]) for r in records] == [("trained", "chapter_a"), ("loaded", "chapter_b")]
    assert records[0]["key"] == records[1]["key"] == first.key


def test_run_ledger_that_cannot_be_written_warns_and_trains(monkeypatch, tmp_path):
    monkeypatch.setenv("FMLIB_CACHE_LOG", str(tmp_path / "missing-folder" / "runs.jsonl"))
    with pytest.warns(RuntimeWarning, match="cannot record the run"):
        result = _run(cache=False)
    assert not result.from_cache


def test_a_training_run_reads_nothing_back_outside_its_host_copies():
    # the CPU stand-in for the GPU claim: with fmlib's loss, path and model, a training run reads its losses only
    # through HostCopy (a copy that does not block on CUDA), never with a read-back that waits for the device
    from fmlib import losses, paths
    from fmlib.train import CHECK_EVERY

    path = paths.AffinePath(paths.CondOTScheduler())
    loss_fn = losses.cfm_loss_fn(path, lambda n, g: torch.randn(n, 2, generator=g))
    steps = 2 * CHECK_EVERY + 50
    with ReadbackCounter() as readbacks:
        result = train(MLP(hidden=8, depth=1), loss_fn, TrainConfig(steps=steps, batch_size=16), name="syncs",
                       device="cpu", cache=False, progress=False)
    assert readbacks.count == 0, readbacks.count
    assert len(result.losses) == steps and np.isfinite(result.losses).all()


def test_with_a_slow_device_the_trainer_checks_each_copy_a_check_later_and_waits_only_at_the_end(monkeypatch):
    from fmlib.train import CHECK_EVERY

    steps = 3 * CHECK_EVERY + 10
    counts, runs = [], []
    for copy_type in (HostCopy, SlowCopy):
        monkeypatch.setattr(train_mod, "HostCopy", copy_type)
        with ReadbackCounter() as readbacks:  # (the cache key's fingerprint of the loss reads W_TRUE once)
            runs.append(_run(TrainConfig(steps=steps, batch_size=8), cache=False))
        counts.append(readbacks.count)
    assert counts[1] == counts[0] + 1  # the last copy, waited for at the end of the run
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)

    calls = {"n": 0}

    def nan_at_130(model, batch, gen):
        calls["n"] += 1
        loss = regression_loss(model, batch, gen)
        return loss * float("inf") if calls["n"] == 131 else loss

    with pytest.raises(FloatingPointError, match=r"between steps 100 and 199 of 1000 \(first at step 130: inf\)"):
        _run(TrainConfig(steps=1000, batch_size=8, lr=0.01), loss_fn=nan_at_130, cache=False)
    assert calls["n"] == 300  # the copy of steps 100..199 arrived during the next interval: checked at step 300
