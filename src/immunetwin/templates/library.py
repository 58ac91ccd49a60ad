"""The template library: find, load and validate templates; derive schedules, observables, outcomes.

A template is a folder ``<name>/`` holding ``model.ant`` (Antimony, model named ``<name>``),
``template.yaml`` (metadata, see :mod:`immunetwin.templates.metadata`) and ``README.md``.
:func:`load_template` checks that the metadata and the model agree: every state and free parameter of the
model is described, every parameter value equals the model's, every expression uses model ids, and every
intervention targets a parameter (inputs) or a state (doses).

Search roots are explicit: ``root=None`` means the folders shipped in this package; the CLI adds the
folders listed in ``IMMUNETWIN_TEMPLATES_PATH`` at call time.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sympy
import yaml

from immunetwin.errors import InputError, TemplateError, UnknownIdError
from immunetwin.io.antimony import antimony_to_sbml
from immunetwin.spec.schedule import Bolus, Input, Schedule
from immunetwin.templates.graph import ModelStructure, read_structure
from immunetwin.templates.metadata import (
    DoseSeries,
    OutcomeInfo,
    Prior,
    Ref,
    TemplateMetadata,
    parse_expression,
    parse_metadata,
)

__all__ = [
    "Template",
    "TrajectoryLike",
    "builtin_root",
    "list_templates",
    "load_template",
    "petab_prior",
]

Roots = str | Path | Sequence[str | Path] | None


class TrajectoryLike(Protocol):
    """What outcomes and observables need from a simulation result."""

    @property
    def times(self) -> np.ndarray: ...

    def __getitem__(self, ident: str) -> Any: ...


def builtin_root() -> Path:
    """The folder holding the templates shipped with immunetwin."""
    return Path(__file__).resolve().parent


def _roots(root: Roots) -> tuple[Path, ...]:
    if root is None:
        return (builtin_root(),)
    if isinstance(root, str | Path):
        return (Path(root),)
    return tuple(Path(r) for r in root)


def list_templates(*, root: Roots = None) -> tuple[str, ...]:
    """Names of the templates (folders with a ``template.yaml``) under the search roots, sorted."""
    names = {
        p.name
        for r in _roots(root)
        if r.is_dir()
        for p in r.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and (p / "template.yaml").is_file()
    }
    return tuple(sorted(names))


def _find(name: str, root: Roots) -> Path:
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise TemplateError(f"'{name}' is not a template name (letters, digits, underscores)")
    for r in _roots(root):
        if (r / name / "template.yaml").is_file():
            return r / name
    known = ", ".join(list_templates(root=root)) or "none"
    raise TemplateError(f"unknown template '{name}' (known: {known})")


def _read(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise TemplateError(f"{where}: cannot read ({err.strerror})") from None


def load_template(name: str, *, root: Roots = None) -> Template:
    """Load and validate the template ``name`` from the first search root that has it.

    Args:
        name: the template's folder name, e.g. ``"viral_tiv"``.
        root: a folder or folders to search; ``None`` searches the templates shipped with immunetwin.

    Raises:
        TemplateError: unknown name (the message lists the known ones), or invalid metadata.
        MalformedModelError: ``model.ant`` is not valid Antimony.
    """
    folder = _find(name, root)
    where = f"{name}/template.yaml"
    try:
        # libyaml's parser where PyYAML has it (the same safe loading, ~10x faster than the Python one)
        raw = yaml.load(
            _read(folder / "template.yaml", where), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise TemplateError(f"{where}:{line} invalid YAML ({getattr(err, 'problem', err)})") from None
    metadata = parse_metadata(raw, where)
    if metadata.name != name:
        raise TemplateError(f"{where}: name: '{metadata.name}' differs from the folder name '{name}'")
    text = _read(folder / "model.ant", f"{name}/model.ant")
    sbml = antimony_to_sbml(text, source=f"{name}/model.ant")
    structure = read_structure(sbml, f"{name}/model.ant")
    if structure.id != name:
        raise TemplateError(
            f"{name}/model.ant: the model is named '{structure.id}'; it must be named '{name}'"
        )
    check_against_model(metadata, structure, where)
    return Template(name, folder, metadata, text, sbml, structure)


def _ids_in(at: str, text: str, known: frozenset[str]) -> None:
    unknown = sorted(s.name for s in parse_expression(text).free_symbols if s.name not in known)
    if unknown:
        raise TemplateError(f"{at}: '{unknown[0]}' is not an id of model.ant")


def check_against_model(meta: TemplateMetadata, model: ModelStructure, where: str) -> None:
    """Check that metadata and model agree (states, parameter values, expressions, targets).

    Raises:
        TemplateError: the first disagreement, naming ``where`` and the key path.
    """
    for sid in model.states:
        if sid not in meta.states:
            raise TemplateError(f"{where}: states: state '{sid}' of model.ant is not described")
    for sid in meta.states:
        if sid not in model.states:
            raise TemplateError(
                f"{where}: states.{sid}: not a state (species or rate-rule variable) of model.ant"
            )
    for pid in model.parameters:
        if pid not in meta.parameters:
            raise TemplateError(f"{where}: parameters: parameter '{pid}' of model.ant is not described")
    for pid, info in meta.parameters.items():
        actual = model.parameters.get(pid, model.compartments.get(pid))
        if actual is None:
            raise TemplateError(f"{where}: parameters.{pid}: not a constant parameter of model.ant")
        if not math.isclose(info.value, actual, rel_tol=1e-9, abs_tol=0.0):
            raise TemplateError(
                f"{where}: parameters.{pid}.value: {info.value:g} but model.ant says {actual:g}"
            )
    ids = model.ids | {"time"}
    for oid, obs in meta.observables.items():
        _ids_in(f"{where}: observables.{oid}.formula", obs.formula, ids)
    for oid, out in meta.outcomes.items():
        _ids_in(f"{where}: outcomes.{oid}.expression", out.expression, ids)
    for iid, spec in meta.interventions.items():
        for k, w in enumerate(spec.inputs):
            if w.target not in model.parameters:
                at = f"{where}: interventions.{iid}.inputs.{k}.target"
                raise TemplateError(f"{at}: '{w.target}' is not a constant parameter of model.ant")
        for k, d in enumerate(spec.doses):
            if d.target not in model.states:
                at = f"{where}: interventions.{iid}.doses.{k}.target"
                raise TemplateError(f"{at}: '{d.target}' is not a state of model.ant")


# ---------------------------------------------------------------------------------- trajectory maths


@functools.lru_cache(maxsize=256)
def _numpy_function(expr: sympy.Expr) -> tuple[tuple[str, ...], Callable[..., Any]]:
    """The names ``expr`` reads (sorted) and its NumPy function of them, lambdified once (a
    ``lambdify`` costs about a millisecond: a trial chunk evaluates every outcome's expression)."""
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    return tuple(s.name for s in symbols), sympy.lambdify(symbols, expr, modules="numpy")


def _evaluate(expr: sympy.Expr, traj: TrajectoryLike) -> np.ndarray:
    """An expression over a trajectory, shape ``(T,)`` or ``(B, T)`` like its states."""
    times = np.asarray(traj.times, dtype=float)
    names, function = _numpy_function(expr)
    args = [times if name == "time" else np.asarray(traj[name], dtype=float) for name in names]
    shape = max((a.shape for a in args), key=len, default=times.shape)
    args = [a[..., None] if a.shape and a.shape == shape[:-1] else a for a in args]
    with np.errstate(all="ignore"):
        out = function(*args)
    return np.broadcast_to(np.asarray(out, dtype=float), shape)


def _time_below(values: np.ndarray, times: np.ndarray, threshold: float) -> np.ndarray:
    """First time at/after the maximum when ``values`` drops below ``threshold`` (linear interpolation
    between outputs), along the last axis; ``inf`` if it never does. Vectorised over leading axes."""
    v = np.asarray(values, dtype=float)
    top = np.argmax(v, axis=-1)[..., None]
    idx = np.arange(v.shape[-1])
    below = (v < threshold) & (idx >= top)
    found = below.any(axis=-1)
    j = np.argmax(below, axis=-1)[..., None]
    jm = np.maximum(j - 1, 0)
    v0, v1 = np.take_along_axis(v, jm, -1)[..., 0], np.take_along_axis(v, j, -1)[..., 0]
    t0, t1 = times[jm[..., 0]], times[j[..., 0]]
    with np.errstate(all="ignore"):
        crossing = t0 + (threshold - v0) * (t1 - t0) / (v1 - v0)
    out = np.where(j[..., 0] == top[..., 0], times[j[..., 0]], crossing)
    return np.where(found, out, math.inf)


def _reduce(info: OutcomeInfo, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """One outcome per trajectory along the last (time) axis; rows containing NaN give NaN."""
    thr = info.threshold if info.threshold is not None else math.nan
    if info.kind == "max":
        out = np.max(values, axis=-1)
    elif info.kind == "min":
        out = np.min(values, axis=-1)
    elif info.kind == "final":
        out = values[..., -1]
    elif info.kind == "time_of_max":
        out = times[np.argmax(values, axis=-1)]
    elif info.kind == "auc":
        out = np.trapezoid(values, times, axis=-1)
    elif info.kind == "exceeds":
        out = (np.max(values, axis=-1) > thr).astype(float)
    else:  # time_below
        out = _time_below(values, times, thr)
    return np.where(np.isnan(values).any(axis=-1), np.nan, out)


def _known(kind: str, names: Sequence[str], table: Mapping[str, Any]) -> tuple[str, ...]:
    """``names``, each an id of ``table``; the first that is not raises :class:`UnknownIdError`."""
    for k in names:
        if k not in table:
            raise UnknownIdError(kind, k, tuple(table))
    return tuple(names)


def _failed(traj: TrajectoryLike, batch: tuple[int, ...]) -> np.ndarray:
    status = np.asarray(getattr(traj, "status", "success"))
    return np.broadcast_to(status != "success", batch)


# ------------------------------------------------------------------------------------------ template


@dataclass(frozen=True, eq=False)
class Template:
    """A validated template: metadata, the Antimony text, its SBML, and the compiled model on demand.

    Templates compare and hash by identity, so they can key caches.
    """

    name: str
    path: Path
    metadata: TemplateMetadata
    antimony: str = field(repr=False)
    sbml: str = field(repr=False)
    structure: ModelStructure = field(repr=False, compare=False)

    @functools.cached_property
    def model(self) -> Any:
        """The compiled engine model (``immunetwin.load_model(self.sbml)``), built on first access."""
        from immunetwin import load_model

        return load_model(self.sbml)

    def intervention(self, name: str, /, **arguments: float) -> Schedule:
        """The dosing schedule of intervention ``name``; keyword arguments override its defaults.

        Input windows become ``Input.window(target, start, start + duration, value, off=model value)``;
        doses become one :class:`Bolus` per time.

        Raises:
            TemplateError: unknown intervention or argument.
            InputError: an argument is not a finite number, or a window has no positive duration.
        """
        spec = self.metadata.interventions.get(name)
        if spec is None:
            known = ", ".join(self.metadata.interventions) or "none"
            raise TemplateError(f"{self.name}: unknown intervention '{name}' (known: {known})")
        extra = [k for k in arguments if k not in spec.arguments]
        if extra:
            known = ", ".join(spec.arguments) or "none"
            raise TemplateError(
                f"{self.name}: intervention '{name}' has no argument '{extra[0]}' (known: {known})"
            )
        args = {**spec.arguments, **{k: _finite(name, k, v) for k, v in arguments.items()}}

        def value(ref: Ref) -> float:
            return args[ref] if isinstance(ref, str) else ref

        inputs = tuple(
            Input.window(w.target, value(w.start), value(w.start) + value(w.duration), value(w.value),
                         off=self.structure.parameters[w.target])
            for w in spec.inputs
        )  # fmt: skip
        doses = tuple(
            Bolus(d.target, t, value(d.amount)) for d in spec.doses for t in _dose_times(name, d.times, value)
        )
        return Schedule(doses, inputs)

    @functools.cached_property
    def _expressions(self) -> dict[str, sympy.Expr]:
        out = {f"obs:{k}": parse_expression(v.formula) for k, v in self.metadata.observables.items()}
        return out | {f"out:{k}": parse_expression(v.expression) for k, v in self.metadata.outcomes.items()}

    def required_ids(
        self, observables: Sequence[str] = (), outcomes: Sequence[str] | None = None
    ) -> tuple[str, ...]:
        """Model ids that the outcome metrics (every one, or those named in ``outcomes``) and the
        named ``observables`` read (for ``simulate_cohort(outputs=...)``: return only those)."""
        wanted = (
            self.metadata.outcomes
            if outcomes is None
            else _known("outcome metric", outcomes, self.metadata.outcomes)
        )
        keys = [f"out:{k}" for k in wanted] + [f"obs:{k}" for k in observables]
        names = {s.name for k in keys for s in self._expressions[k].free_symbols} - {"time"}
        return tuple(sorted(names))

    def observe(self, traj: TrajectoryLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every observable's formula (or those in ``names``) evaluated over a trajectory (or a cohort:
        shape ``(B, T)``)."""
        keys = (
            self.metadata.observables
            if names is None
            else _known("observable", names, self.metadata.observables)
        )
        return {k: _evaluate(self._expressions[f"obs:{k}"], traj) for k in keys}

    def outcomes(self, traj: TrajectoryLike, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Every outcome metric of a trajectory (or those in ``names``): a float each, or an array of
        shape ``(B,)`` for a cohort.

        Kinds: ``max``, ``min``, ``final``, ``time_of_max``, ``auc`` (trapezoid rule over the trajectory's
        times), ``time_below`` (first time at/after the maximum when the expression drops below the
        threshold, interpolated linearly; ``inf`` if never) and ``exceeds`` (1.0 if the maximum is above
        the threshold, else 0.0). A trajectory whose status is not ``"success"`` gives NaN.
        """
        times = np.asarray(traj.times, dtype=float)
        result: dict[str, Any] = {}
        keys = (
            self.metadata.outcomes
            if names is None
            else _known("outcome metric", names, self.metadata.outcomes)
        )
        for key in keys:
            info = self.metadata.outcomes[key]
            values = _evaluate(self._expressions[f"out:{key}"], traj)
            out = _reduce(info, values, times)
            out = np.where(_failed(traj, out.shape), np.nan, out)
            result[key] = float(out) if out.ndim == 0 else out
        return result


def _dose_times(intervention: str, times: tuple[Ref, ...] | DoseSeries, value: Any) -> tuple[float, ...]:
    """Dose times of a list or of a regular series ``start + k * every``, ``k = 0 .. count - 1``."""
    if not isinstance(times, DoseSeries):
        return tuple(value(t) for t in times)
    start, every, count = value(times.start), value(times.every), value(times.count)
    if every <= 0 or count < 1 or count != int(count):
        raise InputError(f"intervention '{intervention}': doses need every > 0 and a whole count >= 1, "
                         f"got every={every:g}, count={count:g}")  # fmt: skip
    return tuple(start + k * every for k in range(int(count)))


def _finite(intervention: str, key: str, raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"intervention '{intervention}': argument {key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"intervention '{intervention}': argument {key}={value} must be finite")
    return value


# -------------------------------------------------------------------------------------------- export

_PETAB_COLUMNS = {
    "measurements": ("observableId", "simulationConditionId", "measurement", "time"),
    "parameters": (
        "parameterId", "parameterName", "parameterScale", "lowerBound", "upperBound", "nominalValue",
        "estimate", "objectivePriorType", "objectivePriorParameters",
    ),
    "observables": (
        "observableId", "observableName", "observableFormula", "observableTransformation",
        "noiseFormula", "noiseDistribution",
    ),
}  # fmt: skip
_PROBLEM_YAML = """\
format_version: 1
parameter_file: parameters.tsv
problems:
  - sbml_files: [model.xml]
    condition_files: [conditions.tsv]
    measurement_files: [measurements.tsv]
    observable_files: [observables.tsv]
"""


def _tsv(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x: object) -> str:
        return repr(float(x)) if isinstance(x, float | np.floating) else str(x)

    return "\n".join("\t".join(cell(x) for x in row) for row in (columns, *rows)) + "\n"


def petab_prior(prior: Prior) -> tuple[str, str]:
    """PEtab v1 objective prior type and parameters; ``logNormal`` takes the mean and sd of ``ln x``."""
    values = tuple(prior.parameters.values())  # in PRIOR_FORMS order
    if prior.distribution == "lognormal":
        values = (math.log(values[0]), values[1])
    kind = {"lognormal": "logNormal"}.get(prior.distribution, prior.distribution)
    return kind, ";".join(repr(float(x)) for x in values)


def observable_ids(template: Template) -> dict[str, str]:
    """PEtab observable id of each observable: its name, or ``obs_<name>`` where that is a model id."""
    ids = template.structure.ids
    return {k: f"obs_{k}" if k in ids else k for k in template.metadata.observables}


def _petab_files(template: Template, synthetic: TrajectoryLike | None, seed: int | None) -> dict[str, str]:
    meta = template.metadata
    rows = []
    for pid, info in meta.parameters.items():
        if pid not in template.structure.parameters:
            continue  # compartment sizes are not PEtab parameters
        log = info.estimate and info.value > 0 and info.range[0] > 0
        prior = petab_prior(info.prior) if info.estimate else ("", "")
        rows.append((pid, pid, "log10" if log else "lin", info.range[0], info.range[1], info.value,
                     int(info.estimate), *prior))  # fmt: skip
    oids = observable_ids(template)
    obs_rows = [
        (oids[k], f"{k} [{o.unit}]", o.formula, "lin", repr(o.noise.sigma), o.noise.model)
        for k, o in meta.observables.items()
    ]
    return {
        "problem.yaml": _PROBLEM_YAML,
        "model.xml": template.sbml,
        "parameters.tsv": _tsv(_PETAB_COLUMNS["parameters"], rows),
        "observables.tsv": _tsv(_PETAB_COLUMNS["observables"], obs_rows),
        "conditions.tsv": _tsv(("conditionId", "conditionName"), [("default", "default")]),
        "measurements.tsv": _tsv(_PETAB_COLUMNS["measurements"], _measurements(template, synthetic, seed)),
    }


def _measurements(template: Template, traj: TrajectoryLike | None, seed: int | None) -> list[tuple]:
    """Rows of a measurement table from a trajectory: noise-free, or with noise drawn from ``seed``."""
    if traj is None:
        return []
    times = np.asarray(traj.times, dtype=float)
    rng = None if seed is None else np.random.default_rng(seed)
    rows = []
    oids = observable_ids(template)
    for key, values in template.observe(traj).items():
        if values.shape != times.shape:
            raise InputError(
                f"synthetic measurements need one trajectory, got observable shape {values.shape}"
            )
        noise = template.metadata.observables[key].noise
        if rng is not None:
            draw = rng.normal if noise.model == "normal" else rng.laplace
            values = values + draw(0.0, noise.sigma, size=values.shape)
        rows += [(oids[key], "default", float(v), float(t)) for t, v in zip(times, values, strict=True)]
    return rows


def _write_atomically(out_dir: Path, files: Mapping[str, str]) -> None:
    """Write every file into a fresh temporary folder, then move them into ``out_dir``."""
    import os
    import shutil
    import tempfile

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        if not out_dir.exists():
            staging.rename(out_dir)
            return
        for name in files:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_template(
    template: str | Template,
    out_dir: str | Path,
    *,
    format: str,
    root: Roots = None,
    synthetic: TrajectoryLike | None = None,
    seed: int | None = None,
) -> Path:
    """Write a template as SBML (``model.xml``), Antimony (``model.ant``) or a PEtab v1 problem.

    The PEtab problem holds ``problem.yaml``, ``model.xml``, ``parameters.tsv`` (``log10`` scale for
    positive estimated parameters, bounds from ``range``, objective priors from ``prior``),
    ``observables.tsv`` (formulas on the observation scale, so ``observableTransformation`` is ``lin``),
    ``conditions.tsv`` (one condition, ``default``) and ``measurements.tsv`` (empty, or one row per
    observable and time of ``synthetic``, noise-free unless ``seed`` is given).

    Everything is rendered before anything is written, and written into a temporary folder first, so
    an error leaves ``out_dir`` as it was. Files of the same name in ``out_dir`` are replaced.

    Returns:
        The main file written: ``model.xml``, ``model.ant`` or ``problem.yaml``.

    Raises:
        InputError: unknown format, ``out_dir`` is a file, or ``synthetic`` is a cohort.
        TemplateError: unknown template.
    """
    tpl = template if isinstance(template, Template) else load_template(template, root=root)
    if format == "sbml":
        files, main = {"model.xml": tpl.sbml}, "model.xml"
    elif format == "antimony":
        files, main = {"model.ant": tpl.antimony}, "model.ant"
    elif format == "petab":
        files, main = _petab_files(tpl, synthetic, seed), "problem.yaml"
    else:
        raise InputError(f"unknown export format '{format}' (known: sbml, antimony, petab)")
    out = Path(out_dir)
    _write_atomically(out, files)
    return out / main


def template_map(template: str | Template, *, format: str = "svg", root: Roots = None) -> str:
    """The conceptual map of a template's model as a self-contained SVG, or an HTML page (``format``).

    Nodes are the states (hover: description and unit); solid arrows are reactions, dashed arrows are
    signed influences (see :mod:`immunetwin.templates.graph`).
    """
    from immunetwin.templates.graph import model_graph, render_map

    tpl = template if isinstance(template, Template) else load_template(template, root=root)
    if format not in ("svg", "html"):
        raise InputError(f"unknown map format '{format}' (known: svg, html)")
    tips = {k: f"{k}: {s.description} [{s.unit}]" for k, s in tpl.metadata.states.items()}
    graph = model_graph(tpl.structure)
    meta = tpl.metadata
    return render_map(graph, name=tpl.name, title=meta.title, tooltips=tips, format=format,  # type: ignore[arg-type]
                      subtitle=meta.purpose)  # fmt: skip
