"""The vLLM suite (``make test-vllm``, run in ``.venv-vllm``): the main suite's fixtures, and vLLM itself."""

from __future__ import annotations

import pytest

from tests.conftest import _isolated_model_cache, ray_session  # noqa: F401 (fixtures)

pytest.importorskip("vllm", reason="the vLLM suite runs in .venv-vllm: make test-vllm")
