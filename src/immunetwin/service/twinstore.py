"""Twins as stored bytes, a cache of loaded twins and templates, and measurements as twin tables.

The twin package writes a twin to a file (:func:`~immunetwin.twin.save_twin`, a zip with its whole
history); it has no bytes API, so :func:`twin_to_bytes` writes to a temporary file and reads the bytes
back, and :func:`twin_from_bytes` does the reverse (``load_twin`` verifies every version's provenance
hash). A :class:`TwinCache` keeps templates (compiled solvers are cached per template object) and
recently loaded twin versions, so a forecast does not reload or recompile.
"""

from __future__ import annotations

import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from immunetwin.errors import InputError
from immunetwin.io.clinical import ObservableCatalogue, observable_catalogue
from immunetwin.storage import MeasurementRecord, PatientRecord, TwinVersionRecord
from immunetwin.templates import Template
from immunetwin.twin import Twin, load_twin, save_twin

__all__ = ["TwinCache", "measurement_table", "new_rows", "twin_from_bytes", "twin_to_bytes"]


def twin_to_bytes(twin: Twin) -> bytes:
    """The bytes of :func:`~immunetwin.twin.save_twin`'s file (written to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="immunetwin-twin-") as folder:
        return save_twin(twin, Path(folder) / "twin.zip").read_bytes()


def twin_from_bytes(blob: bytes, template: Template | None = None) -> Twin:
    """The twin in ``blob`` (checked by :func:`~immunetwin.twin.load_twin`)."""
    with tempfile.TemporaryDirectory(prefix="immunetwin-twin-") as folder:
        path = Path(folder) / "twin.zip"
        path.write_bytes(blob)
        return load_twin(path, template=template)


#: Loading a template runs antimony and libsbml, which are not thread-safe: one load at a time per
#: process (a server's request threads and an in-process Dask worker's threads share it).
_TEMPLATE_LOAD = threading.Lock()


class TwinCache:
    """Templates by name (with their observable catalogues) and the most recently used twin versions
    (thread-safe)."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._templates: dict[str, Template] = {}
        self._catalogues: dict[str, ObservableCatalogue] = {}
        self._twins: OrderedDict[tuple[int, int, str], Twin] = OrderedDict()

    def template(self, name: str) -> Template:
        """The shipped template ``name`` (loaded once; raises ``UnknownIdError`` for an unknown name)."""
        with self._lock:
            found = self._templates.get(name)
        if found is not None:
            return found
        from immunetwin.twin.personalise import resolve_template

        with _TEMPLATE_LOAD:
            with self._lock:
                found = self._templates.get(name)
            loaded = found if found is not None else resolve_template(name)
        with self._lock:
            return self._templates.setdefault(name, loaded)

    def catalogue(self, name: str) -> ObservableCatalogue:
        """The observable catalogue (LOINC codes, units) of the template ``name``."""
        with self._lock:
            found = self._catalogues.get(name)
        if found is None:
            found = observable_catalogue(self.template(name))
            with self._lock:
                self._catalogues[name] = found
        return found

    def twin(self, version: TwinVersionRecord, template: str, read: Callable[[], bytes]) -> Twin:
        """The twin of a stored version; ``read()`` gives its bytes when it is not cached."""
        key = (version.twin_id, version.version, version.blob_sha256)
        with self._lock:
            if key in self._twins:
                self._twins.move_to_end(key)
                return self._twins[key]
        twin = twin_from_bytes(read(), self.template(template))
        self.remember(version, twin)
        return twin

    def remember(self, version: TwinVersionRecord, twin: Twin) -> None:
        """Keep ``twin`` as the loaded form of ``version``."""
        with self._lock:
            self._twins[(version.twin_id, version.version, version.blob_sha256)] = twin
            while len(self._twins) > self._size:
                self._twins.popitem(last=False)


def measurement_table(
    patient: PatientRecord, rows: Sequence[MeasurementRecord], template: Template
) -> pd.DataFrame:
    """The patient's measurements of the template's observables as a twin table: observable, time
    (days since the patient's reference time), value and unit (the observable's), censored.

    Raises:
        InputError: the patient has no reference time (day 0), or no measurement of the template.
    """
    if patient.reference_time is None:
        raise InputError(
            f"patient {patient.pseudonym!r} has no reference time (day 0, e.g. infection or symptom onset):"
            " set it before building a twin"
        )
    names = set(template.metadata.observables)
    usable = [
        r for r in rows if r.observable in names and r.day is not None and r.observable_value is not None
    ]
    if not usable:
        raise InputError(
            f"patient {patient.pseudonym!r} has no measurement of {', '.join(sorted(names))}"
            f" (observables of template '{template.name}')"
        )
    return pd.DataFrame({
        "observable": [r.observable for r in usable],
        "time": [float(r.day) for r in usable],  # type: ignore[arg-type]
        "value": [float(r.observable_value) for r in usable],  # type: ignore[arg-type]
        "unit": [r.observable_unit for r in usable],
        "censored": [bool(r.censored) for r in usable],
    })  # fmt: skip


def _slot(observable: str, time: float) -> tuple[str, float]:
    return observable, round(float(time), 6)


def new_rows(twin: Twin, table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows of ``table`` the twin has not seen, and how many unseen rows are too early to absorb.

    A row is seen when the twin holds as many rows of its observable at its time (to a microday).
    Unseen rows before the twin's reference time cannot be assimilated (personalise again for them).
    """
    seen = Counter(
        _slot(o, t) for o, t in zip(twin.observations.observable, twin.observations.time, strict=True)
    )
    keep: list[int] = []
    for i, (o, t) in enumerate(zip(table["observable"], table["time"], strict=True)):
        slot = _slot(o, t)
        if seen[slot] > 0:
            seen[slot] -= 1
        else:
            keep.append(i)
    unseen = table.iloc[keep]
    early = unseen["time"] < twin.reference_time
    return unseen[~early].reset_index(drop=True), int(early.sum())
