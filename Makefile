# immunetwin: two commands on a fresh clone -- `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SHARED ?= ../shared
OUT    ?= out

.PHONY: install demo test conformance bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

## The main job: a viral_immune twin of a real person (Ke 2022, ke01) built from the first swabs, forecast,
## treatments compared and decided, later swabs assimilated one by one (alerts), report written to $(OUT)/report.html
demo: $(STAMP)
	@mkdir -p $(OUT)
	$(BIN)/immunetwin demo --out $(OUT)

## The test suite (fast cases; `slow` ones run with `make conformance`). Under CI=true, ../shared must exist.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

## Every SBML Test Suite case (core ODE subset, delay-free events) and every PEtab benchmark problem -> CONFORMANCE.md; then the slow tests
conformance: $(STAMP)
	$(BIN)/python -m immunetwin.conformance.sbml_suite $(SHARED)/conformance/sbml-test-suite \
		--subset core,events --jobs 2 --markdown CONFORMANCE.md --machine "$$(uname -m), $$(nproc) cores"
	$(BIN)/python -m immunetwin.conformance.petab_suite $(SHARED)/conformance/petab-benchmark \
		--jobs 1 --timeout 900 --markdown CONFORMANCE.md --machine "$$(uname -m), $$(nproc) cores"
	$(BIN)/python -m pytest -q -n 2 -m slow

## Cohort throughput beside libroadrunner and scipy -> BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python benchmarks/cohort.py --write BENCHMARKS.md

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
