"""Population (hierarchical, NLME-style) models: log-normal random effects across patients.

For the random parameters :math:`k = 1..K` of a template and patients :math:`i = 1..P`,

.. math::

    \\log\\theta_{ik} = \\mu_k + \\omega_k z_{ik},\\quad z_{ik} \\sim N(0, 1),\\qquad
    \\mu_k \\sim N(\\log m_k, s_k^2),\\quad \\omega_k \\sim \\mathrm{HalfNormal}(\\omega_0),

with :math:`m_k, s_k` the median and log-sd of the template's log-normal prior of parameter ``k`` (a
weakly informative prior on the population median :math:`e^{\\mu_k}`). Every other parameter stays at
the template's value. A patient's measurements :math:`y_{ij}` of one observable :math:`h` (e.g.
``viral_load``, log10 copies/mL) at times :math:`t_{ij}` (days after infection) contribute

.. math::

    \\log N\\big(y_{ij};\\ h(t_{ij}; \\theta_i),\\ \\sigma^2\\big)
    \\quad\\text{or, when censored below the limit } L,\\quad
    \\log \\Phi\\big((L - h(t_{ij}; \\theta_i)) / \\sigma\\big),

with :math:`\\sigma` the template's noise sd (fixed) or estimated with a half-normal prior. This is the
nonlinear mixed-effects model of population pharmacometrics (Lavielle 2014, *Mixed Effects Models for
the Population Approach*, ch. 1), sampled jointly with NUTS (Hoffman & Gelman 2014, JMLR 15:1593).

Parameterisation and start. By default NUTS samples the centred form (each patient's
:math:`\\log\\theta_i` given :math:`\\mu, \\omega`), which suits cohorts whose patients each have
informative data; the non-centred form :math:`\\mu + \\omega z` suits sparse data, where the centred
one has a funnel (Betancourt & Girolami 2015, in *Current Trends in Bayesian Methodology*, ch. 4).
The chains start from draws of a Laplace approximation (:mod:`.population_start`) and NUTS keeps its
covariance as the mass matrix, adapting the step size only: NumPyro's dense mass-matrix windows of a
short warm-up estimate a 64 x 64 covariance from 25-100 draws, and on the 30-patient ``viral_immune``
test cohort that estimate sent the late warm-up back to the tree-depth limit (63 leapfrog steps per
iteration) where the Laplace metric had kept 7-31.

Gradients. The likelihood is a sum over patients and patient ``i``'s term depends only on
:math:`\\theta_i`, so the simulated observables are a batched map :math:`(P, K) \\to (P, T)`
(``jax.vmap`` over patients) whose Jacobian is block diagonal: one ``jax.jacfwd`` per patient with
``K`` tangents (the engine's adaptive loop differentiates in forward mode only). A ``custom_vjp``
returns these blocks, so ``jax.grad`` of the joint density, as NUTS calls it, costs one batched
forward-sensitivity solve whatever the number of patients.

Shrinkage. Individual estimates are pulled toward the population when a patient's data say little;
:meth:`PopulationFit.shrinkage` reports the eta-shrinkage
:math:`1 - \\mathrm{sd}_i(\\hat\\eta_{ik}) / \\hat\\omega_k` with :math:`\\hat\\eta_{ik}` the posterior mean
of :math:`\\omega_k z_{ik}` (Savic & Karlsson 2009, AAPS J 11:558).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers
from numpyro.infer import NUTS
from numpyro.infer.util import potential_energy

from immunetwin.engines.codegen import compile_expressions, quantity_index
from immunetwin.engines.integrate import Controls, solve_one
from immunetwin.engines.solvers import AbstractMethod, Rodas5P
from immunetwin.errors import InputError, UnknownIdError
from immunetwin.inference.chains import ChainMethod, CompiledInitNUTS, check_chain_method, run_chains
from immunetwin.inference.population_fit import (
    ESS_MIN,
    NUTS_FIELDS,
    RHAT_THRESHOLD,
    Estimate,
    PopulationFit,
    diagnose,
    inference_data,
    load_population_fit,
)
from immunetwin.inference.population_start import (
    Layout,
    data_curvature,
    empirical_bayes_start,
    laplace_start,
)
from immunetwin.inference.posterior import ConvergenceWarning
from immunetwin.templates import Template
from immunetwin.templates.metadata import parse_expression

__all__ = [
    "ESS_MIN",
    "POPULATION_CONTROLS",
    "RHAT_THRESHOLD",
    "Estimate",
    "PopulationData",
    "PopulationFit",
    "fit_population",
    "load_population_fit",
    "population_predictions",
]

#: Solver tolerances for population fits. Every NUTS step solves the whole cohort with sensitivities,
#: so they are looser than the engine's defaults: on ``viral_immune`` across its parameter ranges the
#: log10 viral load is within 3e-4 of a 1e-10 solve, 1,000 times below the noise sd (0.5), with half
#: the steps of rtol 1e-5.
POPULATION_CONTROLS = Controls(rtol=1e-4, atol=1e-6)


# -- data -------------------------------------------------------------------------------------------


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class PopulationData:
    """Measurements of one observable in many patients, as padded ``(P, T)`` arrays.

    Attributes:
        observable: observable id of the template (e.g. ``"viral_load"``), on its own scale.
        patients: patient ids, the rows.
        times: (P, T) days from each patient's reference time (infection), sorted; padding repeats
            the patient's last time.
        values: (P, T) measured values; a censored entry holds its limit of detection.
        mask: (P, T) True where an entry is a measurement, False for padding.
        censored: (P, T) True where the value was below the limit (left-censored).
    """

    observable: str
    patients: tuple[str, ...]
    times: np.ndarray
    values: np.ndarray
    mask: np.ndarray
    censored: np.ndarray

    def __post_init__(self) -> None:
        shape = np.shape(self.times)
        if len(shape) != 2 or shape[0] != len(self.patients) or shape[1] < 1:
            raise InputError(f"times must have shape (patients={len(self.patients)}, T >= 1), got {shape}")
        for name in ("values", "mask", "censored"):
            if np.shape(getattr(self, name)) != shape:
                raise InputError(f"{name} must have the shape of times {shape}")
        for name, dtype in (("times", float), ("values", float), ("mask", bool), ("censored", bool)):
            object.__setattr__(self, name, _frozen(np.asarray(getattr(self, name), dtype=dtype)))
        for i, pid in enumerate(self.patients):
            t, m = self.times[i], self.mask[i]
            if not m.any():
                raise InputError(f"patient '{pid}' has no measurements")
            if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) < 0):
                raise InputError(f"patient '{pid}': times must be finite, >= 0 and sorted")
            if not np.all(np.isfinite(self.values[i][m])):
                raise InputError(f"patient '{pid}': a measured value is NaN or infinite")

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def counts(self) -> np.ndarray:
        """Measurements per patient."""
        return self.mask.sum(axis=1)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, observable: str, *, limit: float | None = None
    ) -> PopulationData:
        """From a long table with columns ``patient``, ``time``, ``value``, ``censored``.

        A censored row holds its limit of detection in ``value``, or NaN when ``limit`` is given.
        With ``limit``, values at or below it are censored there too (Beal 2001, J Pharmacokinet
        Pharmacodyn 28:481, method M3). Rows are sorted by time within each patient; patients keep
        the order of their first row.

        Raises:
            InputError: a missing column, a non-finite time, or a NaN value that is not censored
                (the message names the patient and the row).
        """
        missing = [c for c in ("patient", "time", "value", "censored") if c not in frame.columns]
        if missing:
            raise InputError(f"population table lacks column(s) {', '.join(missing)}")
        rows: dict[str, list[tuple[float, float, bool]]] = {}
        columns = (frame["patient"], frame["time"], frame["value"], frame["censored"])
        for row, (pid, t, v, c) in enumerate(zip(*columns, strict=True)):
            cens, value = bool(c), float(v)
            if not math.isfinite(float(t)):
                raise InputError(f"patient '{pid}', row {row}: time is not finite")
            if limit is not None and (value <= limit or (cens and math.isnan(value))):
                cens, value = True, float(limit)
            if not math.isfinite(value):
                what = "censored with no limit given" if cens else "not censored"
                raise InputError(f"patient '{pid}', row {row}: value is NaN or infinite and {what}")
            rows.setdefault(str(pid), []).append((float(t), value, cens))
        if not rows:
            raise InputError("population table has no rows")
        width = max(len(r) for r in rows.values())
        shape = (len(rows), width)
        times, values = np.zeros(shape), np.zeros(shape)
        mask, censored = np.zeros(shape, bool), np.zeros(shape, bool)
        for i, entries in enumerate(rows.values()):
            entries.sort(key=lambda e: e[0])
            n = len(entries)
            t, v, c = (np.array(col) for col in zip(*entries, strict=True))
            times[i] = np.concatenate([t, np.full(width - n, t[-1])])
            values[i, :n], censored[i, :n], mask[i, :n] = v, c, True
        return cls(observable, tuple(rows), times, values, mask, censored)


# -- simulation of the observable -------------------------------------------------------------------


def _observable_fn(template: Template, observable: str) -> Callable[[Any, Any], Any]:
    info = template.metadata.observables.get(observable)
    if info is None:
        raise UnknownIdError("observable", observable, tuple(template.metadata.observables))
    index = quantity_index(template.model.spec)
    bindings = {"time": "t", "t": "t"} | {q: f"v[{i}]" for q, i in index.items()}
    fn, _ = compile_expressions("observable", ("t", "v"), bindings, (parse_expression(info.formula),))
    return lambda t, v: fn(t, v)[0]


def _patient_simulator(
    template: Template,
    observable: str,
    random: tuple[str, ...],
    solver: AbstractMethod,
    controls: Controls,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``(log_theta (K,), times (T,)) -> (h (T,), ok)``: one patient, start at t = 0."""
    model = template.model
    fns, spec = model.functions, model.spec
    index = quantity_index(spec)
    derived = set(spec.derived_ids) - set(spec.state_ids)
    for pid in random:
        if pid not in index or pid in derived:
            raise UnknownIdError("random-effect parameter", pid, model.parameter_ids)
    idx = np.array([index[p] for p in random], dtype=np.int32)
    base = np.array([v for _, v in spec.declared], dtype=float)
    mask = np.zeros(base.shape, bool)
    mask[idx] = True
    trig0 = np.array([e.initial_value for e in spec.events], dtype=bool)
    n, nc = len(spec.states), len(spec.constants)
    no_stop = (np.full((1,), np.inf), np.zeros((1, n)), np.zeros((1, nc), bool), np.zeros((1, nc)))
    obs = _observable_fn(template, observable)

    def one(log_theta: Any, times: Any) -> tuple[Any, Any]:
        d = jnp.asarray(base).at[idx].set(jnp.exp(log_theta))
        y0, c0 = fns.init(d, jnp.asarray(mask), 0.0)
        ts = jnp.concatenate([jnp.zeros(1), times])
        stops = tuple(map(jnp.asarray, no_stop))
        ys, status, _ = solve_one(fns, solver, controls, y0, c0, jnp.asarray(trig0), ts, *stops)
        h = jax.vmap(lambda t, y: obs(t, fns.observe(t, y, c0)))(ts[1:], ys[1:])
        return h, status == 0

    return one


