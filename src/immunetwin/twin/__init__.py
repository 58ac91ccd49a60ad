"""Digital twins: immutable, versioned, kept up to date (roadmap stage 4; Laubenbacher et al. 2022,
npj Digit Med 5:64).

```python
import jax
from immunetwin.twin import assimilate, forecast, load_twin, personalise, save_twin

twin = personalise("viral_immune", first_days, patient="ke01", key=jax.random.PRNGKey(0))
bands = forecast(twin, horizon=28).to_frame()           # 5/25/50/75/95% of every observable and state
twin2 = assimilate(twin, next_day, key=jax.random.PRNGKey(1))   # a new version; twin is unchanged
twin2.alerts, twin2.history, twin2.as_of(9.0)
save_twin(twin2, "ke01.zip"); load_twin("ke01.zip")     # whole history, provenance-checked
```

A :class:`Twin` is a value: every verb returns a new version and keeps the old one as ``previous``.
Its belief is a set of weighted particles updated by sequential Monte Carlo
(:mod:`immunetwin.twin.assimilate`); measurements outside the predictive band of the twin that had
not seen them raise :class:`Alert` s, and :func:`drift_signal` pools every twin of a template to flag
systematic deviations of the template itself.
"""

from immunetwin.twin.assimilate import assimilate
from immunetwin.twin.belief import Belief
from immunetwin.twin.drift import DriftReport, ObservableDrift, drift_signal
from immunetwin.twin.forecast import Forecast, forecast
from immunetwin.twin.observations import Observations, read_observations
from immunetwin.twin.personalise import personalise
from immunetwin.twin.scores import Alert, Score
from immunetwin.twin.storage import load_twin, save_twin
from immunetwin.twin.twin import LaplaceImportance, Step, Tempering, Twin, TwinSettings

__all__ = [
    "Alert",
    "Belief",
    "DriftReport",
    "Forecast",
    "LaplaceImportance",
    "ObservableDrift",
    "Observations",
    "Score",
    "Step",
    "Tempering",
    "Twin",
    "TwinSettings",
    "assimilate",
    "drift_signal",
    "forecast",
    "load_twin",
    "personalise",
    "read_observations",
    "save_twin",
]
