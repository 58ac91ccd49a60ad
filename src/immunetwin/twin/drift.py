"""``drift_signal``: is a template systematically wrong for the patients its twins follow?

Each twin keeps the predictive percentile (PIT) of every measurement it absorbed, scored before it
saw it (:mod:`immunetwin.twin.scores`). If the template and its priors describe the patients, the
PITs are uniform and their probits :math:`z = \\Phi^{-1}(\\mathrm{PIT})` standard normal, whichever
patient they come from. Pooling the probits of one observable over every twin of a template:

* a **mean shift** (one-sample t test of :math:`E[z] = 0`) says the template predicts too high or
  too low (e.g. a viral load that falls more slowly than modelled);
* a **Kolmogorov-Smirnov test** of the uncensored PITs against :math:`U(0, 1)` also catches
  predictive bands that are too narrow or too wide (a U- or hump-shaped PIT histogram; Gneiting,
  Balabdaoui & Raftery 2007, JRSS B 69:243; Czado, Gneiting & Held 2009, Biometrics 65:1254).

An observable is flagged when either test's p-value is below ``alpha`` divided by the number of tests
(Bonferroni over both tests and every observable); a flagged template needs model improvement, not
just re-personalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import kstest, ttest_1samp

from immunetwin.errors import InputError
from immunetwin.twin.twin import Twin

__all__ = ["DriftReport", "ObservableDrift", "drift_signal"]

_MIN_ROWS = 3


@dataclass(frozen=True)
class ObservableDrift:
    """Pooled scores of one observable over a template's twins.

    Attributes:
        observable: its name; ``n``: measurements pooled; ``patients``: twins that contributed.
        mean_probit: mean of the probit PITs (0 when calibrated; > 0: measurements higher than
            predicted); ``sd_probit``: their sd (about 1 when calibrated).
        p_mean: two-sided p-value of the t test of a zero mean (NaN with fewer than 3 rows).
        ks_statistic, p_ks: Kolmogorov-Smirnov test of the uncensored PITs against U(0, 1).
        outside_band: fraction of rows outside the twins' central bands (alerts).
        flagged: a p-value below the Bonferroni-corrected ``alpha``.
    """

    observable: str
    n: int
    patients: int
    mean_probit: float
    sd_probit: float
    p_mean: float
    ks_statistic: float
    p_ks: float
    outside_band: float
    flagged: bool


@dataclass(frozen=True)
class DriftReport:
    """The drift test of one template (see the module docstring).

    Attributes:
        template, template_version: the template tested; ``twins``: patients pooled.
        alpha: family-wise significance level; ``observables``: one entry per scored observable.
        flagged: any observable flagged; ``message``: plain-language verdict.
    """

    template: str
    template_version: str
    twins: int
    alpha: float
    observables: tuple[ObservableDrift, ...]
    flagged: bool
    message: str


def _latest_per_patient(twins: Sequence[Twin]) -> list[Twin]:
    latest: dict[str, Twin] = {}
    for t in twins:
        if t.patient not in latest or t.version > latest[t.patient].version:
            latest[t.patient] = t
    return list(latest.values())


def _one(name: str, twins: list[Twin], tests: int, alpha: float) -> ObservableDrift:
    rows = [(t.patient, s) for t in twins for s in t.scores if s.observable == name]
    z = np.array([s.probit for _, s in rows])
    pit = np.array([s.percentile for _, s in rows if not s.censored])
    alerts = sum(1 for t in twins for a in t.alerts if a.observable == name)
    p_mean = float(ttest_1samp(z, 0.0).pvalue) if len(z) >= _MIN_ROWS else float("nan")
    ks = kstest(pit, "uniform") if len(pit) >= _MIN_ROWS else None
    p_ks = float(ks.pvalue) if ks is not None else float("nan")
    cut = alpha / tests
    flagged = bool(p_mean < cut or p_ks < cut)
    return ObservableDrift(
        name, len(z), len({p for p, _ in rows}), float(z.mean()), float(z.std(ddof=1)) if len(z) > 1 else float("nan"),
        p_mean, float(ks.statistic) if ks is not None else float("nan"), p_ks, alerts / len(z), flagged,
    )  # fmt: skip


def drift_signal(twins: Sequence[Twin], *, alpha: float = 0.01) -> DriftReport:
    """Pool every twin's scores by observable and test for systematic deviation.

    Args:
        twins: twins of one template (several versions of one patient count once: the newest).
        alpha: family-wise significance level.

    Raises:
        InputError: no twins, twins of different templates (or template versions), no scored
            measurement, or ``alpha`` outside (0, 1).
    """
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    if len(twins) == 0:
        raise InputError("drift_signal needs at least one twin")
    kinds = {(t.template_name, t.template_hash) for t in twins}
    if len(kinds) > 1:
        names = ", ".join(sorted(f"{n} ({h[:8]})" for n, h in kinds))
        raise InputError(f"drift_signal pools twins of one template; got {names}")
    pool = _latest_per_patient(twins)
    names = sorted({s.observable for t in pool for s in t.scores})
    if not names:
        raise InputError("no twin has absorbed a measurement after its personalisation: nothing to score")
    per = tuple(_one(name, pool, 2 * len(names), alpha) for name in names)
    flagged = [o for o in per if o.flagged]
    first = pool[0]
    if flagged:
        detail = "; ".join(f"{o.observable}: mean probit {o.mean_probit:+.2f} (p={o.p_mean:.2g}), KS p={o.p_ks:.2g}" for o in flagged)  # fmt: skip
        message = f"template {first.template_name} {first.template_version} deviates systematically ({detail}): improve the model"
    else:
        message = f"no systematic deviation of template {first.template_name} {first.template_version} at alpha {alpha:g}"
    return DriftReport(
        first.template_name, first.template_version, len(pool), alpha, per, bool(flagged), message
    )
