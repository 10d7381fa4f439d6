"""P7: weight sync, from the learner's weights to every runner generating with them, vs a memcpy.

For each model (the embedded tiny model's shape, and a ~100M-parameter random model of the same
architecture), an algorithm is built on a local Ray runtime (2 runners of 0.5 CPU, a 1-CPU
learner, ``--runners`` to change) and, in each of ``--rounds`` rounds:

1. ``sync``: the learner's weights go to every runner (``Algorithm.sync_weights``: the learner
   copies them into Ray's object store once, each runner fetches them and stages them);
2. ``load``: every runner's engine loads the staged weights (what it does before its next
   generation step), all runners at once;

``total`` = sync + load is the time from the learner's step end to every runner able to generate
with the new version. The baseline is one plain copy of the published bytes in this process
(``torch.Tensor.copy_`` of the learner's one flat buffer, or of every array when it publishes a
dict, into preallocated tensors). Reported: medians, and
``ratio = total / memcpy`` (goal <= 2).

Run: ``.venv/bin/python benchmarks/weight_sync.py`` (about 2 minutes). Writes
``benchmarks/results/weight_sync.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from actorlearner import AlgorithmConfig
from actorlearner.core.weights import PackedWeights

MODELS = {
    "tiny": [],  # configs/calculator.yaml's model
    "~100M": [
        "model.hidden_size=768",
        "model.num_layers=12",
        "model.num_heads=12",
        "model.num_kv_heads=4",
        "model.intermediate_size=3072",
    ],
}


def _load_staged(runner: Any) -> float:
    """Inside a runner actor: loads its staged weights into the engine now; returns the seconds."""
    batcher = runner.batcher
    weights, version = batcher._staged
    batcher._staged = None
    start = time.perf_counter()
    batcher.engine.load_weights(weights, version)
    return time.perf_counter() - start


def _published(weights: Mapping[str, Any]) -> list[Any]:
    """The arrays the learner publishes: for packed weights the one flat buffer (tied parameters
    once) and any extra arrays, otherwise every array."""
    return weights.buffers() if isinstance(weights, PackedWeights) else list(weights.values())


def _memcpy_s(weights: Mapping[str, Any], rounds: int) -> float:
    """Median seconds of one copy of the published arrays into preallocated tensors."""
    import torch

    sources = [torch.tensor(v) for v in _published(weights)]
    out = [torch.empty_like(v) for v in sources]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for dst, src in zip(out, sources, strict=True):
            dst.copy_(src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, runners: int, rounds: int, ray_setup: list[str]) -> dict[str, Any]:
    """One model: median sync, load, total and memcpy seconds, and the ratio."""
    import ray

    from actorlearner.learn.learner import Learner

    with tempfile.TemporaryDirectory() as run_dir:
        config = AlgorithmConfig.from_yaml(
            "configs/calculator.yaml",
            [
                *MODELS[name],
                *ray_setup,
                f"env_runners.num_env_runners={runners}",
                "env_runners.num_cpus_per_runner=0.5",
                "sft.enabled=false",
                f"reporting.run_dir={run_dir}",
                "reporting.progress=false",
                "reporting.tensorboard=false",
            ],
        )
        algo = config.build()
        try:
            weights = algo.runtime.run(algo.learner.call(Learner.get_weights))
            size_mb = sum(a.nbytes for a in _published(weights)) / 2**20
            sync, load, total = [], [], []
            for _ in range(rounds + 1):  # the first round warms up
                start = time.perf_counter()
                algo.sync_weights()
                synced = time.perf_counter()
                ray.get([r.actor.__ray_call__.remote(_load_staged) for r in algo.runners])  # type: ignore[attr-defined]
                end = time.perf_counter()
                sync.append(synced - start)
                load.append(end - synced)
                total.append(end - start)
            memcpy = _memcpy_s(weights, rounds)
        finally:
            algo.stop()
    med = {k: statistics.median(v[1:]) for k, v in {"sync": sync, "load": load, "total": total}.items()}
    return {
        "model": name,
        "weights_mb": round(size_mb, 1),
        "runners": runners,
        **{f"{k}_ms": round(v * 1e3, 1) for k, v in med.items()},
        "memcpy_ms": round(memcpy * 1e3, 1),
        "ratio": round(med["total"] / memcpy, 2),
    }


def main() -> None:
    """Measures each model and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/weight_sync.json")
    parser.add_argument(
        "--object-store-mb", type=int, default=None, help="debugging.ray_object_store_mb (default: Ray's)"
    )
    parser.add_argument(
        "--preallocate", action="store_true", help="debugging.ray_preallocate_object_store=true"
    )
    args = parser.parse_args()
    ray_setup = [f"debugging.ray_preallocate_object_store={str(args.preallocate).lower()}"]
    if args.object_store_mb:
        ray_setup.append(f"debugging.ray_object_store_mb={args.object_store_mb}")
    rows = [measure(name, args.runners, args.rounds, ray_setup) for name in MODELS]
    print("| model | weights MB | sync ms | load ms | total ms | memcpy ms | total / memcpy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['weights_mb']} | {r['sync_ms']} | {r['load_ms']} | {r['total_ms']} "
            f"| {r['memcpy_ms']} | {r['ratio']} |"
        )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
