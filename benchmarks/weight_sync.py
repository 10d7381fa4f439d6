"""P7: weight sync, from the learner's weights to every runner generating with them, vs a memcpy.

For each model (the embedded tiny model's shape, and a ~100M-parameter random model of the same
architecture), an algorithm is built on a local Ray runtime (2 runners of 0.5 CPU, a 1-CPU
learner, ``--runners`` to change) and, in each of ``--rounds`` rounds:

1. ``memcpy``: the baseline, one plain copy of the published bytes in this process
   (``torch.Tensor.copy_`` of the learner's one flat buffer, or of every array when it publishes a
   dict, into preallocated tensors), measured in the same round so that both see the same machine;
2. ``sync``: the learner's weights go to every runner (``Algorithm.sync_weights``: the learner
   copies them into Ray's object store once, each runner fetches them and stages them);
3. ``ready``: each idle runner's batching engine loads staged weights at once
   (``AsyncBatchingEngine.stage_weights``) and stamps the time (``loaded_at``, the machine's
   monotonic clock, which every process here shares); ``total`` runs from the start of the sync
   to the last runner's stamp: the learner's step end to every runner able to generate with the
   new version.

Reported: medians over the rounds, ``ratio``, the median of each round's ``total / memcpy``
(goal <= 2), and the mean, 90th percentile and largest ``total`` with the number of slow rounds
(over 4x the median): Ray's object store stalls now and then (docs/cluster.md, "Weight sync").

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


def _loaded_at(runner: Any) -> float | None:
    """Inside a runner actor: when its engine last loaded staged weights (``time.perf_counter``)."""
    return runner.batcher.loaded_at


def _ready_at(runners: list[Any], after: float, deadline_s: float = 60.0) -> float:
    """The latest load stamp of the runners once every one has loaded weights since ``after``."""
    import ray

    give_up = time.perf_counter() + deadline_s
    while time.perf_counter() < give_up:
        stamps = ray.get([r.actor.__ray_call__.remote(_loaded_at) for r in runners])
        if all(at is not None and at > after for at in stamps):
            return max(stamps)
        time.sleep(0.002)
    raise TimeoutError(f"runners did not load the weights within {deadline_s} s")


def _published(weights: Mapping[str, Any]) -> list[Any]:
    """The arrays the learner publishes: for packed weights the one flat buffer (tied parameters
    once) and any extra arrays, otherwise every array."""
    return weights.buffers() if isinstance(weights, PackedWeights) else list(weights.values())


def _copier(weights: Mapping[str, Any]) -> Any:
    """A function that copies the published arrays into preallocated tensors once."""
    import torch

    sources = [torch.tensor(v) for v in _published(weights)]
    out = [torch.empty_like(v) for v in sources]

    def copy() -> None:
        for dst, src in zip(out, sources, strict=True):
            dst.copy_(src)

    copy()  # touches the destination pages
    return copy


def measure(name: str, runners: int, rounds: int, ray_setup: list[str]) -> dict[str, Any]:
    """One model: median sync, total and memcpy seconds, and the median ratio of the rounds."""
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
            copy = _copier(weights)
            times: dict[str, list[float]] = {"memcpy": [], "sync": [], "total": []}
            for _ in range(rounds + 1):  # the first round warms up
                start = time.perf_counter()
                copy()
                copied = time.perf_counter()
                algo.sync_weights()
                synced = time.perf_counter()
                ready = _ready_at(algo.runners, after=copied)
                times["memcpy"].append(copied - start)
                times["sync"].append(synced - copied)
                times["total"].append(ready - copied)
        finally:
            algo.stop()
    rest = {k: v[1:] for k, v in times.items()}
    rest["ratio"] = [t / m for t, m in zip(rest["total"], rest["memcpy"], strict=True)]
    med = {k: statistics.median(v) for k, v in rest.items()}
    total = sorted(rest["total"])
    return {
        "model": name,
        "weights_mb": round(size_mb, 1),
        "runners": runners,
        **{f"{k}_ms": round(med[k] * 1e3, 1) for k in ("sync", "total", "memcpy")},
        "ratio": round(med["ratio"], 2),
        "mean_total_ms": round(statistics.fmean(total) * 1e3, 1),
        "p90_total_ms": round(total[int(0.9 * (len(total) - 1))] * 1e3, 1),
        "max_total_ms": round(total[-1] * 1e3, 1),
        "slow_rounds": sum(t > 4 * med["total"] for t in total),
        "ratios": [round(r, 2) for r in rest["ratio"]],
    }


def main() -> None:
    """Measures each model and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
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
    print("| model | weights MB | sync ms | total ms | memcpy ms | total / memcpy | mean/p90/max ms | slow |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['weights_mb']} | {r['sync_ms']} | {r['total_ms']} "
            f"| {r['memcpy_ms']} | {r['ratio']} | {r['mean_total_ms']} / {r['p90_total_ms']} / "
            f"{r['max_total_ms']} | {r['slow_rounds']} |"
        )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
