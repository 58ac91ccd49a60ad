"""ODE methods as data (tableaus) and their one-step functions.

Two families, both with an embedded error estimate and a dense output:

* **Rosenbrock (linearly implicit, for stiff systems)**: ``Rodas5P`` (default; Steinebach 2023,
  BIT Numer Math 63:27) and ``Rodas5`` (Di Marzo 1993, *Rodas5(4) - Méthodes de Rosenbrock d'ordre
  5(4) adaptées aux problèmes différentiels-algébriques*, University of Geneva). Stiffly accurate,
  L-stable, order 5 with an order-4 embedded solution. Stage equations, in the transformed form of
  Hairer & Wanner (1996, *Solving ODEs II*, section IV.7, eq. 7.25):

  $$\\Big(\\tfrac{1}{h\\gamma} I - J\\Big) k_i = f\\big(t + c_i h,\\; y + \\textstyle\\sum_{j<i} a_{ij} k_j\\big)
     + \\textstyle\\sum_{j<i} \\tfrac{C_{ij}}{h} k_j + h d_i \\,\\partial_t f,$$

  with $y_1 = y + \\sum_{j\\le 6} a_{6j}k_j + k_7 + k_8$ (stiffly accurate), error estimate $k_8$,
  and a dense output of order 4. One LU factorisation per step and no Newton iteration: the cost of a
  step is fixed, which is what makes a batch of patients vectorise well.
* **Explicit Runge-Kutta (non-stiff)**: ``Dopri5`` (Dormand & Prince 1980, J Comput Appl Math 6:19),
  order 5(4), FSAL, cubic Hermite dense output.

Coefficients are the published ones (tables of the papers above, as reproduced in Hairer & Wanner and
in OrdinaryDiffEq.jl); ``tests/engines/test_solvers.py`` checks the convergence orders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ODE",
    "AbstractMethod",
    "Dopri5",
    "ExplicitTableau",
    "Rodas5",
    "Rodas5P",
    "RosenbrockTableau",
    "dense_jacobian",
]

Rhs = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class ODE:
    """What a method needs of a model.

    Attributes:
        rhs: ``rhs(t, y, c) -> dy/dt``.
        jac: optional ``jac(t, y, c) -> (values, df/dt)`` giving the structurally non-zero entries of
            df/dy at ``pattern`` (row, column) positions.
        pattern: the sparsity pattern of df/dy (required with ``jac``).
    """

    rhs: Rhs
    jac: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None
    pattern: tuple[tuple[int, int], ...] | None = None


def jacobian(ode: ODE, t: Any, y: Any, c: Any) -> tuple[dict[tuple[int, int], Any], Any]:
    """Non-zero entries of df/dy as {(i, j): value}, and df/dt.

    The model's symbolic Jacobian when it has one, else forward-mode autodiff (dense pattern).
    """
    if ode.jac is not None and ode.pattern is not None:
        vals, dfdt = ode.jac(t, y, c)
        # a non-finite entry (e.g. d/dx of x^h at x = 0 for h < 1) is dropped: the step becomes a
        # W-method step with an approximate Jacobian, still accepted only by its error estimate
        vals = jnp.where(jnp.isfinite(vals), vals, 0.0)
        dfdt = jnp.where(jnp.isfinite(dfdt), dfdt, 0.0)
        return {ij: vals[k] for k, ij in enumerate(ode.pattern)}, dfdt
    n = y.shape[0]
    jac = jax.jacfwd(ode.rhs, argnums=1)(t, y, c)
    _, dfdt = jax.jvp(lambda tt: ode.rhs(tt, y, c), (t,), (jnp.ones_like(t),))
    return {(i, j): jac[i, j] for i in range(n) for j in range(n)}, dfdt


def dense_jacobian(rhs: Rhs, n: int) -> tuple[Callable[[Any, Any, Any], tuple[Any, Any]], Any]:
    """``(jac, pattern)`` for :class:`ODE` by forward-mode autodiff of ``rhs`` with ``n`` states: the
    dense pattern, for a model whose derivatives sympy cannot write (as :func:`jacobian` does)."""

    def jac(t: Any, y: Any, c: Any) -> tuple[Any, Any]:
        dfdy = jax.jacfwd(rhs, argnums=1)(t, y, c)
        _, dfdt = jax.jvp(lambda tt: rhs(tt, y, c), (t,), (jnp.ones_like(t),))
        return dfdy.reshape(-1), dfdt

    return jac, tuple((i, j) for i in range(n) for j in range(n))


@lru_cache(maxsize=256)
def elimination_order(pattern: tuple[tuple[int, int], ...], n: int) -> tuple[int, ...]:
    """A pivot order for :func:`sparse_lu` that keeps the factors sparse: Markowitz's rule on the
    symbolic pattern (Markowitz 1957, Management Science 3:255; Duff, Erisman & Reid 2017, *Direct
    Methods for Sparse Matrices*, 2nd ed., section 7.2), pivots on the diagonal only.

    At each elimination the remaining state ``k`` with the smallest ``r_k c_k`` is taken, ``r_k``
    (``c_k``) being the other remaining entries in its row (column) of the pattern as filled so far;
    ties go to the smaller index, so a dense pattern keeps the natural order. The order depends only
    on the pattern. Eliminating in it is the LU of ``P W P^T`` (a symmetric permutation keeps the
    diagonal dominance that makes pivoting unnecessary, see :func:`sparse_lu`). On ``viral_immune``
    (14 states, 40 entries) the factors hold 48 entries instead of 75 in the natural order.
    """
    rows: dict[int, set[int]] = {i: set() for i in range(n)}
    cols: dict[int, set[int]] = {j: set() for j in range(n)}
    for i, j in pattern:
        if i != j:
            rows[i].add(j)
            cols[j].add(i)
    remaining, order = set(range(n)), []
    while remaining:
        k = min(remaining, key=lambda s: (len(rows[s]) * len(cols[s]), s))
        order.append(k)
        remaining.discard(k)
        below, right = cols.pop(k), rows.pop(k)
        for i in below:
            rows[i].discard(k)
        for j in right:
            cols[j].discard(k)
        for i in below:  # the fill-in of eliminating k
            for j in right:
                if i != j and j not in rows[i]:
                    rows[i].add(j)
                    cols[j].add(i)
    return tuple(order)


def sparse_lu(
    entries: dict[tuple[int, int], Any], n: int, order: Sequence[int] | None = None
) -> dict[tuple[int, int], Any]:
    """Doolittle LU without pivoting over the non-zero entries only (symbolic fill-in at trace time),
    eliminating the states in ``order`` (default: natural; :func:`elimination_order` keeps the
    factors sparse).

    Every operation is on per-patient scalars, so under ``vmap`` the whole factorisation fuses into
    a few element-wise loops over the batch and costs only the flops the sparsity pattern needs.
    No pivoting is safe for the Rosenbrock matrix $W = I/(h\\gamma) - J$: a breakdown (tiny or
    non-finite pivot) gives a non-finite error estimate, the step is rejected, and a smaller ``h``
    makes ``W`` diagonally dominant, where elimination without pivoting is stable (Golub & Van Loan
    2013, Thm 3.4.3).
    """
    order = tuple(range(n)) if order is None else tuple(order)
    pos = {k: p for p, k in enumerate(order)}
    a = dict(entries)
    for p, k in enumerate(order):
        pivot = a[(k, k)]
        row_k = [(j, v) for (i, j), v in a.items() if i == k and pos[j] > p]
        for i in order[p + 1 :]:
            if (i, k) not in a:
                continue
            f = a[(i, k)] / pivot
            a[(i, k)] = f
            for j, v in row_k:
                a[(i, j)] = a[(i, j)] - f * v if (i, j) in a else -f * v
    return a


def sparse_lu_solve(
    lu: dict[tuple[int, int], Any], b: Any, n: int, order: Sequence[int] | None = None
) -> Any:
    """Solve with the factors of :func:`sparse_lu` in the same ``order`` (forward then backward
    substitution)."""
    order = tuple(range(n)) if order is None else tuple(order)
    pos = {k: p for p, k in enumerate(order)}
    x = [b[i] for i in range(n)]
    rows: dict[int, list[tuple[int, Any]]] = {i: [] for i in range(n)}
    for (i, j), v in lu.items():
        rows[i].append((j, v))
    for i in order:
        for j, v in rows[i]:
            if pos[j] < pos[i]:
                x[i] = x[i] - v * x[j]
    for i in reversed(order):
        for j, v in rows[i]:
            if pos[j] > pos[i]:
                x[i] = x[i] - v * x[j]
        x[i] = x[i] / lu[(i, i)]
    return jnp.stack(x) if n else b


def _combine(weights: Any, ks: Any) -> Any:
    """``weights @ ks`` over the stage axis; ``ks`` (stages, n, *batch) may carry trailing batch axes."""
    return jnp.tensordot(weights, ks, axes=1)


@dataclass(frozen=True)
class RosenbrockTableau:
    """Coefficients of an 8-stage Rodas-type method in the transformed (a, C, d, H) form."""

    gamma: float
    a: tuple[tuple[float, ...], ...]  # rows 2..6 (stage inputs), lower triangular
    C: tuple[tuple[float, ...], ...]  # rows 2..8
    c: tuple[float, ...]  # c2..c5 (c6 = c7 = c8 = 1)
    d: tuple[float, ...]  # d1..d5 (time-derivative weights)
    H: tuple[tuple[float, ...], ...]  # dense-output rows (3 x 8)


@dataclass(frozen=True)
class ExplicitTableau:
    """Butcher tableau of an explicit FSAL pair."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]  # b - b_embedded
    c: tuple[float, ...]


