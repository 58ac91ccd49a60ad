"""The twin: an immutable, versioned value linked to one patient and one template.

A :class:`Twin` holds what it has seen (:class:`~immunetwin.twin.observations.Observations`), what it
believes (:class:`~immunetwin.twin.belief.Belief`), the alerts it raised, its settings and the twin it
came from (``previous``). Every lifecycle verb (:func:`~immunetwin.twin.personalise`,
:func:`~immunetwin.twin.assimilate`) returns a new version; nothing is mutated, so ``twin.history``
shows what the twin believed at every step and ``twin.as_of(day)`` what it believed on a past day.

Provenance. Each version's ``provenance`` is a sha256 over the template (its SBML and metadata
file), the measurements, the settings, the belief (its particle arrays included), the alerts and
scores, the step that made it (verb, random key, time), the immunetwin version, and the previous
version's provenance: a hash chain, so changing any past version changes every later hash.
:meth:`Twin.verify` recomputes it; :func:`~immunetwin.twin.load_twin` refuses a file that fails.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from immunetwin.engines.integrate import Controls
from immunetwin.errors import InputError
from immunetwin.runtime import key_data
from immunetwin.templates import Template
from immunetwin.twin.belief import Belief
from immunetwin.twin.observations import Observations
from immunetwin.twin.scores import Alert, Score

__all__ = ["LaplaceImportance", "Step", "Tempering", "Twin", "TwinSettings", "template_hash"]

_FORMAT = "immunetwin-twin/1"


@dataclass(frozen=True)
class Tempering:
    """Personalise by adaptive likelihood tempering from the prior (an SMC sampler; see
    :mod:`immunetwin.twin.tempering`): no per-data-set compilation, robust to several modes.

    Attributes:
        ess_fraction: each tempering step keeps this fraction of N as effective sample size.
        max_stages: give up after this many steps.
    """

    ess_fraction: float = 0.5
    max_stages: int = 200

    def __post_init__(self) -> None:
        if not 0.0 < self.ess_fraction < 1.0 or self.max_stages < 1:
            raise InputError(f"Tempering needs 0 < ess_fraction < 1 and max_stages >= 1, got {self}")


@dataclass(frozen=True)
class LaplaceImportance:
    """Personalise by multi-start MAP, a Student-t proposal at the Laplace approximation and
    PSIS-smoothed importance weights (see :mod:`immunetwin.twin.personalise`).

    Attributes:
        starts: multi-start MAP optimisations.
        proposal_df: degrees of freedom of the Student-t proposal.
    """

    starts: int = 8
    proposal_df: float = 5.0

    def __post_init__(self) -> None:
        if self.starts < 1 or not self.proposal_df > 0:
            raise InputError(f"LaplaceImportance needs starts >= 1 and proposal_df > 0, got {self}")


_METHODS = {"Tempering": Tempering, "LaplaceImportance": LaplaceImportance}


@dataclass(frozen=True)
class TwinSettings:
    """How a twin personalises and updates itself (kept on the twin and in its provenance).

    Attributes:
        personalisation: the method of :func:`~immunetwin.twin.personalise` and of the fallback
            re-personalisation (:class:`Tempering` or :class:`LaplaceImportance`).
        moves: Metropolis-Hastings sweeps after each resampling.
        resample_below: resample and move when ESS/N falls below this.
        collapse_below: personalise again on all data when ESS/N falls below this...
        min_acceptance: ...or when the moves accept fewer proposals than this.
        band: central predictive band; a measurement outside it raises an alert.
        controls: solver tolerances of the particle simulations. The default (rtol 1e-4, atol 1e-7)
            moved a 28-day forecast of a 1,000-particle ``viral_immune`` twin by at most 3e-5
            (relative; 2e-4 log10 in viral load) from one at rtol 1e-7, and ran 2.5x faster than at
            rtol 1e-5: far below the measurement noise (0.5 log10).
    """

    personalisation: Tempering | LaplaceImportance = field(default_factory=Tempering)
    moves: int = 5
    resample_below: float = 0.5
    collapse_below: float = 0.05
    min_acceptance: float = 0.01
    band: float = 0.95
    controls: Controls = Controls(rtol=1e-4, atol=1e-7)

    def __post_init__(self) -> None:
        if not isinstance(self.personalisation, Tempering | LaplaceImportance):
            raise InputError(f"settings: personalisation must be Tempering() or LaplaceImportance(), got {self.personalisation!r}")  # fmt: skip
        if self.moves < 0:
            raise InputError(f"settings: moves must be >= 0, got {self.moves}")
        for name in ("resample_below", "collapse_below", "min_acceptance", "band"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise InputError(f"settings: {name} must lie in (0, 1), got {getattr(self, name)}")
        if self.collapse_below > self.resample_below:
            raise InputError("settings: collapse_below must not exceed resample_below")

    def record(self) -> dict[str, Any]:
        rec = dataclasses.asdict(self)
        rec["personalisation"] = {"kind": type(self.personalisation).__name__, **rec["personalisation"]}
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> TwinSettings:
        method = dict(rec["personalisation"])
        kind = _METHODS[method.pop("kind")]
        return cls(**{**rec, "personalisation": kind(**method), "controls": Controls(**rec["controls"])})


@dataclass(frozen=True)
class Step:
    """What made a twin version: the verb, its random key, rows absorbed, when and how long."""

    verb: str
    key: tuple[int, ...]
    rows: int
    created: str
    seconds: float
    note: str = ""

    @classmethod
    def now(cls, verb: str, key: Any, rows: int, seconds: float, note: str = "") -> Step:
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return cls(verb, key_data(key), rows, created, round(seconds, 6), note)


def template_hash(template: Template) -> str:
    """sha256 of the template's SBML and its metadata file."""
    h = hashlib.sha256(template.sbml.encode())
    h.update((template.path / "template.yaml").read_bytes())
    return h.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, eq=False)
