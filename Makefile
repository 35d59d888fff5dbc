# Single entry point. `make test` builds .venv from nothing (Python 3.11 + the package registries)
# and runs the whole test suite; `make demo` runs the main job on the bundled example.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint demo bench bench-scene bench-batch bench-cli clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-test.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# zennit is the test-only LRP reference; --no-deps keeps it from pulling torchvision/CUDA torch
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-test.txt
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	# the module and the engine also run inside Slicer 5.8's Python 3.9
	$(BIN)/vermin -q -t=3.9- --violations --no-tips --eval-annotations ADDiagnosis/ADDiagnosis.py ADDiagnosis/Logic/addiagnosis

test: venv lint
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/addiagnosis diagnose --out demo-output

bench: venv
	$(BIN)/python scripts/bench/benchmark.py

bench-scene: venv
	$(BIN)/python scripts/bench/bench_scene.py

# cohort throughput: the batch engine against one CLI call per scan, side by side (BENCH_ARGS="--mem 100,300")
bench-batch: venv
	$(BIN)/python scripts/bench/bench_batch.py $(BENCH_ARGS)

# start-up of the command line: --help and models against a bare `python -c pass` (median of 5 runs each)
bench-cli: venv
	$(BIN)/python scripts/bench/cli_help.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