class AbstractMethod:
    """A one-step method: ``step(ode, t, y, c, h) -> (y1, err, dense)`` and ``interpolate``."""

    name: str
    order: int
    stiff: bool

    def step(self, ode: ODE, t: Any, y: Any, c: Any, h: Any) -> tuple[Any, Any, Any]:
        raise NotImplementedError

    def interpolate(self, y0: Any, y1: Any, dense: Any, theta: Any, h: Any) -> Any:
        raise NotImplementedError

    def dense_shape(self, ode: ODE, t: Any, y: Any, c: Any) -> jax.ShapeDtypeStruct:
        """Shape and dtype of :meth:`step`'s dense output for states like ``y`` (here by tracing one
        step; the methods below know it without tracing, which saves compile time)."""
        return jax.eval_shape(lambda: self.step(ode, t, y, c, jnp.ones_like(t))[2])


def _rosenbrock_arrays(tab: RosenbrockTableau) -> tuple[np.ndarray, ...]:
    """Uniform stage form: u_i = y + A[i] @ K (rows 7, 8 and the solution row 9 included)."""
    A = np.zeros((9, 8))
    for i, row in enumerate(tab.a, start=1):
        A[i, : len(row)] = row
    A[6] = A[5]
    A[6, 5] = 1.0
    A[7] = A[6]
    A[7, 6] = 1.0
    A[8] = A[7]
    A[8, 7] = 1.0
    C = np.zeros((8, 8))
    for i, row in enumerate(tab.C, start=1):
        C[i, : len(row)] = row
    cs = np.array([0.0, *tab.c, 1.0, 1.0, 1.0])
    ds = np.array([*tab.d, 0.0, 0.0, 0.0])
    return A, C, cs, ds, np.array(tab.H)


