"""SBML / Antimony import: supported semantics and one clear error for everything refused."""

from __future__ import annotations

import numpy as np
import pytest

import immunetwin as it


def _sbml_with(body: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m">
    <listOfCompartments><compartment id="c" size="1" constant="true" spatialDimensions="3"/></listOfCompartments>
    <listOfSpecies><species id="S" compartment="c" initialAmount="1" hasOnlySubstanceUnits="false"
      boundaryCondition="false" constant="false"/></listOfSpecies>
    <listOfParameters><parameter id="k" value="1" constant="false"/></listOfParameters>
    {body}
  </model>
</sbml>"""


ALGEBRAIC = _sbml_with("""<listOfRules><algebraicRule metaid="alg1"><math xmlns="http://www.w3.org/1998/Math/MathML">
  <apply><minus/><ci>k</ci><cn>1</cn></apply></math></algebraicRule></listOfRules>""")

DELAYED_EVENT = _sbml_with("""<listOfEvents><event id="late" useValuesFromTriggerTime="true">
  <trigger initialValue="false" persistent="true"><math xmlns="http://www.w3.org/1998/Math/MathML">
  <apply><gt/><csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/time">t</csymbol>
  <cn>1</cn></apply></math></trigger>
  <delay><math xmlns="http://www.w3.org/1998/Math/MathML"><cn>1</cn></math></delay>
  <listOfEventAssignments><eventAssignment variable="k"><math xmlns="http://www.w3.org/1998/Math/MathML">
  <cn>2</cn></math></eventAssignment></listOfEventAssignments></event></listOfEvents>""")

FAST = _sbml_with("""<listOfReactions><reaction id="fastR" reversible="false" fast="true">
  <listOfReactants><speciesReference species="S" stoichiometry="1" constant="true"/></listOfReactants>
  <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><times/><ci>k</ci><ci>S</ci></apply>
  </math></kineticLaw></reaction></listOfReactions>""")


@pytest.mark.parametrize(
    ("text", "construct", "element"),
    [(ALGEBRAIC, "algebraic rule", "alg1"), (DELAYED_EVENT, "event delay", "late")],
)
def test_unsupported_constructs_are_refused_by_name_and_id(text, construct, element):
    with pytest.raises(it.UnsupportedConstructError) as info:
        it.load_model(text)
    assert info.value.construct == construct
    assert info.value.element_id == element
    assert element in str(info.value)


def test_fast_reactions_are_refused_or_rejected_by_libsbml():
    # L3V2 removed the `fast` attribute: libsbml either reports it as invalid or we refuse it.
    with pytest.raises((it.UnsupportedConstructError, it.MalformedModelError), match="fast"):
        it.load_model(FAST)


def test_malformed_xml_names_the_line():
    with pytest.raises(it.MalformedModelError, match="line"):
        it.load_model('<?xml version="1.0"?>\n<sbml level="3" version="2"><model id="m"><oops></sbml>')


def test_malformed_antimony_is_one_error():
    with pytest.raises(it.MalformedModelError):
        it.load_model("model broken\n  X' = = 3\nend\n")


def test_missing_file(tmp_path):
    with pytest.raises(it.MalformedModelError, match="no such model file"):
        it.load_model(tmp_path / "absent.xml")


def test_functions_piecewise_time_and_rules_from_antimony():
    model = it.load_model("""
    function hill(x, K, n)
      x^n / (K^n + x^n)
    end
    model m
      compartment c = 2
      species A in c = 4          # concentration 4 -> amount 8
      A' = -r
      r := piecewise(0.5, time < 1, 0) * A
      h := hill(A, 2, 2)
      B = 2 * A                   # initial assignment from another initial value
      B' = 0
    end
    """)
    times = np.array([0.0, 1.0, 2.0])
    traj = it.simulate(model, times, controls=it.Controls(rtol=1e-10, atol=1e-12))
    a1 = 4 * np.exp(-0.5)
    np.testing.assert_allclose(traj["A"], [4, a1, a1], rtol=1e-7)
    np.testing.assert_allclose(traj["h"], traj["A"] ** 2 / (4 + traj["A"] ** 2), rtol=1e-12)
    assert traj["B"][0] == pytest.approx(8.0)
    # overriding the initial value of A re-evaluates the initial assignment of B
    traj = it.simulate(model, times, initial={"A": 1.0})
    assert traj["B"][0] == pytest.approx(2.0)


def test_concentration_species_in_a_growing_compartment_keep_their_amount():
    # amount is conserved while V grows: [S] = S0 * V0 / V(t)
    model = it.load_model("""
    model grow
      compartment V = 1
      V' = 1
      species S in V = 3
    end
    """)
    traj = it.simulate(model, [0.0, 1.0, 3.0])
    np.testing.assert_allclose(traj["S"], [3.0, 1.5, 0.75], rtol=1e-8)


def test_an_initial_assignment_to_a_bare_symbol_takes_its_value():
    # regression: a sympy Symbol is also a Boolean; `X = X0` once became piecewise(1, X0, 0) = 1
    model = it.load_model("model m\n  X0 = 7\n  X = X0\n  X' = 0\n  Y := X0\nend\n")
    traj = it.simulate(model, [0.0, 1.0], parameters={"X0": 3.0})
    assert traj["X"].tolist() == [3.0, 3.0]
    assert traj["Y"].tolist() == [3.0, 3.0]
