"""The result of a population fit: summaries, diagnostics and saving (see
:mod:`immunetwin.inference.population` for the model)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd

from immunetwin.errors import InputError, UnknownIdError

__all__ = ["ESS_MIN", "RHAT_THRESHOLD", "Estimate", "PopulationFit", "load_population_fit"]

#: R-hat above which a fit is not called converged (Gelman & Rubin's classic 1.1 is too lax; 1.01
#: (Vehtari et al. 2021, Bayesian Anal 16:667) needs thousands of draws; 1.05 is the usual middle).
RHAT_THRESHOLD = 1.05

#: Smallest bulk effective sample size of any variable for a fit to count as converged. Vehtari et al.
#: (2021) ask 400 for fine summaries; 100 keeps the Monte Carlo error of a posterior mean at a tenth of
#: its posterior sd (MCSE = sd / sqrt(ESS)), enough for the coarse summaries of a short population run.
ESS_MIN = 100.0


@dataclass(frozen=True)
class Estimate:
    """A posterior summary: median and equal-tailed credible interval ``[lower, upper]``."""

    median: float
    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


# -- result -----------------------------------------------------------------------------------------


def _summary(draws: np.ndarray, prob: float) -> Estimate:
    lo, med, hi = np.quantile(draws, [(1 - prob) / 2, 0.5, (1 + prob) / 2])
    return Estimate(float(med), float(lo), float(hi))


@dataclass(frozen=True, eq=False)
class PopulationFit:
    """A sampled population model (see :mod:`immunetwin.inference.population`).

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


#: The NUTS statistics kept per draw (NumPyro extra fields).
NUTS_FIELDS = ("diverging", "potential_energy", "num_steps", "accept_prob", "adapt_state.step_size")


def inference_data(
    samples: Mapping[str, Any], extra: Mapping[str, Any], random: tuple[str, ...], patients: tuple[str, ...]
) -> az.InferenceData:
    """ArviZ data of NumPyro's draws (by chain) and their ``NUTS_FIELDS``, with ``theta``."""
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


def diagnose(idata: az.InferenceData) -> tuple[dict[str, float], dict[str, float], int, list[str]]:
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