@dataclass(frozen=True)
class _Rosenbrock(AbstractMethod):
    name: str = "rosenbrock"
    tableau: RosenbrockTableau = field(repr=False, default=None)  # type: ignore[assignment]
    order: int = 5
    stiff: bool = True

    def step(self, ode: ODE, t: Any, y: Any, c: Any, h: Any) -> tuple[Any, Any, Any]:
        # The 8 stages run in a fori_loop over the tableau rows, so the model's right-hand side is
        # traced once, not 8 times: compile time matters as much as run time here (see BENCHMARKS.md).
        A, C, cs, ds, H = _rosenbrock_arrays(self.tableau)
        n = y.shape[0]
        rhs = ode.rhs
        jac, dfdt = jacobian(ode, t, y, c)
        inv_hg = 1.0 / (h * self.tableau.gamma)
        w = {ij: -v for ij, v in jac.items()}
        for i in range(n):
            w[(i, i)] = w[(i, i)] + inv_hg if (i, i) in w else inv_hg + 0.0 * h
        order = elimination_order(tuple(w), n)
        lu = sparse_lu(w, n, order)

        def solve(_: Any, b: Any) -> Any:
            return sparse_lu_solve(lu, b, n, order)

        def stage(i: Any, ks: Any) -> Any:
            u = y + _combine(jnp.asarray(A)[i], ks)
            f = rhs(t + jnp.asarray(cs)[i] * h, u, c)
            b = f + jnp.asarray(ds)[i] * h * dfdt + _combine(jnp.asarray(C)[i], ks) / h
            return ks.at[i].set(solve(lu, b))

        ks = jax.lax.fori_loop(0, 8, stage, jnp.zeros((8, *y.shape), y.dtype))
        y1 = y + _combine(jnp.asarray(A)[8], ks)
        return y1, ks[7], _combine(jnp.asarray(H), ks)

    def dense_shape(self, ode: ODE, t: Any, y: Any, c: Any) -> jax.ShapeDtypeStruct:
        """``H @ K``: one row per row of H, each shaped like ``y``."""
        dtype = jnp.result_type(y.dtype, jnp.asarray(self.tableau.H).dtype)
        return jax.ShapeDtypeStruct((len(self.tableau.H), *y.shape), dtype)

    def interpolate(self, y0: Any, y1: Any, dense: Any, theta: Any, h: Any) -> Any:
        th1 = 1.0 - theta
        return th1 * y0 + theta * (y1 + th1 * (dense[0] + theta * (dense[1] + theta * dense[2])))


