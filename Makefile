# Two commands do all the set-up: `make demo` (the whole pipeline on the embedded demo) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export GMAI_OUTPUT_ROOT ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(GMAI_OUTPUT_ROOT)/dagster_home

.PHONY: install demo test test-fast lint ui bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch when the machine has it on disk; otherwise whatever the registry serves.
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,ops]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp deploy/dagster.sqlite.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster job execute -m gmai_pipeline.definitions -j demo_job
	@$(PY) -m gmai_pipeline.summary

# Tests make their own instances and output roots: never the demo's DAGSTER_HOME.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	# Loads the code location as Dagster tooling does ([tool.dg] in pyproject.toml): every asset, job, schedule, sensor.
	env -u DAGSTER_HOME $(VENV)/bin/dg check defs
	env -u DAGSTER_HOME $(VENV)/bin/pytest -q -n 2 --durations=20

test-fast: $(STAMP)
	env -u DAGSTER_HOME $(VENV)/bin/pytest -q -n 2 -m "not slow and not services"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp deploy/dagster.sqlite.yaml $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: $(STAMP)
	$(PY) bench/normalize.py && $(PY) bench/decontaminate.py && $(PY) bench/generate.py && $(PY) bench/shards.py && $(PY) bench/train_step.py

clean:
	rm -rf data .pytest_cache
