# Set-up is part of every target: a fresh machine needs nothing but python3 (>= 3.10) and make.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.raysem-installed

.PHONY: setup study test lint bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/raysem model pull
	touch $(STAMP)

setup: $(STAMP)

# The main job: a small real study on the embedded defaults, MLflow runs and the report.
study: setup
	$(VENV)/bin/python jobs/quick_study.py --spec jobs/quick_study.yaml

# Lint (ruff: lint and format; mypy) is part of the test command, so CI enforces it.
lint: setup
	$(VENV)/bin/ruff check raysem tests jobs benchmarks
	$(VENV)/bin/ruff format --check raysem tests jobs benchmarks
	$(VENV)/bin/mypy

# Two pytest workers, one test file each at a time (most of the suite waits on process starts, Ray and
# MLflow); one torch thread per worker, so that the two never oversubscribe the cores. Files are handed out
# in tests/conftest.py's longest-first order: --no-loadscope-reorder stops xdist from re-sorting them by
# their number of tests, which would leave a long one-test file (chaos) to run alone at the end.
test: lint
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: setup
	$(VENV)/bin/raysem bench
