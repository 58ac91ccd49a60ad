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
the Population Approach*, ch. 1), sampled jointly with NUTS (Hoffman & Gelman 2014, JMLR 15:1593) in
the non-centred form :math:`\\mu + \\omega z`, which avoids the funnel of sparse-data hierarchies
(Betancourt & Girolami 2015, in *Current Trends in Bayesian Methodology*, ch. 4).

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

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.infer import MCMC, NUTS

from immunetwin.engines.codegen import compile_expressions, quantity_index
from immunetwin.engines.integrate import Controls, solve_one
from immunetwin.engines.solvers import AbstractMethod, Rodas5P
from immunetwin.errors import InputError, UnknownIdError
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

#: R-hat above which a fit is not called converged (Gelman & Rubin's classic 1.1 is too lax; 1.01
#: (Vehtari et al. 2021, Bayesian Anal 16:667) needs thousands of draws; 1.05 is the usual middle).
RHAT_THRESHOLD = 1.05

#: Smallest bulk effective sample size of any variable for a fit to count as converged. Vehtari et al.
#: (2021) ask 400 for fine summaries; 100 keeps the Monte Carlo error of a posterior mean at a tenth of
#: its posterior sd (MCSE = sd / sqrt(ESS)), enough for the coarse summaries of a short population run.
ESS_MIN = 100.0


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
    one = _patient_simulator(template, observable, tuple(random), solver or Rodas5P(), controls)
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

    @jax.custom_vjp
    def predict(log_theta: Any) -> tuple[Any, Any]:
        return jax.vmap(value)(log_theta, ts)

    def fwd(log_theta: Any) -> tuple[tuple[Any, Any], Any]:
        h, ok, jac = jax.vmap(with_jacobian)(log_theta, ts)
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


@dataclass(frozen=True)
class Estimate:
    """A posterior summary: median and equal-tailed credible interval ``[lower, upper]``."""

    median: float
    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


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
) -> Callable[[], None]:
    """The NumPyro model of the module docstring (sites ``mu``, ``omega``, ``z``, ``sigma``)."""
    n_p, n_k = data.n_patients, len(mu_prior[0])

    def model() -> None:
        mu = numpyro.sample("mu", dist.Normal(jnp.asarray(mu_prior[0]), jnp.asarray(mu_prior[1])).to_event(1))
        omega = numpyro.sample("omega", dist.HalfNormal(omega_scale * jnp.ones(n_k)).to_event(1))
        z = numpyro.sample("z", dist.Normal(jnp.zeros((n_p, n_k)), 1.0).to_event(2))
        log_theta = numpyro.deterministic("log_theta", mu + omega * z)
        s = numpyro.sample("sigma", dist.HalfNormal(sigma_scale)) if sigma is None else sigma
        h, ok = predict(log_theta)
        numpyro.factor("loglik", jnp.sum(_loglik(h, ok, s, data)))

    return model


