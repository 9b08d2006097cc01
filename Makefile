# One command to set up and test, one to set up and run the main job, on a fresh machine.
#   make test                  create/complete .venv, run the test suite
#   make demo                  create/complete .venv, train Dynamic R-CNN on `shapes`, evaluate
#   make test VENV=/path/env   use (and complete) an environment you already have
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env test test-fast demo clean

env:
	@bash tools/setup_env.sh $(VENV)

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: env
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: env
	$(PY) tools/run_demo.py

clean:
	rm -rf output .pytest_cache
