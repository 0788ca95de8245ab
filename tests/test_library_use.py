"""fmlib used as a library, outside the book: the README's snippet, one training per run across processes, the
cache key's view of the data, rebuilding a model from its checkpoint, the trainer's output in a batch kernel, and
bad inputs that must get a clear error (or a safe, announced recovery) instead of a silent wrong answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from fmlib import checkpoint, data, likelihood, losses, models, paths
from fmlib import train as train_mod
from fmlib.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
PATH = paths.AffinePath(paths.CondOTScheduler())


def _toy_loss(name: str):
    return losses.cfm_loss_fn(PATH, lambda n, g: data.sample_toy(name, n, generator=g))


def _mlp() -> models.MLP:
    torch.manual_seed(0)
    return models.MLP(hidden=16, depth=1)


def test_readme_snippet_runs_and_shows_a_result(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python code block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    # No time limit here (a loaded machine made it flaky): speed goals live in benchmarks/.
    assert any(p.suffix == ".png" for p in tmp_path.iterdir()), "the snippet should save a figure"


_TWO_PROCESS_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
from fmlib.train import TrainConfig, train

FLAG, OUT = Path(sys.argv[1]), Path(sys.argv[2])

def loss_fn(model, batch, gen):
    FLAG.touch()
    time.sleep(0.05)
    return model(torch.randn(batch, 3, generator=gen)).square().mean()

torch.manual_seed(0)
result = train(torch.nn.Linear(3, 1), loss_fn, TrainConfig(steps=40, batch_size=4), name="locked",
               key={"data": "randn"}, device="cpu", progress=False)
OUT.write_text(json.dumps({"from_cache": result.from_cache}))
"""