def _prediction_functions(
    template: Template,
    observable: str,
    random: tuple[str, ...],
    times: Any,
    solver: AbstractMethod,
    controls: Controls,
) -> tuple[Callable[[Any], tuple[Any, Any]], Callable[[Any], tuple[Any, Any, Any]]]:
    """``value(log_theta (P, K)) -> (h (P, T), ok (P,))`` and ``jacobian(log_theta) -> (h, ok, jac
    (P, T, K))``: the cohort's simulated observable and its forward sensitivities (non-finite
    entries of a failed solve set to 0), batched over patients."""
    one = _patient_simulator(template, observable, random, solver, controls)
    ts = jnp.asarray(np.asarray(times, dtype=float))

    def value(lt: Any, t: Any) -> tuple[Any, Any]:
        h, ok = one(lt, t)
        return h, ok.astype(h.dtype)

    def with_jacobian(lt: Any, t: Any) -> tuple[Any, Any, Any]:
        def f(x: Any) -> tuple[Any, Any]:
            h, ok = value(x, t)
            return h, (h, ok)

        jac, (h, ok) = jax.jacfwd(f, has_aux=True)(lt)
        return h, ok, jnp.where(jnp.isfinite(jac), jac, 0.0)

    return (lambda lt: jax.vmap(value)(lt, ts)), (lambda lt: jax.vmap(with_jacobian)(lt, ts))


