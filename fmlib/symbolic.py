"""sympy helpers for the book's derivation cells.

A chapter derives an object from its definition and lets sympy show the claim, e.g.::

    t, x, x0, x1 = sp.symbols("t x x_0 x_1", real=True)
    psi = t * x1 + (1 - t) * x0                       # the conditional flow
    u = (x1 - x) / (1 - t)                            # the claimed conditional velocity
    assert_identity(sp.diff(psi, t), u.subs(x, psi), name="dψ/dt = u(ψ)")

:func:`assert_identity` raises ``AssertionError`` (which fails the book build) with the residual when sympy
cannot reduce ``lhs − rhs`` to zero, and prints a one-line check mark otherwise. :func:`assert_matches`
lambdifies a sympy expression and compares it numerically with fmlib's implementation of the same formula.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import sympy as sp

__all__ = ["simplify_zero", "assert_identity", "assert_matches"]


def simplify_zero(expr: sp.Expr) -> bool:
    """True when sympy can show ``expr == 0`` (trying ``simplify``, then ``expand`` / ``together`` / ``powsimp``
    variants, and ``equals(0)`` as a last resort)."""
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    for transform in (sp.simplify, lambda e: sp.simplify(sp.expand(e)), lambda e: sp.simplify(sp.together(e)),
                      lambda e: sp.simplify(sp.powsimp(sp.expand_log(sp.expand(e), force=True), force=True))):
        if transform(expr) == 0:
            return True
    verdict = expr.equals(0)
    return bool(verdict)


def assert_identity(lhs: sp.Expr | sp.MatrixBase, rhs: sp.Expr | sp.MatrixBase, *, name: str,
                    quiet: bool = False) -> None:
    """Assert ``lhs == rhs`` symbolically (elementwise for matrices).

    Raises:
        AssertionError: naming the identity and showing the simplified residual ``lhs − rhs``.
    """
    lhs_m = sp.Matrix(lhs) if isinstance(lhs, (sp.MatrixBase, list, tuple)) else sp.Matrix([lhs])
    rhs_m = sp.Matrix(rhs) if isinstance(rhs, (sp.MatrixBase, list, tuple)) else sp.Matrix([rhs])
    if lhs_m.shape != rhs_m.shape:
        raise AssertionError(f"{name}: shapes differ, {lhs_m.shape} vs {rhs_m.shape}")
    for a, b in zip(lhs_m, rhs_m):
        diff = sp.sympify(a) - sp.sympify(b)
        if not simplify_zero(diff):
            raise AssertionError(f"identity '{name}' does not hold: lhs - rhs = {sp.simplify(diff)}")
    if not quiet:
        print(f"✓ {name}")


def assert_matches(expr: sp.Expr, symbols: Sequence[sp.Symbol], implementation: Callable[..., np.ndarray],
                   samples: Mapping[sp.Symbol, np.ndarray], *, name: str, rtol: float = 1e-6,
                   atol: float = 1e-8) -> float:
    """Lambdify ``expr`` in ``symbols``, evaluate it and ``implementation`` on the same ``samples`` (arrays of
    one shape, keyed by symbol) and assert they agree; return the largest absolute difference.

    ``implementation`` is called with the sample arrays as keyword arguments named after the symbols
    (``str(symbol)``), so a thin adapter around an fmlib function is enough.

    Raises:
        AssertionError: naming the formula and the largest deviation.
    """
    missing = [s for s in symbols if s not in samples]
    if missing:
        raise ValueError(f"no samples for symbols {missing}")
    f = sp.lambdify(list(symbols), expr, modules="numpy")
    args = [np.asarray(samples[s], dtype=np.float64) for s in symbols]
    expected = np.broadcast_to(np.asarray(f(*args), dtype=np.float64), np.broadcast(*args).shape)
    got = np.asarray(implementation(**{str(s): a for s, a in zip(symbols, args)}), dtype=np.float64)
    if got.shape != expected.shape:
        raise AssertionError(f"{name}: implementation returned shape {got.shape}, sympy gives {expected.shape}")
    err = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not np.allclose(got, expected, rtol=rtol, atol=atol):
        raise AssertionError(f"fmlib disagrees with sympy on '{name}': max |difference| = {err:.3e}")
    print(f"✓ {name}: fmlib matches sympy (max |difference| {err:.1e})")
    return err