def _initial_values(
    key: Any, chains: int, mu_loc: np.ndarray, n_p: int, sigma: float | None, sigma0: float
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
    return init


# -- result -----------------------------------------------------------------------------------------


def _summary(draws: np.ndarray, prob: float) -> Estimate:
    lo, med, hi = np.quantile(draws, [(1 - prob) / 2, 0.5, (1 + prob) / 2])
    return Estimate(float(med), float(lo), float(hi))


@dataclass(frozen=True, eq=False)
class PopulationFit:
    """A sampled population model (see the module docstring).

    Attributes:
        random: ids of the parameters with random effects (the ``parameter`` coordinate).
        patients: patient ids (the ``patient`` coordinate).
        posterior: ArviZ ``InferenceData``: ``mu``, ``omega``, ``z``, ``log_theta`` (individual log
            values), ``theta`` (individual values), ``sigma`` if estimated; ``sample_stats`` of NUTS.
        sigma: the fixed noise sd, or ``None`` when it was estimated.
        rhat: largest split R-hat per variable (``mu``, ``omega``, ``log_theta``, ``sigma``).
        ess: smallest bulk ESS per variable.
        divergences: divergent transitions after warm-up.
        converged: every R-hat ``<= RHAT_THRESHOLD`` (1.05), every bulk ESS ``>= ESS_MIN`` (100)
            and no divergence.
        warnings: plain-language reasons why the fit is not converged (empty when it is).
    """

    random: tuple[str, ...]
    patients: tuple[str, ...]
    posterior: az.InferenceData = field(repr=False)
    sigma: float | None
    rhat: Mapping[str, float]
    ess: Mapping[str, float]
    divergences: int
    converged: bool
    warnings: tuple[str, ...] = ()

    def summary(self) -> pd.DataFrame:
        """ArviZ summary (mean, sd, HDI, MCSE, ESS, R-hat) of the population parameters."""
        names = [n for n in ("mu", "omega", "sigma") if n in self.posterior.posterior]
        return az.summary(self.posterior, var_names=names)

    def draws(self, name: str) -> np.ndarray:
        """Posterior draws of a variable (``mu``, ``omega``, ``theta``, ...) with chains and draws
        stacked first: (S, ...); ``mu`` and ``omega`` are (S, len(random)) on the log scale."""
        if name not in self.posterior.posterior:
            raise UnknownIdError("posterior variable", name, tuple(self.posterior.posterior.data_vars))
        return self._draws(name)

    def _draws(self, name: str) -> np.ndarray:
        """Draws of a variable with chains and draws stacked first: (S, ...)."""
        values = np.asarray(self.posterior.posterior[name].values)
        return values.reshape(-1, *values.shape[2:])

    def median(self, prob: float = 0.95) -> dict[str, Estimate]:
        """Population median ``exp(mu_k)`` of each random parameter (linear scale)."""
        mu = np.exp(self._draws("mu"))
        return {p: _summary(mu[:, k], prob) for k, p in enumerate(self.random)}

    def mu(self, prob: float = 0.95) -> dict[str, Estimate]:
        """Population means ``mu_k`` of the log parameters."""
        mu = self._draws("mu")
        return {p: _summary(mu[:, k], prob) for k, p in enumerate(self.random)}

    def omega(self, prob: float = 0.95) -> dict[str, Estimate]:
        """Between-patient sds ``omega_k`` of the log parameters."""
        om = self._draws("omega")
        return {p: _summary(om[:, k], prob) for k, p in enumerate(self.random)}

    def noise(self, prob: float = 0.95) -> Estimate:
        """The measurement noise sd (a point interval when it was fixed)."""
        if self.sigma is not None:
            return Estimate(self.sigma, self.sigma, self.sigma)
        return _summary(self._draws("sigma"), prob)

    def individual(self, patient: int | str, prob: float = 0.95) -> dict[str, Estimate]:
        """One patient's parameter values (linear scale), by row index or patient id."""
        if isinstance(patient, str):
            if patient not in self.patients:
                raise UnknownIdError("patient", patient, self.patients)
            patient = self.patients.index(patient)
        if not -len(self.patients) <= patient < len(self.patients):
            raise InputError(f"patient index {patient} out of range for {len(self.patients)} patients")
        theta = np.exp(self._draws("log_theta")[:, patient])
        return {p: _summary(theta[:, k], prob) for k, p in enumerate(self.random)}

    def shrinkage(self) -> dict[str, float]:
        """Eta-shrinkage ``1 - sd_i(E[eta_ik]) / E[omega_k]`` (Savic & Karlsson 2009, AAPS J 11:558).

        ``eta_ik = log_theta_ik - mu_k``; 0 when every patient's data pin down their own value, 1 when
        every individual estimate equals the population value.
        """
        eta = self._draws("log_theta") - self._draws("mu")[:, None, :]
        eta_hat = eta.mean(axis=0)  # (P, K)
        omega = self._draws("omega").mean(axis=0)
        return {p: float(1.0 - eta_hat[:, k].std(ddof=1) / omega[k]) for k, p in enumerate(self.random)}

    def save(self, path: str | Path) -> Path:
        """Write the fit to one NetCDF file, read back by :func:`load_population_fit`.

        The posterior groups are written as ArviZ writes them (``to_netcdf``); the other fields go, as
        JSON, into the root attribute ``immunetwin_population_fit``. The file is written under a
        temporary name in the same folder and renamed, so a failure leaves no partial file.

        Raises:
            InputError: ``path`` is a folder, or the file cannot be written (the message names it).
        """
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path} is a folder; give a file name such as population.nc")
        record = {"format": _FIT_FORMAT, "random": list(self.random), "patients": list(self.patients),
                  "sigma": self.sigma, "rhat": {k: float(v) for k, v in self.rhat.items()},
                  "ess": {k: float(v) for k, v in self.ess.items()}, "divergences": int(self.divergences),
                  "converged": bool(self.converged), "warnings": list(self.warnings)}  # fmt: skip
        groups = {g: getattr(self.posterior, g) for g in self.posterior.groups()}
        idata = az.InferenceData(attrs={**self.posterior.attrs, _FIT_ATTR: json.dumps(record)}, **groups)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            idata.to_netcdf(tmp)
            os.replace(tmp, path)
        except OSError as err:
            why = err.strerror or str(err)
            if isinstance(err, FileExistsError | NotADirectoryError):  # a file where a folder should be
                why = f"{err.filename or path.parent} is not a folder"
            raise InputError(f"{path}: cannot write the population fit ({why})") from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        return path


