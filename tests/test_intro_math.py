"""The intro's translation from diffusion time, derived with sympy (the intro is a text page without a kernel).

The generative SDE in book time t = 1 - s is the time reversal of dz = f ds + g dw: its drift is
-f + g^2 d/dx log p_s, not -f. In one dimension, for any positive density p(x, s), drift f(x, s) and diffusion
g(s): the Fokker-Planck residual of the reversed process in t is minus the residual of the forward process in s,
so the marginals of one solve their equation exactly when the other's do.
"""

from __future__ import annotations

import sympy as sp

from fmlib.symbolic import assert_identity

x, s, t = sp.symbols("x s t", real=True)
p = sp.Function("p", positive=True)
f = sp.Function("f", real=True)
g = sp.Function("g", positive=True)


def fokker_planck_residual(density, drift, diffusion, time):
    """d/dtime density - (-d/dx(drift density) + 1/2 diffusion^2 d2/dx2 density)."""
    return sp.diff(density, time) - (-sp.diff(drift * density, x) + diffusion**2 / 2 * sp.diff(density, x, 2))


def test_the_reversed_sde_has_drift_minus_f_plus_g2_score():
    forward = fokker_planck_residual(p(x, s), f(x, s), g(s), s)
    p_bar = p(x, 1 - t)
    reversed_drift = -f(x, 1 - t) + g(1 - t) ** 2 * sp.diff(sp.log(p_bar), x)
    backward = fokker_planck_residual(p_bar, reversed_drift, g(1 - t), t)
    assert_identity(backward, -forward.subs(s, 1 - t), name="FP residual in t = -(FP residual in s)")


def test_negating_the_drift_alone_is_not_the_reversal():
    forward = fokker_planck_residual(p(x, s), f(x, s), g(s), s)
    p_bar = p(x, 1 - t)
    naive = fokker_planck_residual(p_bar, -f(x, 1 - t), g(1 - t), t)
    gap = sp.simplify(naive + forward.subs(s, 1 - t))
    assert gap != 0  # off by the diffusion term g^2 p'' : the noise is added again, not removed
    assert_identity(gap, -g(1 - t) ** 2 * sp.diff(p_bar, x, 2), name="naive reversal misses g^2 p''")


def test_ode_velocities_change_sign():
    forward = fokker_planck_residual(p(x, s), f(x, s), 0, s)
    backward = fokker_planck_residual(p(x, 1 - t), -f(x, 1 - t), 0, t)
    assert_identity(backward, -forward.subs(s, 1 - t), name="ODE: u_t = -v_s")
