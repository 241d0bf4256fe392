# The two commands of the quick start: `make serve` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= default

.PHONY: setup model serve chat test test-fast bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# pip's wheel cache keeps the llama-cpp-python build: only the first install compiles it.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	@echo "installing qwenkit into $(VENV) (the first time compiles llama.cpp: 10-15 minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[serve,dev,transformers,tune]"
	touch $@

setup: $(VENV)/.installed

model: setup
	$(BIN)/qwenkit pull $(MODEL)

serve: model
	$(BIN)/qwenkit serve --model $(MODEL) $(SERVE_ARGS)

chat: model
	$(BIN)/qwenkit chat --model $(MODEL)

test: model
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

bench: model
	$(BIN)/python benchmarks/decode_speed.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/load_test.py
	$(BIN)/python benchmarks/engines_decode.py
	$(BIN)/python benchmarks/lora_serving.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
