"""Virtual populations and in-silico trials, chunked on Dask (see DESIGN.md, "cohorts/")."""

from immunetwin.cohorts.execute import DaskCluster, InProcess, Opened, Probe, Work, run_chunks
from immunetwin.cohorts.matching import MatchResult, NormalTarget, SampleTarget, prevalence_select
from immunetwin.cohorts.population import Constraint, Match, VirtualPopulation, sample_population
from immunetwin.cohorts.sources import FromPopulation, FromPrior, FromTwins
from immunetwin.cohorts.trial import TrialResult, assign_arms, run_trial, write_trial
from immunetwin.cohorts.trialspec import TrialSpec, load_trial, parse_trial

__all__ = [
    "Constraint",
    "DaskCluster",
    "FromPopulation",
    "FromPrior",
    "FromTwins",
    "InProcess",
    "Match",
    "MatchResult",
    "NormalTarget",
    "Opened",
    "Probe",
    "SampleTarget",
    "TrialResult",
    "TrialSpec",
    "VirtualPopulation",
    "Work",
    "assign_arms",
    "load_trial",
    "parse_trial",
    "prevalence_select",
    "run_chunks",
    "run_trial",
    "sample_population",
    "write_trial",
]
