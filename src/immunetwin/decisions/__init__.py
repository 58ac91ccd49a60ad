"""Treatment decisions: scenarios, their comparison over a twin's particles, and decision rules.

```python
from immunetwin.decisions import ExpectedUtility, MinimiseRisk, compare_scenarios, decide
from immunetwin.templates import load_template

tpl = load_template("viral_immune")
comparison = compare_scenarios(tpl, draws, ["none", "antiviral(start=3)"], horizon=40.0,
                               log_weights=log_w)
decision = decide(comparison, ExpectedUtility({"peak_damage": 100.0, "time_to_clearance": 1.0},
                                              treatment_costs={"antiviral": 0.5}))
print(decision.action, decision.chosen, *decision.reasons, sep="\\n")
```

Parameter draws and weights are plain arrays (``{id: (S,) array}`` and ``(S,)`` log weights), so a
twin, a virtual cohort or a report can call these functions without this package knowing about them.
"""

from __future__ import annotations

from immunetwin.decisions.compare import BATCH, compare_scenarios
from immunetwin.decisions.comparison import MetricSummary, ScenarioComparison
from immunetwin.decisions.decide import Action, Decision, ScenarioScore, Sensitivity, Switch, decide
from immunetwin.decisions.rules import Event, ExpectedUtility, MinimiseRisk, Rule, event
from immunetwin.decisions.scenarios import NO_TREATMENT, Scenario, scenario, standard_scenarios
from immunetwin.decisions.stats import (
    kish_ess,
    normalise_log_weights,
    weighted_mcse,
    weighted_mean,
    weighted_quantile,
)
from immunetwin.decisions.timing import StartDayResult, best_start_day

__all__ = [
    "BATCH",
    "NO_TREATMENT",
    "Action",
    "Decision",
    "Event",
    "ExpectedUtility",
    "MetricSummary",
    "MinimiseRisk",
    "Rule",
    "Scenario",
    "ScenarioComparison",
    "ScenarioScore",
    "Sensitivity",
    "StartDayResult",
    "Switch",
    "best_start_day",
    "compare_scenarios",
    "decide",
    "event",
    "kish_ess",
    "normalise_log_weights",
    "scenario",
    "standard_scenarios",
    "weighted_mcse",
    "weighted_mean",
    "weighted_quantile",
]
