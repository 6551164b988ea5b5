# Everything runs from the project's own files: a fresh machine needs only Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster
export DBT_PROFILES_DIR := $(CURDIR)/dbt_project
# dbt re-parses the whole project when the warehouse path differs from the one it parsed
# with, so `prepare` and the ticks see the same absolute path.
export NUDGE_WAREHOUSE ?= $(CURDIR)/data/warehouse.duckdb

.PHONY: install prepare demo run test dev bench clean screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The dbt manifest is prepared once here, never parsed when Dagster imports the code.
dbt_project/target/manifest.json: $(VENV)/.installed $(shell find dbt_project/models dbt_project/macros dbt_project/tests dbt_project/seeds -type f 2>/dev/null) dbt_project/dbt_project.yml dbt_project/profiles.yml
	cd dbt_project && ../$(BIN)/dbt parse --quiet --profiles-dir .

prepare: dbt_project/target/manifest.json

demo: prepare
	$(BIN)/nudge demo

run: prepare
	$(BIN)/nudge run

test: prepare
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Speed and memory beside their lower bounds (not part of `make test`): 1M and 10M events by
# default; BENCH_ARGS="--huge" adds 100M, "--sizes 1m" runs the small one only. Data is
# generated once into data/bench/cache; figures go to data/bench/results.json.
bench: prepare
	$(BIN)/python -m bench $(BENCH_ARGS)

# docs/report.png: the demo's report in headless Chromium (needs chromium installed)
screenshot: prepare
	$(BIN)/python scripts/screenshot_report.py

dev: prepare
	$(BIN)/dagster dev -w workspace.yaml

clean:
	rm -rf data dbt_project/target dbt_project/logs .dagster/storage .dagster/history .dagster/schedules
