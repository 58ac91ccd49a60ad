"""Conformance runners against community test suites (SBML Test Suite; PEtab benchmarks later)."""
