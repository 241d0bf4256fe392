# The two commands of the quick start: `make serve` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= default

.PHONY: setup model serve chat lint test test-fast bench bench-report clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# pip's wheel cache keeps the llama-cpp-python build: only the first install compiles it.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	@echo "installing qwenkit into $(VENV) (the first time compiles llama.cpp: 10-15 minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[serve,dev,transformers,evals,onnx,bench,ray,tune,modelscope]"
	touch $@

setup: $(VENV)/.installed

model: setup
	$(BIN)/qwenkit pull $(MODEL)

serve: model
	$(BIN)/qwenkit serve --model $(MODEL) $(SERVE_ARGS)

chat: model
	$(BIN)/qwenkit chat --model $(MODEL)

# The house rules as checks (ARCHITECTURE.md, "Checks"): format, lint, types, layers. Seconds.
# lint-imports reads this checkout's src/, whatever the venv's editable install points at.
lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	PYTHONPATH=src $(BIN)/lint-imports --no-logo

test: lint model
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

bench: model
	$(BIN)/python benchmarks/decode_speed.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/load_test.py
	$(BIN)/python benchmarks/memory_estimate.py
	$(BIN)/python benchmarks/engines_decode.py
	$(BIN)/python benchmarks/onnx_vs_llamacpp.py
	$(BIN)/python benchmarks/loadtest_crosscheck.py
	$(BIN)/python benchmarks/logprobs_n.py
	$(BIN)/python benchmarks/ray_scaleout.py --conversations 6 --max-tokens 32
	$(BIN)/python benchmarks/lora_serving.py
	$(MAKE) bench-report

# BENCHMARKS.md and benchmarks/plots/ from benchmarks/results/*.json (no measuring)
bench-report: setup
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .import_linter_cache
