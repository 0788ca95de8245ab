"""fmlib.symbolic: the helpers that make a book's sympy cell fail loudly."""

import numpy as np
import pytest
import sympy as sp

from fmlib.symbolic import assert_identity, assert_matches, simplify_zero

t, x, x0, x1 = sp.symbols("t x x_0 x_1", real=True)


def test_true_identity_passes_and_prints(capsys):
    psi = t * x1 + (1 - t) * x0
    u = (x1 - x) / (1 - t)
    assert_identity(sp.diff(psi, t), sp.simplify(u.subs(x, psi)), name="flow derivative")
    assert "✓ flow derivative" in capsys.readouterr().out


def test_wrong_identity_raises_with_name_and_residual():
    with pytest.raises(AssertionError, match="wrong sign.*residual|wrong sign.*lhs - rhs"):
        assert_identity(sp.diff(t**2, t), -2 * t, name="wrong sign")


def test_matrix_identity_elementwise():
    a = sp.Matrix([[t, 0], [0, 1 - t]])
    assert_identity(a.det(), t * (1 - t), name="det")
    with pytest.raises(AssertionError):
        assert_identity(a, sp.eye(2), name="not identity")


def test_simplify_zero_handles_trig_and_logs():
    assert simplify_zero(sp.sin(t) ** 2 + sp.cos(t) ** 2 - 1)
    assert simplify_zero(sp.log(sp.exp(t)) - t)
    assert not simplify_zero(t - 1)


def test_assert_matches_compares_lambdified_expression():
    expr = x1 - x0
    samples = {x0: np.linspace(-1, 1, 5), x1: np.linspace(0, 2, 5)}
    err = assert_matches(expr, [x0, x1], lambda x_0, x_1: x_1 - x_0, samples, name="difference")
    assert err == 0.0
    with pytest.raises(AssertionError, match="disagrees"):
        assert_matches(expr, [x0, x1], lambda x_0, x_1: x_1 + x_0, samples, name="difference")
