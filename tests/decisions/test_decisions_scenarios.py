"""Scenario specs: parsing, canonical names, schedules, and errors that name what is wrong."""

from __future__ import annotations

import pytest

from immunetwin.decisions import NO_TREATMENT, Scenario, scenario, standard_scenarios
from immunetwin.errors import InputError, TemplateError
from immunetwin.spec.schedule import Schedule


def test_none_is_the_empty_schedule(viral_immune):
    s = scenario(viral_immune, "none")
    assert s == Scenario(NO_TREATMENT, Schedule(), "no treatment")
    assert not s.treats and s.interventions == ()


def test_an_intervention_at_its_defaults(viral_immune):
    s = scenario(viral_immune, "antiviral")
    assert s.name == "antiviral" and s.interventions == ("antiviral",) and s.treats
    assert s.schedule == viral_immune.intervention("antiviral")
    assert s.description == "antiviral (start=5, duration=5, efficacy=0.9)"


def test_arguments_override_the_defaults_and_name_the_scenario(viral_immune):
    s = scenario(viral_immune, " antiviral ( start = 3 ) ")
    assert s.name == "antiviral(start=3)"
    assert s.schedule == viral_immune.intervention("antiviral", start=3.0)
    window = s.schedule.inputs[0]
    assert window.target == "eps_av" and window.times == (3.0, 8.0) and window.values == (0.9, 0.0)


def test_terms_combine_with_plus(viral_immune):
    s = scenario(viral_immune, "antiviral(start=3)+anti_inflammatory(start=7, efficacy=0.8)")
    expected = viral_immune.intervention("antiviral", start=3.0) + viral_immune.intervention(
        "anti_inflammatory", start=7.0, efficacy=0.8
    )
    assert s.schedule == expected
    assert s.name == "antiviral(start=3)+anti_inflammatory(start=7,efficacy=0.8)"
    assert s.interventions == ("antiviral", "anti_inflammatory")
    assert scenario(viral_immune, s.name) == s  # the canonical name parses back to the same scenario


def test_a_custom_name(viral_immune):
    assert scenario(viral_immune, "antiviral(start=3)", name="early antiviral").name == "early antiviral"


def test_standard_scenarios(viral_immune):
    names = [s.name for s in standard_scenarios(viral_immune)]
    assert names == ["none", "antiviral", "anti_inflammatory", "antiviral+anti_inflammatory"]


def test_unknown_intervention_is_named_with_the_known_ones(viral_immune):
    with pytest.raises(
        TemplateError, match=r"unknown intervention 'antibody'.*known: none, antiviral, anti_inflammatory"
    ):
        scenario(viral_immune, "antiviral+antibody(start=2)")


def test_unknown_argument_is_named_with_the_known_ones(viral_immune):
    with pytest.raises(TemplateError, match=r"no argument 'dose'.*known: start, duration, efficacy"):
        scenario(viral_immune, "antiviral(dose=3)")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("antiviral(start)", "'start' is not an argument of the form name=number"),
        ("antiviral(start=soon)", "'soon' is not a number"),
        ("antiviral(start=3,start=4)", "argument 'start' given twice"),
        ("antiviral(start=3", "unbalanced parentheses"),
        ("antiviral((start=3))", "unbalanced parentheses"),
        ("antiviral+", r"'\(empty\)' is not a term"),
        ("2antiviral", "is not a term"),
        ("none+antiviral", "'none' stands alone"),
        ("none(start=1)", "'none' stands alone"),
        ("antiviral+antiviral(start=9)", "intervention 'antiviral' appears twice"),
        ("antiviral(start=nan)", "must be finite"),
        ("antiviral(duration=0)", "must be after start"),
    ],
)
def test_malformed_specs_are_refused(viral_immune, spec, message):
    with pytest.raises(InputError, match=message):
        scenario(viral_immune, spec)


def test_a_scenario_needs_a_name():
    with pytest.raises(InputError, match="non-empty name"):
        Scenario(" ")
