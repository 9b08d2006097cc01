# One command to set up and test, one to set up and run the main job, on a fresh machine.
#   make test                  create/complete .venv, run the test suite
#   make demo                  create/complete .venv, train Dynamic R-CNN on `shapes`, evaluate
#   make releases              train, publish and verify the MODEL_ZOO.md checkpoints (~6 min on 2 CPU cores)
#   make test VENV=/path/env   use (and complete) an environment you already have
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests, benchmarks and releases find BCCD through the project's dataset variable
# ($$DYNAMIC_RCNN_DATASETS/BCCD); in the project's workspace a copy lives beside the checkout.
ifneq ($(wildcard ../shared/data/BCCD/Annotations),)
export DYNAMIC_RCNN_DATASETS ?= $(abspath ../shared/data)
endif
PYTEST_ARGS ?=

.PHONY: env test test-fast demo releases clean

env:
	@bash tools/setup_env.sh $(VENV)

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: env
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: env
	$(PY) tools/run_demo.py

# Each model of MODEL_ZOO.md: trained (skipped when its run is complete), published to releases/,
# then loaded back through dynamic_rcnn.model_zoo and evaluated against its metrics file.
RELEASES := shapes/dynamic_rcnn_R_18_FPN_shapes bccd/dynamic_rcnn_R_18_FPN_bccd \
	shapes/dynamic_cascade_rcnn_R_18_FPN_shapes
releases: env
	@set -e; for spec in $(RELEASES); do \
		name=$$(basename $$spec); run=output/release/$$name; \
		if [ ! -f $$run/run_summary.json ]; then \
			$(PY) tools/run_summary.py $$run -- $(PY) train_net.py --config-file configs/$$spec.yaml --restart SEED 0 OUTPUT_DIR $$run; fi; \
		$(PY) tools/publish_model.py $$run --name $$name --verify --replace; \
	done

clean:
	rm -rf output .pytest_cache
