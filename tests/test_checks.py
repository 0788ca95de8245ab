"""fmlib._checks: the validation helpers every public function relies on."""

import pytest
import torch

from fmlib import _checks


def test_as_time_python_number_keeps_float64_precision():
    like = torch.zeros(3, 2, dtype=torch.float64)
    t = _checks.as_time(0.1, 3, like=like)
    assert t.dtype == torch.float64 and t.shape == (3,)
    assert (t == 0.1).all()  # exactly the double 0.1, not float32(0.1)


@pytest.mark.parametrize("t", [0.5, torch.tensor(0.5), torch.tensor([0.5]), torch.full((4,), 0.5)])
def test_as_time_accepted_forms(t):
    out = _checks.as_time(t, 4, like=torch.zeros(4, 2))
    assert out.shape == (4,) and out.dtype == torch.float32 and torch.allclose(out, torch.full((4,), 0.5))


@pytest.mark.parametrize("t, match", [(1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]"), (float("nan"), "NaN"),
                                      (torch.zeros(3), "shape")])
def test_as_time_rejects(t, match):
    with pytest.raises(ValueError, match=match):
        _checks.as_time(t, 4, like=torch.zeros(4, 2))


def test_expand_like_broadcasts_and_checks():
    x = torch.zeros(5, 3, 8, 8)
    assert _checks.expand_like(torch.ones(5), x).shape == (5, 1, 1, 1)
    with pytest.raises(ValueError):
        _checks.expand_like(torch.ones(4), x)
