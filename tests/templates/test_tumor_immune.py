r"""Published checks of the ``tumor_immune`` template (Kuznetsov et al. 1994 effector/tumour model).

Source:
    Kuznetsov VA, Makalkin IA, Taylor MA, Perelson AS. Nonlinear dynamics of immunogenic tumors:
    parameter estimation and global bifurcation analysis. Bull Math Biol 1994;56(2):295-321.
    doi:10.1007/BF02460644 -- the dimensionless model

    .. math::
        \dot x = \sigma + \rho x y/(\eta + y) - \mu x y - \delta x, \qquad
        \dot y = \alpha y (1 - \beta y) - x y

    in time tau = n T0 t, the BCL1-lymphoma estimates, and the result that at these estimates the
    system is bistable: a stable "dormant" equilibrium and a stable large-tumour equilibrium separated by
    a saddle, with the tumour-free state unstable.

The equilibria are found here from the published equations and the template's parameter values, by two
independent routes (root finding of the right-hand side; roots of the steady-state cubic), and the
engine's trajectories are then required to reach them.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import fsolve

from immunetwin import simulate, simulate_cohort
from immunetwin.templates import load_template

NAMES = ("sigma", "rho", "eta", "mu", "delta", "alpha", "beta")


@pytest.fixture(scope="module")
def tpl():
    return load_template("tumor_immune")


@pytest.fixture(scope="module")
def par(tpl):
    return {k: tpl.metadata.parameters[k].value for k in NAMES}


def rhs(z, p):
    """Kuznetsov 1994 dimensionless right-hand side (d/dtau)."""
    x, y = z
    dx = p["sigma"] + p["rho"] * x * y / (p["eta"] + y) - p["mu"] * x * y - p["delta"] * x
    dy = p["alpha"] * y * (1.0 - p["beta"] * y) - x * y
    return np.array([dx, dy])


def jacobian(z, p):
    x, y = z
    return np.array(
        [
            [p["rho"] * y / (p["eta"] + y) - p["mu"] * y - p["delta"],
             p["rho"] * x * p["eta"] / (p["eta"] + y) ** 2 - p["mu"] * x],
            [-y, p["alpha"] * (1.0 - 2.0 * p["beta"] * y) - x],
        ]
    )  # fmt: skip


def interior_equilibria_by_root_finding(p):
    """Distinct roots with y > 0 of the right-hand side, from a grid of starting points."""
    found = []
    for y_start in np.geomspace(0.5, 1.0 / p["beta"], 60):
        x_start = p["alpha"] * (1.0 - p["beta"] * y_start)  # on the y-nullcline
        z, _, ok, _ = fsolve(rhs, [x_start, y_start], args=(p,), full_output=True, xtol=1e-13)
        is_root = ok == 1 and z[1] > 1e-6 and np.max(np.abs(rhs(z, p))) < 1e-10
        if is_root and not any(np.allclose(z, f, rtol=1e-7) for f in found):
            found.append(z)
    return sorted(found, key=lambda z: z[1])


def interior_equilibria_by_cubic(p):
    """Positive roots of the steady-state cubic: x = alpha(1 - beta y) substituted in dx/dtau = 0,
    multiplied by (eta + y)."""
    a, b, s, r, e, m, d = (p[k] for k in ("alpha", "beta", "sigma", "rho", "eta", "mu", "delta"))
    # alpha(1 - b y)[(d + m y)(e + y) - r y] - s(e + y) = 0, expanded in powers of y.
    q = np.polynomial.Polynomial([d * e, d + m * e - r, m])  # (d + m y)(e + y) - r y
    cubic = np.polynomial.Polynomial([a, -a * b]) * q - np.polynomial.Polynomial([s * e, s])
    ys = sorted(y.real for y in cubic.roots() if abs(y.imag) < 1e-9 and y.real > 0)
    return [np.array([a * (1.0 - b * y), y]) for y in ys]


def test_three_positive_equilibria_with_published_stability(par):
    """Bistability of Kuznetsov 1994: dormant stable focus < saddle < stable large-tumour node."""
    roots = interior_equilibria_by_root_finding(par)
    cubic = interior_equilibria_by_cubic(par)
    assert len(roots) == 3 and len(cubic) == 3
    for z_root, z_cubic in zip(roots, cubic, strict=True):
        np.testing.assert_allclose(z_root, z_cubic, rtol=1e-8)
    dormant, saddle, escape = roots
    ev = [np.linalg.eigvals(jacobian(z, par)) for z in roots]
    assert np.all(ev[0].real < 0) and np.all(np.abs(ev[0].imag) > 0)  # stable focus (damped oscillation)
    assert np.sum(ev[1].real > 0) == 1 and np.sum(ev[1].real < 0) == 1  # saddle: the basin boundary
    assert np.all(ev[2].real < 0) and np.all(ev[2].imag == 0)  # stable node
    # Tumour-free state (sigma/delta, 0) is unstable: tumour growth rate alpha - sigma/delta > 0.
    assert par["alpha"] - par["sigma"] / par["delta"] > 0
    # Scale, in cells (T0 = 1e6): dormant ~1e7 cells, escape just below the carrying capacity 1/beta.
    assert 1.0 < dormant[1] < 20.0
    assert 0.8 / par["beta"] < escape[1] < 1.0 / par["beta"]
    assert dormant[1] < saddle[1] < escape[1]


def test_equilibria_are_steady_states_of_the_template(tpl, par):
    """Started at each root-found equilibrium, the engine's model stays there (it encodes the same RHS)."""
    times = np.linspace(0.0, 50.0, 51)
    for z in [np.array([par["sigma"] / par["delta"], 0.0]), *interior_equilibria_by_root_finding(par)]:
        traj = simulate(tpl.model, times, initial={"x": z[0], "y": z[1]})
        assert traj.status == "success"
        np.testing.assert_allclose(np.asarray(traj["x"]), z[0], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(np.asarray(traj["y"]), z[1], rtol=1e-5, atol=1e-9)


def test_two_inocula_reach_two_different_stable_states(tpl, par):
    """Bistability in time: from the tumour-free effector level, 1e7 tumour cells settle into dormancy
    and 3e8 cells escape to the large tumour; both within 1% of the root-found equilibria.

    Horizon 4000 days: the dormant focus decays at Re(lambda) ~ -0.05 per unit tau = -0.0055/day, so the
    oscillation shrinks by ~e^-22 over the horizon; 1% is far above what remains.
    """
    dormant, _, escape = interior_equilibria_by_root_finding(par)
    times = np.linspace(0.0, 4000.0, 4001)
    coh = simulate_cohort(tpl.model, times, parameters={"y0": np.array([10.0, 300.0])})
    assert np.all(np.asarray(coh.status) == "success")
    x, y = np.asarray(coh["x"]), np.asarray(coh["y"])
    assert x[0, 0] == pytest.approx(par["sigma"] / par["delta"], rel=1e-9)
    np.testing.assert_allclose([x[0, -1], y[0, -1]], dormant, rtol=1e-2)
    np.testing.assert_allclose([x[1, -1], y[1, -1]], escape, rtol=1e-2)
    # Readable in cells and days: T_cells = y*T0 and the published time scale t0 = 1/(n*T0) ~ 9.08 days.
    np.testing.assert_allclose(np.asarray(coh["T_cells"])[:, -1], 1e6 * y[:, -1], rtol=1e-12)
    assert float(np.asarray(coh["t0"])[0, 0]) == pytest.approx(1.0 / (1.101e-7 * 1e6), rel=1e-9)


def test_time_scale_is_the_published_one(tpl, par):
    """The model runs in days: the initial tumour growth rate is alpha*n*T0 - x0*n*T0 per day
    (a = 0.18/day minus the kill by the resting effector level), compared with a finite difference."""
    times = np.linspace(0.0, 0.01, 11)
    y0 = 1e-3  # tiny tumour: logistic and recruitment terms negligible
    traj = simulate(tpl.model, times, parameters={"y0": y0})
    y = np.asarray(traj["y"])
    growth_per_day = np.log(y[-1] / y[0]) / times[-1]
    n_t0 = tpl.metadata.parameters["n"].value * tpl.metadata.parameters["T0"].value
    expected = n_t0 * (par["alpha"] - par["sigma"] / par["delta"])
    assert growth_per_day == pytest.approx(expected, rel=1e-3)


def test_adoptive_transfer_moves_escape_into_dormancy(tpl, par):
    """Model consequence of the bistability (not a published number): 1e6 effector cells given on the day
    of a 3e8-cell inoculum move the state into the dormancy basin."""
    dormant, _, _ = interior_equilibria_by_root_finding(par)
    times = np.linspace(0.0, 4000.0, 4001)
    sched = tpl.intervention("adoptive_transfer", start=0.0, dose=1.0)
    traj = simulate(tpl.model, times, parameters={"y0": 300.0}, schedule=sched)
    assert traj.status == "success"
    assert np.asarray(traj["x"])[0] == pytest.approx(par["sigma"] / par["delta"] + 1.0, rel=1e-9)
    np.testing.assert_allclose(np.asarray(traj["y"])[-1], dormant[1], rtol=1e-2)