_RODAS5P = RosenbrockTableau(
    gamma=0.21193756319429014,
    a=(
        (3.0,),
        (2.849394379747939, 0.45842242204463923),
        (-6.954028509809101, 2.489845061869568, -10.358996098473584),
        (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
        (
            -7.502846399306121,
            2.561846144803919,
            -11.627539656261098,
            -0.18268767659942256,
            0.030198172008377946,
        ),
    ),
    C=(
        (-14.155112264123755,),
        (-17.97296035885952, -2.859693295451294),
        (147.12150275711716, -1.41221402718213, 71.68940251302358),
        (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
        (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471),
        (
            30.91273214028599,
            -3.1208243349937974,
            77.79954646070892,
            34.28646028294783,
            -19.097331116725623,
            -28.087943162872662,
        ),
        (
            37.80277123390563,
            -3.2571969029072276,
            112.26918849496327,
            66.9347231244047,
            -40.06618937091002,
            -54.66780262877968,
            -9.48861652309627,
        ),
    ),
    c=(0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664),
    d=(0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734, 2.325825639765069),
    H=(
        (
            25.948786856663858,
            -2.5579724845846235,
            10.433815404888879,
            -2.3679251022685204,
            0.524948541321073,
            1.1241088310450404,
            0.4272876194431874,
            -0.17202221070155493,
        ),
        (
            -9.91568850695171,
            -0.9689944594115154,
            3.0438037242978453,
            -24.495224566215796,
            20.176138334709044,
            15.98066361424651,
            -6.789040303419874,
            -6.710236069923372,
        ),
        (
            11.419903575922262,
            2.8879645146136994,
            72.92137995996029,
            80.12511834622643,
            -52.072871366152654,
            -59.78993625266729,
            -0.15582684282751913,
            4.883087185713722,
        ),
    ),
)

_RODAS5 = RosenbrockTableau(
    gamma=0.19,
    a=(
        (2.0,),
        (3.040894194418781, 1.041747909077569),
        (2.576417536461461, 1.622083060776640, -0.9089668560264532),
        (2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443),
        (-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062),
    ),
    C=(
        (-10.31323885133993,),
        (-21.04823117650003, -7.234992135176716),
        (32.22751541853323, -4.943732386540191, 19.44922031041879),
        (-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146),
        (-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147),
        (
            34.20013733472935,
            -14.15535402717690,
            57.82335640988400,
            25.83362985412365,
            1.408950972071624,
            -6.551835421242162,
        ),
        (
            42.57076742291101,
            -13.80770672017997,
            93.98938432427124,
            18.77919633714503,
            -31.58359187223370,
            -6.685968952921985,
            -5.810979938412932,
        ),
    ),
    c=(0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580),
    d=(0.19, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343, -0.377417564392089818),
    H=(
        (
            27.354592673333357,
            -6.925207756232857,
            26.40037733258859,
            0.5635230501052979,
            -4.699151156849391,
            -1.6008677469422725,
            -1.5306074446748028,
            -1.3929872940716344,
        ),
        (
            44.19024239501722,
            1.3677947663381929e-13,
            202.93261852171622,
            -35.5669339789154,
            -181.91095152160645,
            3.4116351403665033,
            2.5793540257308067,
            2.2435122582734066,
        ),
        (
            -44.0988150021747,
            -5.755396159656812e-13,
            -181.26175034586677,
            56.99302194811676,
            183.21182741427398,
            -7.480257918273637,
            -5.792426076169686,
            -5.32503859794143,
        ),
    ),
)


def Rodas5P() -> AbstractMethod:
    """Rodas5P (Steinebach 2023): the default stiff method."""
    return _Rosenbrock(name="Rodas5P", tableau=_RODAS5P)


def Rodas5() -> AbstractMethod:
    """Rodas5 (Di Marzo 1993; Hairer & Wanner 1996)."""
    return _Rosenbrock(name="Rodas5", tableau=_RODAS5)


@dataclass(frozen=True)
class _Explicit(AbstractMethod):
    name: str = "explicit"
    tableau: ExplicitTableau = field(repr=False, default=None)  # type: ignore[assignment]
    order: int = 5
    stiff: bool = False

    def step(self, ode: ODE, t: Any, y: Any, c: Any, h: Any) -> tuple[Any, Any, Any]:
        rhs = ode.rhs
        tab = self.tableau
        s_ = len(tab.c)
        A = np.zeros((s_, s_))
        for i, row in enumerate(tab.a, start=1):
            A[i, : len(row)] = row

        def stage(i: Any, ks: Any) -> Any:
            u = y + h * _combine(jnp.asarray(A)[i], ks)
            return ks.at[i].set(rhs(t + jnp.asarray(tab.c)[i] * h, u, c))

        ks = jax.lax.fori_loop(0, s_, stage, jnp.zeros((s_, *y.shape), y.dtype))
        y1 = y + h * _combine(jnp.asarray(tab.b), ks)
        err = h * _combine(jnp.asarray(tab.b_err), ks)
        return y1, err, jnp.stack([ks[0], ks[-1]])

    def dense_shape(self, ode: ODE, t: Any, y: Any, c: Any) -> jax.ShapeDtypeStruct:
        """The first and last stage derivatives, each shaped like ``y``."""
        return jax.ShapeDtypeStruct((2, *y.shape), y.dtype)

    def interpolate(self, y0: Any, y1: Any, dense: Any, theta: Any, h: Any) -> Any:
        # cubic Hermite through (y0, f0), (y1, f1)
        f0, f1 = dense[0], dense[1]
        th2, th3 = theta * theta, theta * theta * theta
        h00 = 2 * th3 - 3 * th2 + 1
        h10 = th3 - 2 * th2 + theta
        h01 = -2 * th3 + 3 * th2
        h11 = th3 - th2
        return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1


_B_DOPRI = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_DOPRI_4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DOPRI5 = ExplicitTableau(
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=_B_DOPRI,
    b_err=tuple(float(x) for x in np.subtract(_B_DOPRI, _B_DOPRI_4)),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
)


def Dopri5() -> AbstractMethod:
    """Dormand-Prince 5(4) (Dormand & Prince 1980): the non-stiff method."""
    return _Explicit(name="Dopri5", tableau=_DOPRI5)
