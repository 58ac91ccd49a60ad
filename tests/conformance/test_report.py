"""CONFORMANCE.md sections: each runner replaces its own and leaves the others."""

from __future__ import annotations

from immunetwin.conformance.report import replace_section


def test_sections_are_replaced_in_place_and_others_kept(tmp_path):
    path = tmp_path / "CONFORMANCE.md"
    replace_section(path, "sbml", "## SBML\nold")
    replace_section(path, "petab", "## PEtab\nfirst")
    replace_section(path, "sbml", "## SBML\nnew")
    text = path.read_text()
    assert text.startswith("# Conformance\n")
    assert "new" in text and "old" not in text and "first" in text
    assert text.index("## SBML") < text.index("## PEtab")
    assert text.count("<!-- sbml:start -->") == 1
