"""Generation tokens/s of the vllm engine vs the hf engine on this CPU, side by side.

For each model (the embedded tiny model's shape, and a ~100M-parameter random model of the same
architecture), one process builds the model directory, then both engines generate the same batch
(``--batch`` prompts of 24-72 random ids, ``--new`` sampled tokens each, temperature 1, no stop
id) in alternating rounds; reported: sampled tokens per second, median over ``--rounds``, and the
ratio vllm / hf. Both engines get the same thread count (``OMP_NUM_THREADS``, default 2). vLLM keeps
process-wide state, so each model runs in its own process.

Run in .venv-vllm (``make test-vllm`` builds it): ``.venv-vllm/bin/python benchmarks/engines.py``
(about 3 minutes). Writes ``benchmarks/results/engines.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = {
    "tiny": {
        "hidden_size": 128,
        "num_layers": 4,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 512,
    },
    "~100M": {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "num_kv_heads": 4,
        "intermediate_size": 3072,
    },
}


def _measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """In this process: both engines on one model, alternating rounds."""
    import numpy as np
    import torch

    from actorlearner.core.protocols import SamplingParams
    from actorlearner.models.tiny import build_tiny_model
    from actorlearner.rollout.engine import HFEngine
    from actorlearner.rollout.vllm_engine import VLLMEngine

    corpus = ["What is 37 * 52? Use the calculator tool.", "<tool_call></tool_call><answer></answer>"]
    model_dir = build_tiny_model(corpus, Path(tempfile.mkdtemp()) / "m", **MODELS[name])
    params_m = sum(p.numel() for p in HFEngine(model_dir).model.parameters()) / 1e6
    engines = {"hf": HFEngine(model_dir, seed=0), "vllm": VLLMEngine(model_dir, seed=0, max_model_len=512)}
    rng = np.random.default_rng(0)
    prompts = [rng.integers(20, 300, size=int(rng.integers(24, 72))).tolist() for _ in range(args.batch)]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.new)
    for engine in engines.values():  # warm-up
        engine.generate(prompts[:4], SamplingParams(temperature=1.0, max_new_tokens=4))
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.rounds):
        for label, engine in engines.items():
            start = time.perf_counter()
            gens = engine.generate(prompts, sampling)
            rates[label].append(sum(len(g.token_ids) for g in gens) / (time.perf_counter() - start))
    hf, vllm = statistics.median(rates["hf"]), statistics.median(rates["vllm"])
    return {"model": name, "params_m": round(params_m, 1), "threads": torch.get_num_threads(),
            "hf_tok_s": round(hf), "vllm_tok_s": round(vllm), "ratio": round(vllm / hf, 2),
            "rounds": rates}  # fmt: skip


def main() -> None:
    """Runs each model in its own process and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default=os.environ.get("OMP_NUM_THREADS", "2"))
    parser.add_argument("--model", help=argparse.SUPPRESS)  # the child process: one model
    parser.add_argument("--out", default="benchmarks/results/engines.json")
    args = parser.parse_args()
    if args.model:
        print(json.dumps(_measure(args.model, args)))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_LOGGING_LEVEL": "ERROR"}
    for name in MODELS:
        cmd = [sys.executable, __file__, "--model", name, "--batch", str(args.batch), "--new", str(args.new),
               "--rounds", str(args.rounds)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            sys.exit(f"engines: {name} failed: {done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"batch": args.batch, "new_tokens": args.new, "rows": rows}, indent=2)
    )
    print(f"batch {args.batch}, {args.new} new tokens, temperature 1, {args.threads} threads")
    print(f"{'model':<14}{'params':>9}{'hf tok/s':>10}{'vllm tok/s':>12}{'vllm/hf':>9}")
    for r in rows:
        print(f"{r['model']:<14}{r['params_m']:>8}M{r['hf_tok_s']:>10}{r['vllm_tok_s']:>12}{r['ratio']:>9}")


if __name__ == "__main__":
    main()
