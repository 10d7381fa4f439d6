"""Built-in tool envs, registered with gymnasium under the ``actorlearner/`` namespace."""

from __future__ import annotations

import gymnasium

ENVS: dict[str, str] = {
    "actorlearner/Calculator-v0": "envs.calculator:Calculator",
    "actorlearner/FunctionCalling-v0": "envs.function_calling:FunctionCalling",
    "actorlearner/BFCL-v0": "envs.bfcl:BFCL",
    "actorlearner/SQL-v0": "envs.sql:SQLEnv",
    "actorlearner/PythonTIR-v0": "envs.python_tir:PythonTIR",
}
"""Gymnasium id -> entry point of each built-in env."""

BENCHMARK_ENVS: dict[str, str] = {
    "actorlearner/SlowToolCalculator-v0": "envs.latency:SlowToolCalculator",
}
"""Envs for benchmarks: the Calculator with tools that wait like remote ones (``envs/latency.py``)."""

PEER_ENVS: dict[str, str] = {
    "actorlearner/ReasoningGym-Python-v0": "envs.peers:ReasoningGymPython",
    "actorlearner/ReasoningGym-Calculator-v0": "envs.peers:ReasoningGymCalculator",
    "actorlearner/SkyRLText-v0": "envs.peers:SkyRLText",
}
"""Adapters of peers' tasks (``envs/peers.py``; ``pip install actorlearner[peers]``)."""

SPLITS = ("train", "test")
"""Values of the ``split`` knob of the built-in envs (the held-out set is ``"test"``)."""


EVAL_SUITES: dict[str, str] = {"bfcl": "envs.bfcl:BFCL_SUITE"}
"""Name -> import path of each built-in evaluation suite (``actorlearner eval --bfcl``)."""


def register_envs() -> None:
    """Registers the built-in envs with gymnasium and their evaluation suites; safe to call again."""
    from actorlearner.env.suites import register_eval_suite  # not at import: actorlearner imports envs

    for env_id, entry_point in {**ENVS, **BENCHMARK_ENVS, **PEER_ENVS}.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)
    for name, path in EVAL_SUITES.items():
        register_eval_suite(name, path)