def population_predictions(
    template: Template,
    observable: str,
    random: Sequence[str],
    times: Any,
    *,
    solver: AbstractMethod | None = None,
    controls: Controls = POPULATION_CONTROLS,
) -> Callable[[Any], tuple[Any, Any]]:
    """``log_theta (P, K) -> (h (P, T), ok (P,) as 0/1 floats)``, reverse-differentiable.

    The ``custom_vjp``'s forward pass computes each patient's ``(T, K)`` Jacobian with ``jax.jacfwd``
    (batched over patients with ``jax.vmap``); the backward pass contracts it with the cotangent.
    Must be traced and run inside ``with jax.enable_x64(True):``.
    """
    return _differentiable(
        *_prediction_functions(template, observable, tuple(random), times, solver or Rodas5P(), controls)
    )


def _differentiable(
    value: Callable[[Any], tuple[Any, Any]], jacobian: Callable[[Any], tuple[Any, Any, Any]]
) -> Callable[[Any], tuple[Any, Any]]:
    """``value`` with a ``custom_vjp`` whose forward pass keeps ``jacobian``'s blocks."""

    @jax.custom_vjp
    def predict(log_theta: Any) -> tuple[Any, Any]:
        return value(log_theta)

    def fwd(log_theta: Any) -> tuple[tuple[Any, Any], Any]:
        h, ok, jac = jacobian(log_theta)
        return (h, ok), jac

    def bwd(jac: Any, cotangent: tuple[Any, Any]) -> tuple[Any]:
        return (jnp.einsum("pt,ptk->pk", cotangent[0], jac),)

    predict.defvjp(fwd, bwd)
    return predict


