"""Tests of fmlib.checkpoint: round trip, atomic replacement, safe loading of bad files, weights_only."""

from __future__ import annotations

import pytest
import torch

from fmlib import checkpoint
from fmlib.checkpoint import load_checkpoint, save_checkpoint


class NotATensor:
    """A pickled object that ``weights_only`` loading must refuse."""

    def __init__(self) -> None:
        self.payload = 42


def _example() -> dict:
    return {"weights": {"a": torch.randn(3, 4), "b": torch.arange(5)}, "losses": [1.0, 0.5], "step": 7,
            "name": "run", "none": None, "pair": (1, 2.5), "dtype": torch.float32}


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "ckpt.pt")


def test_round_trip(tmp_path):
    obj = _example()
    path = save_checkpoint(obj, tmp_path / "sub" / "ckpt.pt")
    assert path == tmp_path / "sub" / "ckpt.pt" and path.is_file()
    back = load_checkpoint(path)
    assert torch.equal(back["weights"]["a"], obj["weights"]["a"]) and torch.equal(back["weights"]["b"], obj["weights"]["b"])
    assert back["losses"] == [1.0, 0.5] and back["step"] == 7 and back["name"] == "run" and back["none"] is None
    assert tuple(back["pair"]) == (1, 2.5) and back["dtype"] == torch.float32


def test_state_dict_round_trip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    save_checkpoint({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["model"])
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_save_leaves_no_temporary_files(tmp_path):
    for i in range(3):
        save_checkpoint({"i": i}, tmp_path / "ckpt.pt")
    assert _leftovers(tmp_path) == []
    assert load_checkpoint(tmp_path / "ckpt.pt")["i"] == 2


def test_failure_during_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint({"version": 1, "w": torch.ones(3)}, tmp_path / "ckpt.pt")

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"version": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["version"] == 1
    assert _leftovers(tmp_path) == []


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match="NotATensor"):
        save_checkpoint({"bad": [NotATensor()]}, tmp_path / "ckpt.pt")
    with pytest.raises(TypeError):
        save_checkpoint([torch.ones(1)], tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_gives_none_and_a_warning(tmp_path):
    path = save_checkpoint({"w": torch.randn(100, 100)}, tmp_path / "ckpt.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="could not read"):
        assert load_checkpoint(path) is None


def test_garbage_file_gives_none_and_a_warning(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"this is not a checkpoint at all\x00\x01\x02")
    with pytest.warns(RuntimeWarning):
        assert load_checkpoint(path) is None


def test_missing_file_gives_none_and_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="no checkpoint"):
        assert load_checkpoint(tmp_path / "absent.pt") is None


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"obj": NotATensor(), "w": torch.ones(2)}, path)     # written by plain torch.save, bypassing the check
    with pytest.warns(RuntimeWarning, match="could not read"):
        assert load_checkpoint(path) is None


def test_non_dict_checkpoint_gives_none(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save([torch.ones(2)], path)
    with pytest.warns(RuntimeWarning, match="not a checkpoint dict"):
        assert load_checkpoint(path) is None