_EXTRA_FIELDS = ("diverging", "potential_energy", "num_steps", "accept_prob", "adapt_state.step_size")


def _inference_data(
    samples: Mapping[str, Any], extra: Mapping[str, Any], random: tuple[str, ...], patients: tuple[str, ...]
) -> az.InferenceData:
    post = {k: np.asarray(v) for k, v in samples.items()}
    post["theta"] = np.exp(post["log_theta"])
    extra = {k: np.asarray(v) for k, v in extra.items()}
    stats = {
        "diverging": extra["diverging"].astype(bool),
        "lp": -extra["potential_energy"],
        "n_steps": extra["num_steps"],
        "tree_depth": np.ceil(np.log2(extra["num_steps"] + 1.0)).astype(int),
        "acceptance_rate": extra["accept_prob"],
        "step_size": extra["adapt_state.step_size"],
    }
    pk = ["patient", "parameter"]
    dims = {"mu": ["parameter"], "omega": ["parameter"], "z": pk, "log_theta": pk, "theta": pk}
    coords = {"parameter": list(random), "patient": list(patients)}
    return az.from_dict(posterior=post, sample_stats=stats, coords=coords, dims=dims)


def _diagnostics(idata: az.InferenceData) -> tuple[dict[str, float], dict[str, float], int, list[str]]:
    """Largest R-hat and smallest bulk ESS per variable, divergences, and what is wrong in words."""
    names = [n for n in ("mu", "omega", "log_theta", "sigma") if n in idata.posterior]
    with warnings.catch_warnings():  # ArviZ warns on short chains; the messages below say more
        warnings.simplefilter("ignore")
        rhat_ds = az.rhat(idata, var_names=names)
        ess_ds = az.ess(idata, var_names=names, method="bulk")
    rhat = {n: float(np.max(rhat_ds[n].values)) for n in names}
    ess = {n: float(np.min(ess_ds[n].values)) for n in names}
    divergences = int(idata.sample_stats["diverging"].values.sum())
    messages = [
        f"R-hat of '{n}' is {r:.3g} (> {RHAT_THRESHOLD}): the chains disagree; run more warm-up and draws"
        for n, r in rhat.items()
        if not r <= RHAT_THRESHOLD
    ]
    messages += [
        f"bulk effective sample size of '{n}' is {e:.0f} (< {ESS_MIN:.0f}): run more draws"
        for n, e in ess.items()
        if not e >= ESS_MIN
    ]
    if divergences:
        messages.append(f"{divergences} divergent transitions after warm-up: raise target_accept")
    return rhat, ess, divergences, messages


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
    chain_method: Literal["vectorized", "sequential"] = "vectorized",
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
        dense_mass: adapt a dense mass matrix. The non-centred form couples ``mu`` with every
            ``z_i`` when patients' data are informative; on an 8-patient ``viral_immune`` cohort a
            dense matrix cut the leapfrog steps per draw from 15 to 9.5 against a diagonal one.
        chain_method: ``"vectorized"`` runs the chains in lockstep as one batched program, right
            for small cohorts, where a batched solve costs little more than one chain's; for large
            ``patients x parameters`` the solve cost grows with the batch and ``"sequential"`` saves
            the lockstep's wait for the longest tree.
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
    if chain_method not in ("vectorized", "sequential"):
        raise InputError(f"chain_method must be 'vectorized' or 'sequential', got '{chain_method}'")
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
        predict = population_predictions(
            template, data.observable, random, data.times, solver=solver, controls=controls
        )
        model = _numpyro_model(predict, data, mu_prior, omega_scale, sigma, 2.0 * info.noise.sigma)
        kernel = NUTS(
            model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth, dense_mass=dense_mass
        )
        mcmc = MCMC(
            kernel,
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            chain_method=chain_method,
            progress_bar=progress,
        )
        init = _initial_values(k_init, chains, mu_prior[0], data.n_patients, sigma, info.noise.sigma)
        if chains == 1:
            init = {k: v[0] for k, v in init.items()}
        mcmc.run(k_run, init_params=init, extra_fields=_EXTRA_FIELDS)
        samples = mcmc.get_samples(group_by_chain=True)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        idata = _inference_data(samples, extra, random, data.patients)
    rhat, ess, divergences, messages = _diagnostics(idata)
    if messages:
        warnings.warn(
            "population fit did not converge: " + "; ".join(messages), ConvergenceWarning, stacklevel=2
        )
    return PopulationFit(
        random, data.patients, idata, sigma, rhat, ess, divergences, not messages, tuple(messages)
    )