def _loglik(h: Any, ok: Any, sigma: Any, data: PopulationData) -> Any:
    """Per-patient log likelihood (P,): normal density, or normal CDF at the limit when censored.

    A patient whose solve failed (``ok == 0``) gets ``-inf``.
    """
    okb = ok > 0.5
    h = jnp.where(okb[:, None], h, 0.0)  # keep NaN of failed solves out of the gradient
    y = np.where(data.mask, data.values, 0.0)  # padding may hold anything
    z = (jnp.asarray(y) - h) / sigma
    dens = jax.scipy.stats.norm.logpdf(z) - jnp.log(sigma)
    ll = jnp.where(jnp.asarray(data.censored), jax.scipy.stats.norm.logcdf(z), dens)
    total = jnp.sum(jnp.where(jnp.asarray(data.mask), ll, 0.0), axis=1)
    return jnp.where(okb, total, -jnp.inf)


# -- the hierarchical model -------------------------------------------------------------------------


def _population_priors(template: Template, random: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Normal priors of ``mu`` from the template's log-normal priors: (log median, log sd)."""
    loc, scale = [], []
    for pid in random:
        info = template.metadata.parameters.get(pid)
        if info is None:
            raise UnknownIdError("template parameter", pid, tuple(template.metadata.parameters))
        if info.prior.distribution != "lognormal":
            raise InputError(
                f"random effect '{pid}' needs a log-normal prior in {template.name}'s metadata, "
                f"got {info.prior.distribution}"
            )
        loc.append(math.log(info.prior.parameters["median"]))
        scale.append(info.prior.parameters["sigma"])
    return np.array(loc), np.array(scale)


def _numpyro_model(
    predict: Callable[[Any], tuple[Any, Any]],
    data: PopulationData,
    mu_prior: tuple[np.ndarray, np.ndarray],
    omega_scale: float,
    sigma: float | None,
    sigma_scale: float,
    centred: bool = False,
) -> Callable[[], None]:
    """The NumPyro model of the module docstring (sites ``mu``, ``omega``, ``z`` / ``log_theta``,
    ``sigma``): non-centred samples ``z`` (``log_theta`` deterministic), centred ``log_theta``
    (``z`` deterministic)."""
    n_p, n_k = data.n_patients, len(mu_prior[0])

    def model() -> None:
        mu = numpyro.sample("mu", dist.Normal(jnp.asarray(mu_prior[0]), jnp.asarray(mu_prior[1])).to_event(1))
        omega = numpyro.sample("omega", dist.HalfNormal(omega_scale * jnp.ones(n_k)).to_event(1))
        if centred:
            shape = (n_p, n_k)
            log_theta = numpyro.sample("log_theta", dist.Normal(jnp.broadcast_to(mu, shape), jnp.broadcast_to(omega, shape)).to_event(2))  # fmt: skip
            numpyro.deterministic("z", (log_theta - mu) / omega)
        else:
            z = numpyro.sample("z", dist.Normal(jnp.zeros((n_p, n_k)), 1.0).to_event(2))
            log_theta = numpyro.deterministic("log_theta", mu + omega * z)
        s = numpyro.sample("sigma", dist.HalfNormal(sigma_scale)) if sigma is None else sigma
        h, ok = predict(log_theta)
        numpyro.factor("loglik", jnp.sum(_loglik(h, ok, s, data)))

    return model


def _initial_values(
    key: Any, chains: int, mu_loc: np.ndarray, n_p: int, sigma: float | None, sigma0: float, centred: bool
) -> dict[str, Any]:
    """Dispersed starts per chain, in NumPyro's unconstrained space (log for ``omega``, ``sigma``).

    ``mu`` within 0.3 (log) of the prior median, ``omega`` about 0.3, ``z`` with sd 0.3: dispersed
    enough for R-hat to mean something, close enough that every start solves.
    """
    k_mu, k_om, k_z, k_s = jax.random.split(key, 4)
    n_k = mu_loc.shape[0]
    init = {
        "mu": jnp.asarray(mu_loc) + 0.3 * jax.random.normal(k_mu, (chains, n_k)),
        "omega": math.log(0.3) + 0.3 * jax.random.normal(k_om, (chains, n_k)),
        "z": 0.3 * jax.random.normal(k_z, (chains, n_p, n_k)),
    }
    if sigma is None:
        init["sigma"] = math.log(sigma0) + 0.2 * jax.random.normal(k_s, (chains,))
    if centred:
        init["log_theta"] = init["mu"][:, None, :] + jnp.exp(init["omega"])[:, None, :] * init.pop("z")
    return init


def _laplace_inits(
    key: Any,
    chains: int,
    model: Callable[[], None],
    jacobian: Callable[[Any], tuple[Any, Any, Any]],
    data: PopulationData,
    layout: Layout,
    mu_prior: tuple[np.ndarray, np.ndarray],
    sigma: float | None,
    sigma0: float,
    omega0: float,
) -> tuple[dict[str, Any], np.ndarray]:
    """Chain starts drawn from a Laplace approximation, and its covariance (the inverse mass matrix,
    in :class:`Layout` order): at the joint mode in the non-centred form, at the empirical-Bayes point
    in the centred form (``omega0`` its first ``omega``); see :mod:`.population_start`.

    Each start is ``mode + L e`` (``L L^T`` the covariance, ``e`` standard normal), halved toward the
    mode while its density is not finite (a solve that fails there).
    """

    def energy(u: Any) -> Any:
        return potential_energy(model, (), {}, layout.split(u))

    def prior_energy(u: Any) -> Any:
        return potential_energy(handlers.block(model, hide=["loglik"]), (), {}, layout.split(u))

    value_and_grad = jax.jit(jax.value_and_grad(energy))
    prior_hessian = jax.jit(jax.hessian(prior_energy))
    jac_fn = jax.jit(jacobian)

    def potential(u: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = value_and_grad(jnp.asarray(u))
        return float(f), np.asarray(g)

    def curvature(u: np.ndarray) -> np.ndarray:
        noise = float(np.exp(layout.split(u)["sigma"])) if layout.sigma else float(sigma)  # type: ignore[arg-type]
        h, _, jac = jac_fn(jnp.asarray(layout.log_theta(u)))
        data_part = data_curvature(
            layout, u, np.asarray(h), np.asarray(jac), data.mask, data.censored, data.values, noise
        )
        return data_part + np.asarray(prior_hessian(jnp.asarray(u)))

    centre = {"mu": mu_prior[0], "omega": np.full(layout.n_random, math.log(0.3)),
              "z": np.zeros((layout.n_patients, layout.n_random)), "sigma": np.array(math.log(sigma0)),
              "log_theta": np.broadcast_to(mu_prior[0], (layout.n_patients, layout.n_random))}  # fmt: skip
    if layout.patient_site == "log_theta":
        centre["omega"] = np.full(layout.n_random, math.log(omega0))
        start = empirical_bayes_start(potential, curvature, layout, layout.join(centre))
    else:
        start = laplace_start(potential, curvature, layout.join(centre))
    cov = 0.5 * (start.covariance + start.covariance.T)
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(layout.size) * np.max(np.diagonal(cov)))
    eps = np.asarray(jax.random.normal(key, (chains, layout.size)))
    starts = []
    for e in eps:
        u = start.mode + chol @ e
        for _ in range(20):
            if np.isfinite(potential(u)[0]):
                break
            u = start.mode + 0.5 * (u - start.mode)
        starts.append(layout.split(u))
    init = {name: jnp.asarray(np.stack([s[name] for s in starts])) for name in layout.sites()}
    return init, cov


# -- the verb ---------------------------------------------------------------------------------------


def fit_population(
    template: Template,
    data: PopulationData,
    *,
    random: Sequence[str],
    key: Any,
    chains: int = 4,
    draws: int = 500,
    warmup: int = 500,
    method: Literal["nuts"] = "nuts",
    estimate_sigma: bool = False,
    omega_scale: float = 0.5,
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    dense_mass: bool = True,
    chain_method: ChainMethod = "vectorized",
    parameterisation: Literal["centred", "non-centred"] = "centred",
    start: Literal["laplace", "prior"] = "laplace",
    progress: bool = False,
    solver: AbstractMethod | None = None,
    controls: Controls = POPULATION_CONTROLS,
) -> PopulationFit:
    """Fit the hierarchical model of the module docstring to a cohort, jointly, by NUTS.

    Args:
        template: the template whose model and observable are fitted (e.g. ``viral_immune``).
        data: the cohort's measurements of one of the template's observables, times from infection.
        random: parameter ids with log-normal random effects (each needs a log-normal prior in the
            template metadata: it centres the prior of ``mu``). Every other parameter is fixed.
        key: ``jax.random.PRNGKey`` for the starts and the sampler.
        chains, draws, warmup: NUTS chains, kept draws per chain, warm-up (adaptation) iterations.
        method: ``"nuts"`` (the only one).
        estimate_sigma: sample the noise sd (half-normal prior with scale twice the template's)
            instead of fixing it to the template's.
        omega_scale: scale of the half-normal prior of each ``omega_k``.
        target_accept, max_tree_depth: NUTS settings.
        dense_mass: a dense mass matrix (default) or its diagonal. With ``start="prior"`` NumPyro
            adapts it during warm-up (the non-centred form couples ``mu`` with every ``z_i`` when
            patients' data are informative; on an 8-patient ``viral_immune`` cohort a dense matrix
            cut the leapfrog steps per draw from 15 to 9.5 against a diagonal one); with
            ``start="laplace"`` it is the Laplace covariance (or its diagonal), held fixed.
        chain_method: ``"vectorized"`` runs the chains in lockstep as one batched program, right
            for small cohorts, where a batched solve costs little more than one chain's; for large
            ``patients x parameters`` the solve cost grows with the batch and ``"sequential"`` saves
            the lockstep's wait for the longest tree. (``"parallel"`` is refused here: a NumPyro
            model is traced through effect handlers that all threads of a process share, so its
            chains cannot be traced in threads, as :mod:`immunetwin.inference.chains` does.)
        parameterisation: ``"centred"`` samples each patient's ``log_theta`` given ``mu`` and
            ``omega``; ``"non-centred"`` samples ``z = (log_theta - mu) / omega``. Which one NUTS
            explores well depends on how much each patient's data say (Betancourt & Girolami 2015):
            non-centred for sparse data (the funnel), centred for informative data, where non-centred
            couples ``omega`` and every ``z_i`` along curved ridges ``omega z_i = const``.
        start: ``"laplace"`` (default): the chains start from draws of a Laplace approximation and
            NUTS uses its covariance as the inverse mass matrix, held fixed while the step size adapts
            (:mod:`.population_start`: the joint mode in the non-centred form; in the centred form,
            whose joint mode is degenerate, an empirical-Bayes point). ``"prior"``: dispersed starts
            around the prior medians, the identity mass matrix, adapted by NumPyro. On the 30-patient
            ``viral_immune`` test cohort, ``"prior"`` spends its first 60+ warm-up iterations at
            NUTS's tree-depth limit.
        progress: show NumPyro's progress bar.
        solver, controls: the ODE method (default ``Rodas5P()``) and tolerances.

    Returns:
        The fit; ``converged`` is False (and a ``ConvergenceWarning`` is emitted) when an R-hat is
        above ``RHAT_THRESHOLD``, a bulk ESS below ``ESS_MIN`` or a transition diverged.

    Raises:
        InputError: unknown method, an observable without a normal noise model, a random parameter
            without a log-normal prior, or sampler settings that are not positive.
        UnknownIdError: unknown observable or parameter.
    """
    if method != "nuts":
        raise InputError(f"unknown population fitting method '{method}' (known: nuts)")
    if min(chains, draws, warmup) < 1:
        raise InputError(f"chains, draws and warmup must be >= 1, got {chains}, {draws}, {warmup}")
    if parameterisation not in ("centred", "non-centred"):
        raise InputError(f"parameterisation must be 'centred' or 'non-centred', got '{parameterisation}'")
    if start not in ("laplace", "prior"):
        raise InputError(f"start must be 'laplace' or 'prior', got '{start}'")
    check_chain_method(chain_method)
    if chain_method == "parallel":
        raise InputError(
            "chain_method='parallel' is not available for population fits: NumPyro's effect handlers,"
            " through which the population model is traced, are shared by all threads of a process;"
            " use 'vectorized' or 'sequential'"
        )
    random = tuple(random)
    if not random or len(set(random)) != len(random):
        raise InputError(f"random must name distinct parameters, got {random}")
    info = template.metadata.observables.get(data.observable)
    if info is None:
        raise UnknownIdError("observable", data.observable, tuple(template.metadata.observables))
    if info.noise.model != "normal":
        raise InputError(
            f"observable '{data.observable}' has {info.noise.model} noise; only normal is supported"
        )
    mu_prior = _population_priors(template, random)
    sigma = None if estimate_sigma else float(info.noise.sigma)
    k_init, k_run = jax.random.split(key)
    with jax.enable_x64(True):
        value, jacobian = _prediction_functions(
            template, data.observable, random, data.times, solver or Rodas5P(), controls
        )
        model = _numpyro_model(
            _differentiable(value, jacobian),
            data,
            mu_prior,
            omega_scale,
            sigma,
            2.0 * info.noise.sigma,
            centred=parameterisation == "centred",
        )
        site = "log_theta" if parameterisation == "centred" else "z"
        layout = Layout(data.n_patients, len(random), sigma is None, site)
        if start == "laplace":
            init, cov = _laplace_inits(
                k_init, chains, model, jacobian, data, layout, mu_prior, sigma, info.noise.sigma, omega_scale
            )
            block = layout.sites()
            metric = {block: cov if dense_mass else np.diagonal(cov).copy()}
            options = {"dense_mass": [block] if dense_mass else [], "inverse_mass_matrix": metric,
                       "adapt_mass_matrix": False}  # fmt: skip
        else:
            init = _initial_values(
                k_init, chains, mu_prior[0], data.n_patients, sigma, info.noise.sigma, site == "log_theta"
            )
            options = {"dense_mass": dense_mass}

        def kernel() -> NUTS:
            return CompiledInitNUTS(
                model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth, **options
            )

        samples, extra = run_chains(
            kernel, key=k_run, init=init, chains=chains, warmup=warmup, draws=draws,
            chain_method=chain_method, progress=progress, extra_fields=NUTS_FIELDS,
        )  # fmt: skip
        idata = inference_data(samples, extra, random, data.patients)
    rhat, ess, divergences, messages = diagnose(idata)
    if messages:
        warnings.warn(
            "population fit did not converge: " + "; ".join(messages), ConvergenceWarning, stacklevel=2
        )
    return PopulationFit(
        random, data.patients, idata, sigma, rhat, ess, divergences, not messages, tuple(messages)
    )
