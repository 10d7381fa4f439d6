"""The vLLM suite (``make test-vllm``, run in ``.venv-vllm``): the main suite's fixtures, and vLLM itself."""

from __future__ import annotations

import vllm  # noqa: F401  (no skip: without vllm this suite must fail, not pass empty)

from tests.conftest import _at_repo_root, _isolated_model_cache, ray_session  # noqa: F401 (fixtures)