def test_two_processes_asking_for_the_same_uncached_model_train_it_once(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    flag = tmp_path / "training-started"
    env = {**os.environ, "FMLIB_CACHE_DIR": str(tmp_path / "cache"), "FMLIB_THREADS": "1", "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    first = subprocess.Popen([sys.executable, str(script), str(flag), str(outs[0])], env=env)
    deadline = time.monotonic() + 240
    while not flag.exists():
        assert first.poll() is None, "the first process ended before it started training"
        assert time.monotonic() < deadline, "the first process did not start training"
        time.sleep(0.05)
    second = subprocess.Popen([sys.executable, str(script), str(flag), str(outs[1])], env=env)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    results = [json.loads(p.read_text())["from_cache"] for p in outs]
    assert results == [False, True]  # the second waited for the first's checkpoint and loaded it


def test_changing_the_data_inside_the_loss_retrains():
    key = {"data": "a toy set", "path": PATH.config()}
    moons = train(_mlp(), _toy_loss("moons"), TrainConfig(steps=3, batch_size=8), name="same", key=key,
                  progress=False)
    circles = train(_mlp(), _toy_loss("circles"), TrainConfig(steps=3, batch_size=8), name="same", key=key,
                    progress=False)
    again = train(_mlp(), _toy_loss("moons"), TrainConfig(steps=3, batch_size=8), name="same", key=key,
                  progress=False)
    assert not circles.from_cache and circles.key != moons.key
    assert again.from_cache and again.key == moons.key


def test_data_tensors_in_the_closure_are_part_of_the_key():
    def loss_over(points):
        return lambda m, b, g: losses.conditional_flow_matching_loss(m, PATH, points[:b], generator=g)

    a, b = torch.zeros(8, 2), torch.ones(8, 2)
    assert train_mod.loss_fingerprint(loss_over(a)) == train_mod.loss_fingerprint(loss_over(a.clone()))
    assert train_mod.loss_fingerprint(loss_over(a)) != train_mod.loss_fingerprint(loss_over(b))


def test_a_cache_hit_without_a_data_description_warns_loudly():
    train(_mlp(), _toy_loss("moons"), TrainConfig(steps=3, batch_size=8), name="bare", progress=False)
    with pytest.warns(RuntimeWarning, match="without a data description"):
        assert train(_mlp(), _toy_loss("moons"), TrainConfig(steps=3, batch_size=8), name="bare",
                     progress=False).from_cache


def test_a_model_is_rebuilt_from_its_checkpoint():
    model = models.MLP(hidden=16, depth=2, max_freq=7.0)
    result = train(model, _toy_loss("moons"), TrainConfig(steps=5, batch_size=8), name="rebuild",
                   key={"data": "moons"}, device="cpu", progress=False)
    rebuilt = checkpoint.load_model(result.path, device="cpu")
    assert isinstance(rebuilt, models.MLP) and not rebuilt.training and rebuilt.config() == model.config()
    x = torch.randn(4, 2)
    torch.testing.assert_close(rebuilt(x, 0.3), result.model(x, 0.3))
    torch.testing.assert_close(checkpoint.load_model(result, ema=False, device="cpu")(x, 0.3), result.raw_model(x, 0.3))
    unet = models.UNet(base_channels=8, time_dim=8, channel_mults=(1, 2))
    assert models.UNet(**{**unet.config(), "channel_mults": tuple(unet.config()["channel_mults"])}).config() == \
        unet.config()


def test_load_model_refuses_a_checkpoint_without_architecture(tmp_path):
    result = train(torch.nn.Linear(2, 2), lambda m, b, g: m(torch.randn(b, 2, generator=g)).square().mean(),
                   TrainConfig(steps=2, batch_size=2), name="plain", key={"data": "randn"}, device="cpu",
                   progress=False)
    with pytest.raises(ValueError, match="architecture"):
        checkpoint.load_model(result.path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load_model(tmp_path / "missing.pt")


def test_cfm_loss_fn_places_batches_on_the_model_device_and_checks_at_once():
    loss_fn = _toy_loss("moons")
    loss = loss_fn(_mlp(), 16, torch.Generator().manual_seed(0))
    assert loss.shape == () and loss.requires_grad
    with pytest.raises(ValueError, match="parametrization"):
        losses.cfm_loss_fn(PATH, lambda n, g: torch.randn(n, 2), parametrization="noise")
    with pytest.raises(ValueError, match="t_max"):
        losses.cfm_loss_fn(PATH, lambda n, g: torch.randn(n, 2), t_max=1.5)


def test_in_a_batch_kernel_the_trainer_prints_one_summary_line_and_no_cache_housekeeping(capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "_in_batch_kernel", lambda: True)
    assert train_mod.progress_mode() == "summary"
    args = (_toy_loss("moons"), TrainConfig(steps=4, batch_size=8))
    train(_mlp(), *args, name="page", key={"data": "moons"}, progress=True)
    first = capsys.readouterr()
    assert first.out == "" and len(first.err.strip().splitlines()) == 1 and "page: 4 steps" in first.err
    assert train(_mlp(), *args, name="page", key={"data": "moons"}, progress=True).from_cache
    assert capsys.readouterr().err == ""  # "loaded from the cache" stays off the page
    monkeypatch.setenv("FMLIB_PROGRESS", "bar")
    assert train_mod.progress_mode() == "bar"  # an explicit choice still wins


def test_batch_kernel_detection(monkeypatch):
    import types

    class Shell:
        kernel = object()

    fake_ipython = types.SimpleNamespace(get_ipython=lambda: Shell())
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    for name in train_mod._INTERACTIVE_KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    assert train_mod._in_batch_kernel()  # nbclient / jupyter-book: no front end's variable
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/notebook.ipynb")
    assert not train_mod._in_batch_kernel()  # a notebook someone watches keeps its bar
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert not train_mod._in_batch_kernel()  # plain Python


def test_train_applies_the_thread_policy_once(monkeypatch):
    from fmlib import runtime

    calls = []
    monkeypatch.setattr(runtime, "_threads_configured", False)
    monkeypatch.setattr(runtime, "_THREADS_AT_IMPORT", torch.get_num_threads())
    monkeypatch.setattr(runtime, "configure_threads", lambda *a, **k: calls.append(1) or 1)
    train(_mlp(), _toy_loss("moons"), TrainConfig(steps=2, batch_size=8), name="threads", cache=False,
          progress=False)
    assert calls == [1]


# --- bad inputs: each a clear error or an announced recovery --------------------------------------------------


@pytest.mark.parametrize("var, value", [("FMLIB_THREADS", "0"), ("FMLIB_THREADS", "abc"), ("FMLIB_CACHE", "maybe")])
def test_bad_environment_fails_fast_outside_chapters(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=var):
        train(_mlp(), _toy_loss("moons"), TrainConfig(steps=2, batch_size=8), name="env", progress=False)


def _unusable_cache_dirs(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {"parent is a file": a_file / "cache", "read-only file system": Path("/proc/fmlib-cache")}


@pytest.mark.parametrize("case", ["parent is a file", "read-only file system"])
def test_an_unusable_cache_dir_trains_anyway_warns_once_and_does_not_cache(tmp_path, monkeypatch, case):
    folder = _unusable_cache_dirs(tmp_path)[case]
    monkeypatch.setenv("FMLIB_CACHE_DIR", str(folder))
    monkeypatch.setattr(train_mod, "_WARNED_UNWRITABLE", set())
    with pytest.warns(RuntimeWarning, match="not usable"):
        first = train(_mlp(), _toy_loss("moons"), TrainConfig(steps=2, batch_size=8), name="nocache",
                      key={"data": "moons"}, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per folder and process
        second = train(_mlp(), _toy_loss("moons"), TrainConfig(steps=2, batch_size=8), name="nocache",
                       key={"data": "moons"}, progress=False)
    assert first.path is None and not first.from_cache and not second.from_cache


@pytest.mark.parametrize("case", [
    "path.sample NaN x1", "warmup > steps", "integer data", "empty likelihood batch", "device mismatch",
    "checkpoint under a file",
])
def test_bad_input_gets_a_clear_error(case, tmp_path):
    model = _mlp()
    if case == "path.sample NaN x1":
        with pytest.raises(ValueError, match="x1 contain"):
            PATH.sample(torch.randn(3, 2), torch.tensor([[0.0, float("nan")]] * 3), 0.5)
    elif case == "warmup > steps":
        with pytest.raises(ValueError, match="warmup_steps=20 exceeds steps=10"):
            TrainConfig(steps=10, batch_size=4, warmup_steps=20)
    elif case == "integer data":
        with pytest.raises(ValueError, match="floating-point"):
            losses.conditional_flow_matching_loss(model, PATH, torch.ones(4, 2, dtype=torch.int64))
    elif case == "empty likelihood batch":
        with pytest.raises(ValueError, match="empty batch"):
            likelihood.log_likelihood(model, torch.empty(0, 2), steps=4)
    elif case == "device mismatch":
        with pytest.raises(ValueError, match=r"x1 is on cpu but the model is on meta"):
            losses.conditional_flow_matching_loss(model.to("meta"), PATH, torch.randn(4, 2))
    elif case == "checkpoint under a file":
        (tmp_path / "f").write_text("x")
        with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
            checkpoint.save_checkpoint({"a": 1}, tmp_path / "f" / "sub" / "c.pt")


def test_a_diverging_run_returns_with_a_warning():
    with pytest.warns(RuntimeWarning, match="diverged"):
        train(_mlp(), _toy_loss("moons"), TrainConfig(steps=60, batch_size=64, lr=1e6, grad_clip=None),
              name="diverge", cache=False, progress=False)
