"""Read and write PEtab v1 calibration problems (Schmiester et al. 2021, PLoS Comput Biol 17:e1008646).

The ``petab`` library reads the YAML and parses the formulas (``sympify_petab``); this module checks
every table and turns it into an immutable :class:`immunetwin.inference.problem.Problem`. Errors name
the file, the row (as a spreadsheet shows it: the header is row 1) and the column.

Supported: observables with formulas and noise formulas, ``normal`` and ``laplace`` noise,
``lin``/``log``/``log10`` transformations; parameters with scales, bounds, estimate flags and all
PEtab v1 objective prior types; conditions with parameter, compartment and initial-value overrides
(numbers or parameter ids); pre-equilibration; measurements with replicates and measurement-specific
observable / noise parameters. Extension: an optional ``censoring`` column in the measurement table
(``left``: the measurement is a limit of detection and the true value lies below; ``right``: above).
Refused with the reason: steady-state measurements (``time = inf``), several models per problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp
from petab.v1.math import petab_math_str

from immunetwin.errors import ImmunetwinError, ProblemError
from immunetwin.inference.problem import (
    PRIOR_TYPES,
    Condition,
    Measurements,
    Observable,
    Parameter,
    Prior,
    Problem,
)

__all__ = ["read_petab", "write_petab"]


def _row(i: int) -> int:
    return i + 2  # header is row 1


def _table(path: Path, required: tuple[str, ...], index: str, *, unique: bool = True) -> pd.DataFrame:
    if not path.is_file():
        raise ProblemError("file not found", file=str(path))
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ProblemError(f"not a readable tab-separated table ({err})", file=str(path)) from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in required:
        if col not in df.columns:
            raise ProblemError(
                f"missing required column '{col}' (columns: {', '.join(df.columns)})",
                file=str(path),
                column=col,
            )
    ids = df[index].str.strip()
    for i, v in enumerate(ids):
        if not v:
            raise ProblemError("empty id", file=str(path), row=_row(i), column=index)
    dup = ids[ids.duplicated()]
    if unique and len(dup):
        i = int(dup.index[0])
        raise ProblemError(f"duplicate id '{dup.iloc[0]}'", file=str(path), row=_row(i), column=index)
    return df


def _float(text: str, *, file: Path, row: int, column: str, allow_empty: bool = False) -> float:
    s = str(text).strip()
    if not s:
        if allow_empty:
            return math.nan
        raise ProblemError("empty value", file=str(file), row=row, column=column)
    try:
        v = float(s)
    except ValueError:
        raise ProblemError(f"'{s}' is not a number", file=str(file), row=row, column=column) from None
    return v


def _formula(text: str, *, file: Path, row: int, column: str) -> sp.Expr:
    from petab.v1.math import sympify_petab

    s = str(text).strip()
    if not s:
        raise ProblemError("empty formula", file=str(file), row=row, column=column)
    try:
        return sp.sympify(sympify_petab(s))
    except Exception as err:  # the parser raises several types
        raise ProblemError(
            f"cannot parse formula '{s}' ({err})", file=str(file), row=row, column=column
        ) from None


def _read_parameters(path: Path) -> tuple[Parameter, ...]:
    df = _table(
        path,
        ("parameterId", "parameterScale", "lowerBound", "upperBound", "nominalValue", "estimate"),
        "parameterId",
    )
    out = []
    for i, r in df.iterrows():
        row = _row(int(i))  # type: ignore[arg-type]
        pid = r["parameterId"].strip()
        scale = r["parameterScale"].strip() or "lin"
        if scale not in ("lin", "log", "log10"):
            raise ProblemError(
                f"unknown scale '{scale}' (lin, log, log10)", file=str(path), row=row, column="parameterScale"
            )
        est = r["estimate"].strip()
        if est not in ("0", "1"):
            raise ProblemError(
                f"estimate must be 0 or 1, got '{est}'", file=str(path), row=row, column="estimate"
            )
        lo = _float(r["lowerBound"], file=path, row=row, column="lowerBound", allow_empty=est == "0")
        hi = _float(r["upperBound"], file=path, row=row, column="upperBound", allow_empty=est == "0")
        nom = _float(r["nominalValue"], file=path, row=row, column="nominalValue", allow_empty=est == "1")
        for col, v in (("lowerBound", lo), ("upperBound", hi), ("nominalValue", nom)):
            if (
                scale != "lin"
                and math.isfinite(v)
                and v <= 0
                and not (col == "lowerBound" and v == 0 and est == "0")
            ):
                raise ProblemError(
                    f"{v} is not positive, but the parameter is estimated on {scale} scale",
                    file=str(path),
                    row=row,
                    column=col,
                )
        if est == "1" and not lo < hi:
            raise ProblemError(
                f"lowerBound {lo} is not below upperBound {hi}", file=str(path), row=row, column="lowerBound"
            )
        if est == "1" and math.isfinite(nom) and not lo <= nom <= hi:
            raise ProblemError(
                f"nominalValue {nom} lies outside [{lo}, {hi}]",
                file=str(path),
                row=row,
                column="nominalValue",
            )
        prior = None
        kind = r.get("objectivePriorType", "").strip() if "objectivePriorType" in df.columns else ""
        if kind and est == "1":
            if kind not in PRIOR_TYPES:
                raise ProblemError(
                    f"unknown prior type '{kind}'", file=str(path), row=row, column="objectivePriorType"
                )
            parts = str(r.get("objectivePriorParameters", "")).split(";")
            if len(parts) != 2:
                raise ProblemError(
                    f"prior {kind} needs two parameters separated by ';'",
                    file=str(path),
                    row=row,
                    column="objectivePriorParameters",
                )
            a = _float(parts[0], file=path, row=row, column="objectivePriorParameters")
            b = _float(parts[1], file=path, row=row, column="objectivePriorParameters")
            try:
                prior = Prior(kind, (a, b))
            except ImmunetwinError as err:
                raise ProblemError(
                    str(err), file=str(path), row=row, column="objectivePriorParameters"
                ) from None
        try:
            out.append(
                Parameter(
                    id=pid,
                    scale=scale,
                    lower=lo if math.isfinite(lo) else -math.inf,  # type: ignore[arg-type]
                    upper=hi if math.isfinite(hi) else math.inf,
                    nominal=nom,
                    estimate=est == "1",
                    prior=prior,
                    name=str(r.get("parameterName", "")).strip(),
                )
            )
        except ImmunetwinError as err:
            raise ProblemError(str(err), file=str(path), row=row) from None
    return tuple(out)


def _read_observables(path: Path) -> tuple[Observable, ...]:
    df = _table(path, ("observableId", "observableFormula", "noiseFormula"), "observableId")
    out = []
    for i, r in df.iterrows():
        row = _row(int(i))  # type: ignore[arg-type]
        tr = str(r.get("observableTransformation", "")).strip() or "lin"
        dist = str(r.get("noiseDistribution", "")).strip() or "normal"
        if tr not in ("lin", "log", "log10"):
            raise ProblemError(
                f"unknown transformation '{tr}'", file=str(path), row=row, column="observableTransformation"
            )
        if dist not in ("normal", "laplace"):
            raise ProblemError(
                f"unknown noise distribution '{dist}'", file=str(path), row=row, column="noiseDistribution"
            )
        out.append(
            Observable(
                id=r["observableId"].strip(),
                formula=_formula(r["observableFormula"], file=path, row=row, column="observableFormula"),
                noise=_formula(r["noiseFormula"], file=path, row=row, column="noiseFormula"),
                transformation=tr,  # type: ignore[arg-type]
                distribution=dist,  # type: ignore[arg-type]
                name=str(r.get("observableName", "")).strip(),
            )
        )
    return tuple(out)


def _value_or_id(text: str) -> float | str:
    s = str(text).strip()
    if not s or s.lower() == "nan":
        return math.nan
    try:
        return float(s)
    except ValueError:
        return s


def _read_conditions(path: Path) -> tuple[Condition, ...]:
    df = _table(path, ("conditionId",), "conditionId")
    cols = [c for c in df.columns if c not in ("conditionId", "conditionName")]
    return tuple(
        Condition(id=r["conditionId"].strip(), overrides=tuple((c, _value_or_id(r[c])) for c in cols))
        for _, r in df.iterrows()
    )


def _overrides(text: str) -> tuple[float | str, ...]:
    s = str(text).strip()
    if not s:
        return ()
    return tuple(_value_or_id(p) for p in s.split(";"))


def _read_measurements(path: Path, observables: dict[str, Observable]) -> tuple[pd.DataFrame, dict[str, Any]]:
    df = _table(
        path, ("observableId", "simulationConditionId", "time", "measurement"), "observableId", unique=False
    )
    n = len(df)
    time = np.empty(n)
    value = np.empty(n)
    cens = []
    for i, r in df.iterrows():
        row = _row(int(i))  # type: ignore[arg-type]
        t = _float(r["time"], file=path, row=row, column="time")
        if math.isnan(t) or t < 0:
            raise ProblemError(
                f"time {t} must be a non-negative number", file=str(path), row=row, column="time"
            )
        if math.isinf(t):
            raise ProblemError(
                "steady-state measurements (time = inf) are not supported",
                file=str(path),
                row=row,
                column="time",
            )
        y = _float(r["measurement"], file=path, row=row, column="measurement")
        if not math.isfinite(y):
            raise ProblemError(
                f"measurement {y} is not a finite number", file=str(path), row=row, column="measurement"
            )
        oid = r["observableId"].strip()
        if oid not in observables:
            raise ProblemError(
                f"unknown observable '{oid}' (known: {', '.join(observables)})",
                file=str(path),
                row=row,
                column="observableId",
            )
        if observables[oid].transformation != "lin" and y <= 0:
            raise ProblemError(
                f"measurement {y} is not positive, but observable '{oid}' is on "
                f"{observables[oid].transformation} scale",
                file=str(path),
                row=row,
                column="measurement",
            )
        c = str(r.get("censoring", "")).strip() if "censoring" in df.columns else ""
        if c not in ("", "left", "right"):
            raise ProblemError(
                f"censoring must be empty, 'left' or 'right', got '{c}'",
                file=str(path),
                row=row,
                column="censoring",
            )
        time[int(i)], value[int(i)] = t, y  # type: ignore[call-overload]
        cens.append(c)
    cols: dict[str, Any] = {
        "observable": df["observableId"].str.strip().to_numpy(),
        "condition": df["simulationConditionId"].str.strip().to_numpy(),
        "preequilibration": (
            df["preequilibrationConditionId"].str.strip().to_numpy()
            if "preequilibrationConditionId" in df.columns
            else np.full(n, "")
        ),
        "time": time,
        "value": value,
        "observable_parameters": tuple(_overrides(v) for v in df.get("observableParameters", [""] * n)),
        "noise_parameters": tuple(_overrides(v) for v in df.get("noiseParameters", [""] * n)),
        "censoring": np.array(cens, dtype=str),
        "source_rows": np.arange(n) + 2,
    }
    return df, cols


def _check_placeholders(path: Path, cols: dict[str, Any], observables: dict[str, Observable]) -> None:
    for i, oid in enumerate(cols["observable"]):
        obs = observables[str(oid)]
        for column, key, prefix, expr in (
            ("observableParameters", "observable_parameters", "observableParameter", obs.formula),
            ("noiseParameters", "noise_parameters", "noiseParameter", obs.noise),
        ):
            need = sum(
                1 for s in expr.free_symbols if s.name.startswith(prefix) and s.name.endswith(f"_{oid}")
            )
            have = len(cols[key][i])
            if have != need:
                raise ProblemError(
                    f"observable '{oid}' has {need} {prefix} placeholder(s) but the row gives {have} value(s)",
                    file=str(path),
                    row=_row(i),
                    column=column,
                )
            for v in cols[key][i]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ProblemError("override is empty or NaN", file=str(path), row=_row(i), column=column)


def read_petab(yaml_path: str | Path) -> Problem:
    """Read a PEtab v1 problem (its YAML file) into a :class:`Problem`.

    Raises:
        ProblemError: a missing file or column, an unparsable formula or number, NaN data, a
            non-positive value on a log scale, an unknown id: the message names file, row, column.
        ModelError: the SBML model cannot be read or uses a construct the engine refuses.
    """
    from petab.v1.yaml import load_yaml

    from immunetwin.io import load_model

    path = Path(yaml_path)
    if not path.is_file():
        raise ProblemError("file not found", file=str(path))
    try:
        doc = load_yaml(path)
    except Exception as err:
        raise ProblemError(f"not a readable YAML file ({err})", file=str(path)) from None
    if not isinstance(doc, dict) or "problems" not in doc or "parameter_file" not in doc:
        raise ProblemError(
            "not a PEtab v1 problem file (needs 'parameter_file' and 'problems')", file=str(path)
        )
    if str(doc.get("format_version", "1")) not in ("1", "1.0.0"):
        raise ProblemError(
            f"PEtab format_version {doc.get('format_version')} is not supported (1)", file=str(path)
        )
    problems = doc["problems"]
    if len(problems) != 1:
        raise ProblemError(f"{len(problems)} sub-problems; exactly one is supported", file=str(path))
    sub = problems[0]
    base = path.parent
    models = sub.get("sbml_files") or [m.get("location") for m in (sub.get("model_files") or {}).values()]
    if len(models) != 1:
        raise ProblemError(f"{len(models)} model files; exactly one is supported", file=str(path))
    model_path = base / models[0]
    if not model_path.is_file():
        raise ProblemError(f"model file '{models[0]}' not found", file=str(path))
    model = load_model(model_path)
    pfiles = doc["parameter_file"] if isinstance(doc["parameter_file"], list) else [doc["parameter_file"]]
    parameters = tuple(p for f in pfiles for p in _read_parameters(base / f))
    observables = tuple(o for f in sub.get("observable_files", []) for o in _read_observables(base / f))
    conditions = tuple(c for f in sub.get("condition_files", []) for c in _read_conditions(base / f))
    obs = {o.id: o for o in observables}
    frames: list[dict[str, Any]] = []
    for f in sub.get("measurement_files", []):
        _, cols = _read_measurements(base / f, obs)
        _check_placeholders(base / f, cols, obs)
        frames.append(cols)
    if not frames:
        raise ProblemError("no measurement_files", file=str(path))
    merged: dict[str, Any] = {}
    for key in frames[0]:
        vals = [fr[key] for fr in frames]
        merged[key] = sum(vals, ()) if isinstance(vals[0], tuple) else np.concatenate(vals)
    try:
        return Problem(
            model=model,
            parameters=parameters,
            observables=observables,
            conditions=conditions,
            measurements=Measurements(**merged),
            name=path.stem,
        )
    except ImmunetwinError as err:
        raise ProblemError(str(err), file=str(path)) from None


def _fmt(v: float | str) -> str:
    return v if isinstance(v, str) else repr(float(v))


def write_petab(problem: Problem, folder: str | Path, *, sbml: str | None = None) -> Path:
    """Write ``problem`` as PEtab v1 files in ``folder`` (created); returns the YAML path.

    The model is written as SBML (``sbml`` text, or the model's own SBML). The files are written to a
    temporary folder first and moved into place, so a failure leaves nothing half-written.
    """
    import os
    import shutil
    import tempfile

    import yaml

    out = Path(folder)
    text = sbml or problem.model.sbml
    if not text:
        raise ProblemError("the model has no SBML text to export", file=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".petab-", dir=out.parent))
    try:
        (tmp / "model.xml").write_text(text)
        pd.DataFrame(
            [
                {
                    "parameterId": p.id,
                    "parameterName": p.name,
                    "parameterScale": p.scale,
                    "lowerBound": "" if not math.isfinite(p.lower) else repr(p.lower),
                    "upperBound": "" if not math.isfinite(p.upper) else repr(p.upper),
                    "nominalValue": "" if not math.isfinite(p.nominal) else repr(p.nominal),
                    "estimate": int(p.estimate),
                    "objectivePriorType": p.prior.kind if p.prior else "",
                    "objectivePriorParameters": f"{p.prior.params[0]!r};{p.prior.params[1]!r}"
                    if p.prior
                    else "",
                }
                for p in problem.parameters
            ]
        ).to_csv(tmp / "parameters.tsv", sep="\t", index=False)
        pd.DataFrame(
            [
                {
                    "observableId": o.id,
                    "observableName": o.name,
                    "observableFormula": petab_math_str(o.formula),
                    "noiseFormula": petab_math_str(o.noise),
                    "observableTransformation": o.transformation,
                    "noiseDistribution": o.distribution,
                }
                for o in problem.observables
            ]
        ).to_csv(tmp / "observables.tsv", sep="\t", index=False)
        targets = sorted({t for c in problem.conditions for t, _ in c.overrides})
        pd.DataFrame(
            [
                {"conditionId": c.id} | {t: _fmt(c.as_dict().get(t, math.nan)) for t in targets}
                for c in problem.conditions
            ]
        ).to_csv(tmp / "conditions.tsv", sep="\t", index=False)
        m = problem.measurements
        table = pd.DataFrame(
            {
                "observableId": m.observable,
                "preequilibrationConditionId": m.preequilibration,
                "simulationConditionId": m.condition,
                "time": m.time,
                "measurement": m.value,
                "observableParameters": [";".join(map(_fmt, v)) for v in m.observable_parameters],
                "noiseParameters": [";".join(map(_fmt, v)) for v in m.noise_parameters],
            }
        )
        if np.any(m.censoring != ""):
            table["censoring"] = m.censoring
        table.to_csv(tmp / "measurements.tsv", sep="\t", index=False)
        doc = {
            "format_version": 1,
            "parameter_file": "parameters.tsv",
            "problems": [
                {
                    "sbml_files": ["model.xml"],
                    "condition_files": ["conditions.tsv"],
                    "measurement_files": ["measurements.tsv"],
                    "observable_files": ["observables.tsv"],
                }
            ],
        }
        (tmp / "problem.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        if out.exists():
            if not out.is_dir() or any(out.iterdir()):
                raise ProblemError("folder exists and is not empty; refusing to overwrite", file=str(out))
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out / "problem.yaml"