# -- saved fits -----------------------------------------------------------------------------------


#: Root attribute of a saved fit holding every field but the posterior (JSON), and its format number.
_FIT_ATTR = "immunetwin_population_fit"
_FIT_FORMAT = 1


def load_population_fit(path: str | Path) -> PopulationFit:
    """Read a fit written by :meth:`PopulationFit.save` (the posterior is loaded into memory).

    Raises:
        InputError: the file is missing, is not a NetCDF-4 file, or holds no population fit (no
            ``immunetwin_population_fit`` attribute, a damaged one, or no ``mu`` / ``omega`` draws);
            the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    try:
        with az.rc_context({"data.load": "eager"}):
            idata = az.from_netcdf(str(path))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a NetCDF-4 file ({err})") from None
    attrs = dict(idata.attrs)
    raw = attrs.pop(_FIT_ATTR, None)
    if raw is None:
        raise InputError(f"{path}: a NetCDF file without a population fit (no '{_FIT_ATTR}' attribute; "
                         "write one with PopulationFit.save)")  # fmt: skip
    try:
        fields = _fit_fields(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: damaged '{_FIT_ATTR}' attribute ({err})") from None
    if "posterior" not in idata.groups() or not {"mu", "omega"} <= set(idata.posterior.data_vars):
        raise InputError(f"{path}: the population fit has no posterior draws of mu and omega")
    groups = {g: getattr(idata, g) for g in idata.groups()}
    return PopulationFit(posterior=az.InferenceData(attrs=attrs, **groups), **fields)


def _fit_fields(rec: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a :class:`PopulationFit` but the posterior, from the saved JSON record."""
    if rec["format"] != _FIT_FORMAT:
        raise ValueError(f"format {rec['format']}; this version reads {_FIT_FORMAT}")
    return {
        "random": tuple(map(str, rec["random"])),
        "patients": tuple(map(str, rec["patients"])),
        "sigma": None if rec["sigma"] is None else float(rec["sigma"]),
        "rhat": {str(k): float(v) for k, v in rec["rhat"].items()},
        "ess": {str(k): float(v) for k, v in rec["ess"].items()},
        "divergences": int(rec["divergences"]),
        "converged": bool(rec["converged"]),
        "warnings": tuple(map(str, rec["warnings"])),
    }
