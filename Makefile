# Two commands do all set-up on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch; installed first so nothing can pull a CUDA build.
TORCH := torch==2.13.0

.PHONY: install train test lint typecheck unit bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]' $(TORCH)
	$(PIP) install -q --no-deps bfcl-eval
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/actorlearner train configs/calculator.yaml

lint: install
	$(VENV)/bin/ruff check actorlearner envs tests benchmarks
	$(VENV)/bin/ruff format --check actorlearner envs tests benchmarks

typecheck: install
	$(VENV)/bin/mypy actorlearner envs

test: install lint typecheck
	$(PY) -m pytest -q -ra --durations=15

bench: install
	$(PY) benchmarks/async_vs_sync.py
	$(PY) benchmarks/learner.py
	$(PY) benchmarks/prefix_reuse.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
