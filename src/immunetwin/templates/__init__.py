"""The curated template library: immune models with their purpose, sources, observables and treatments.

Each template is a folder ``<name>/`` with ``model.ant`` (Antimony), ``template.yaml`` (metadata) and
``README.md`` (equations, parameter table, citations, the published checks it reproduces).

```python
from immunetwin.templates import list_templates, load_template, export_template, template_map

tpl = load_template("viral_tiv")
schedule = tpl.intervention("antiviral", start=1.0)
export_template(tpl, "out/viral_tiv", format="petab")
svg = template_map(tpl)
```
"""

from __future__ import annotations

from immunetwin.templates.library import (
    Template,
    TrajectoryLike,
    builtin_root,
    check_against_model,
    export_template,
    list_templates,
    load_template,
    template_map,
)
from immunetwin.templates.metadata import (
    DoseSeries,
    DoseSpec,
    InputWindow,
    InterventionInfo,
    NoiseModel,
    ObservableInfo,
    OutcomeInfo,
    ParameterInfo,
    Prior,
    StateInfo,
    TemplateMetadata,
    parse_metadata,
)

__all__ = [
    "DoseSeries",
    "DoseSpec",
    "InputWindow",
    "InterventionInfo",
    "NoiseModel",
    "ObservableInfo",
    "OutcomeInfo",
    "ParameterInfo",
    "Prior",
    "StateInfo",
    "Template",
    "TemplateMetadata",
    "TrajectoryLike",
    "builtin_root",
    "check_against_model",
    "export_template",
    "list_templates",
    "load_template",
    "parse_metadata",
    "template_map",
]