class Twin:
    """One version of a patient's twin (see the module docstring). Build with
    :func:`~immunetwin.twin.personalise`; update with :func:`~immunetwin.twin.assimilate`.

    Attributes:
        template: the template object (not stored in files; reloaded by name and checked by hash).
        template_name, template_version, template_hash: which template, exactly.
        patient: patient id.
        version: 1 for the first personalisation, +1 per update.
        reference_time: days from the twin's origin (e.g. infection) up to which it has seen data;
            new measurements must not be earlier.
        observations: every measurement seen (frozen).
        belief: weighted parameter particles and latent states at ``reference_time``.
        alerts: every alert raised so far (accumulated over versions).
        scores: every absorbed measurement's predictive percentile (accumulated).
        settings: how it personalises and updates.
        step: what made this version.
        immunetwin_version: the code version that made it.
        previous: the version before (None for version 1).
        provenance: sha256 hash chain (see the module docstring).
    """

    template: Template = field(repr=False)
    template_name: str
    template_version: str
    template_hash: str = field(repr=False)
    patient: str
    version: int
    reference_time: float
    observations: Observations = field(repr=False)
    belief: Belief = field(repr=False)
    alerts: tuple[Alert, ...] = field(repr=False)
    scores: tuple[Score, ...] = field(repr=False)
    settings: TwinSettings = field(repr=False)
    step: Step = field(repr=False)
    immunetwin_version: str = field(repr=False)
    previous: Twin | None = field(repr=False)
    provenance: str = ""

    @classmethod
    def create(cls, **fields: Any) -> Twin:
        """A twin with its provenance computed from ``fields``."""
        draft = cls(**{**fields, "provenance": ""})
        return dataclasses.replace(draft, provenance=draft.compute_provenance())

    def record(self) -> dict[str, Any]:
        """Every field but the arrays, the template object and ``previous``, as plain values."""
        return {
            "format": _FORMAT,
            "template": {
                "name": self.template_name,
                "version": self.template_version,
                "hash": self.template_hash,
            },
            "patient": self.patient,
            "version": self.version,
            "reference_time": self.reference_time,
            "observations": self.observations.records(),
            "belief": self.belief.record(),
            "alerts": [dataclasses.asdict(a) for a in self.alerts],
            "scores": [dataclasses.asdict(s) for s in self.scores],
            "settings": self.settings.record(),
            "step": dataclasses.asdict(self.step),
            "immunetwin_version": self.immunetwin_version,
            "previous": self.previous.provenance if self.previous is not None else "",
            "provenance": self.provenance,
        }

    def compute_provenance(self) -> str:
        """sha256 over the record (without ``provenance``), the belief's arrays and the previous hash."""
        rec = self.record()
        rec.pop("provenance")
        h = hashlib.sha256(_FORMAT.encode())
        h.update(_canonical(rec))
        h.update(self.belief.digest().encode())
        return h.hexdigest()

    def verify(self) -> bool:
        """Whether every version's provenance matches its contents (the whole chain)."""
        return all(t.provenance == t.compute_provenance() for t in self.history)

    # -- history ----------------------------------------------------------------------------------

    @property
    def history(self) -> tuple[Twin, ...]:
        """Every version, oldest first (this one last)."""
        chain: list[Twin] = []
        twin: Twin | None = self
        while twin is not None:
            chain.append(twin)
            twin = twin.previous
        return tuple(reversed(chain))

    def as_of(self, day: float) -> Twin:
        """The version that was current on ``day`` (model days): the newest whose reference time is
        at or before ``day``.

        Raises:
            InputError: ``day`` is before the first version's reference time.
        """
        for twin in reversed(self.history):
            if twin.reference_time <= day:
                return twin
        first = self.history[0].reference_time
        raise InputError(f"twin of '{self.patient}' did not exist on day {day:g}: its first version saw data up to day {first:g}")  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Twin(patient={self.patient!r}, template={self.template_name!r} {self.template_version},"
            f" version={self.version}, reference_time={self.reference_time:g}, measurements={len(self.observations)},"
            f" particles={self.belief.size}, ess={self.belief.ess:.0f}, alerts={len(self.alerts)},"
            f" provenance={self.provenance[:12]})"
        )
