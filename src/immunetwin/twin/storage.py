"""One file per twin, holding its whole history: a zip of ``twin.json`` and NumPy arrays.

Layout: ``twin.json`` lists every version's record (oldest first; see :meth:`Twin.record`), and
``v<k>/<array>.npy`` holds version ``k``'s particle arrays (``allow_pickle=False``). The file is
written to a temporary file in the same folder and moved into place (``os.replace``), so a crash
never leaves half a twin under the target name. Loading recomputes every version's provenance hash
from what the file holds and refuses a file where any differs (changed after it was written), a file
that is not a complete zip (truncated), and a twin whose template has changed since it was built.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from immunetwin.errors import InputError
from immunetwin.templates import Template, load_template
from immunetwin.twin.belief import Belief
from immunetwin.twin.observations import Observations
from immunetwin.twin.scores import Alert, Score
from immunetwin.twin.twin import Step, Twin, TwinSettings, template_hash

__all__ = ["load_twin", "save_twin"]

_MANIFEST = "twin.json"
_FORMAT = "immunetwin-twin-file/1"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def save_twin(twin: Twin, path: str | Path) -> Path:
    """Write ``twin`` and its whole history to ``path`` (a zip; see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name such as twin.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    history = twin.history
    manifest = {"format": _FORMAT, "versions": [t.record() for t in history]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(_MANIFEST, json.dumps(manifest, indent=1))
                for t in history:
                    for name, a in t.belief.arrays().items():
                        zf.writestr(f"v{t.version}/{name}.npy", _npy(a))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _belief(rec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Belief:
    return Belief(
        parameter_ids=tuple(rec["parameter_ids"]), scales=tuple(rec["scales"]), theta=arrays["theta"],
        log_weights=arrays["log_weights"], log_likelihood=arrays["log_likelihood"],
        log_prior=arrays["log_prior"], state_ids=tuple(rec["state_ids"]), states=arrays["states"],
        method=rec["method"], diagnostics=rec["diagnostics"],
    )  # fmt: skip


def _twin(
    rec: dict[str, Any], arrays: dict[str, np.ndarray], template: Template, previous: Twin | None
) -> Twin:
    step = rec["step"]
    return Twin(
        template=template, template_name=rec["template"]["name"], template_version=rec["template"]["version"],
        template_hash=rec["template"]["hash"], patient=rec["patient"], version=int(rec["version"]),
        reference_time=float(rec["reference_time"]), observations=Observations.from_records(rec["observations"]),
        belief=_belief(rec["belief"], arrays), alerts=tuple(Alert(**a) for a in rec["alerts"]),
        scores=tuple(Score(**s) for s in rec["scores"]), settings=TwinSettings.from_record(rec["settings"]),
        step=Step(**{**step, "key": tuple(step["key"])}), immunetwin_version=rec["immunetwin_version"],
        previous=previous, provenance=rec["provenance"],
    )  # fmt: skip


def _read(path: Path) -> tuple[dict[str, Any], zipfile.ZipFile]:
    if not path.is_file():
        raise InputError(f"twin file {path}: not found")
    try:
        zf = zipfile.ZipFile(path)
        manifest = json.loads(zf.read(_MANIFEST))
    except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, EOFError, OSError) as err:
        raise InputError(f"twin file {path}: not a twin file, or truncated ({type(err).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT or not manifest.get("versions"):
        raise InputError(f"twin file {path}: not a twin file (format {manifest.get('format') if isinstance(manifest, dict) else '?'})")  # fmt: skip
    return manifest, zf


def _template_for(rec: dict[str, Any], template: Template | None, path: Path) -> Template:
    tpl = template if template is not None else load_template(rec["template"]["name"])
    if template_hash(tpl) != rec["template"]["hash"]:
        raise InputError(
            f"twin file {path}: it was built with template '{rec['template']['name']}'"
            f" {rec['template']['version']} ({rec['template']['hash'][:12]}), which differs from the template"
            f" loaded now ({template_hash(tpl)[:12]}); personalise a new twin"
        )
    return tpl


def load_twin(path: str | Path, *, template: Template | None = None) -> Twin:
    """Read a twin (its newest version, with the whole history behind it) and verify it.

    Args:
        path: a file written by :func:`save_twin`.
        template: the template object to attach (default: the shipped template of the stored name);
            it must be the one the twin was built with (same hash).

    Raises:
        InputError: missing, truncated or foreign file; a version whose provenance does not match its
            contents (the file was changed); a different template.
    """
    path = Path(path)
    manifest, zf = _read(path)
    with zf:
        records = manifest["versions"]
        tpl = _template_for(records[0], template, path)
        twin: Twin | None = None
        for rec in records:
            try:
                arrays = {n: np.load(io.BytesIO(zf.read(f"v{rec['version']}/{n}.npy")), allow_pickle=False)
                          for n in ("theta", "log_weights", "log_likelihood", "log_prior", "states")}  # fmt: skip
                twin = _twin(rec, arrays, tpl, twin)
            except (
                KeyError,
                ValueError,
                TypeError,
                EOFError,
                zipfile.BadZipFile,
                zlib.error,
                OSError,
            ) as err:
                raise InputError(f"twin file {path}: version {rec.get('version', '?')} is incomplete or damaged ({type(err).__name__}: {err})") from None  # fmt: skip
            if twin.compute_provenance() != twin.provenance:
                raise InputError(
                    f"twin file {path}: version {twin.version} fails its provenance check (its contents"
                    " were changed after it was written); the file is refused"
                )
    assert twin is not None
    return twin
