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
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[serve,dev]"
	touch $@

setup: $(VENV)/.installed

model: setup
	$(BIN)/qwenkit pull $(MODEL)

serve: model
	$(BIN)/qwenkit chat --model $(MODEL)

chat: model
	$(BIN)/qwenkit chat --model $(MODEL)

test: model
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

bench: model
	$(BIN)/python benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
