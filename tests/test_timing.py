"""fmlib.timing: mean wall-clock of calls and the cost of optimizer steps, with counted network calls."""

import time

import pytest
import torch

from fmlib import models, solvers, timing


def test_time_call_averages_over_the_repeats_and_warms_up_once():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    seconds = timing.time_call(fn, 3)
    assert len(calls) == 4                      # one warm-up, three timed
    assert 0.009 < seconds < 0.2
    calls.clear()
    timing.time_call(fn, 2, warm_up=False)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="repeats"):
        timing.time_call(fn, 0)


def test_seconds_per_step_counts_the_forward_calls_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = models.MLP(dim=2, hidden=16, depth=2)
    before = [p.detach().clone() for p in model.parameters()]

    def one_call(m, batch, gen):
        x = torch.randn(batch, 2, generator=gen)
        return m(x, torch.rand(batch, generator=gen)).pow(2).mean()

    def euler_solve(m, batch, gen):               # four network calls per forward pass
        x = torch.randn(batch, 2, generator=gen)
        return solvers.solve_ode(m, x, steps=4, method="euler").x.pow(2).mean()

    cost = timing.seconds_per_step(model, one_call, 3, batch_size=8, lr=1e-2)
    assert cost.nfe == 1 and cost.seconds > 0
    assert timing.seconds_per_step(model, euler_solve, 2, batch_size=8, lr=1e-2).nfe == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="n_steps"):
        timing.seconds_per_step(model, one_call, 0, batch_size=8, lr=1e-2)
    with pytest.raises(ValueError, match="lr"):
        timing.seconds_per_step(model, one_call, 1, batch_size=8, lr=0.0)
