"""Replay throughput: our sum-tree and buffer vs RLlib's ``SumSegmentTree`` and prioritized buffer.

Two comparisons, each measured side by side in one invocation (ours and RLlib's alternate in short
rounds, so both see the same machine load), reported as items per second and ours/RLlib ratios:

* **Tree**: ``SumTree`` vs ``ray.rllib.execution.segment_tree.SumSegmentTree``
  at 10^4, 10^5 and 10^6 leaves, pre-filled with random priorities. One cycle = write B priorities
  at the next ring positions (insert), find B prefix sums drawn uniformly in ``[0, total)``
  (sample), write B new priorities at the sampled leaves (priority update). Both get the same
  pre-generated numbers; RLlib's gets them as Python lists, which its per-item API wants.
* **Buffer**: :class:`actorlearner.replay.buffer.GroupReplayBuffer` vs
  ``ray.rllib.utils.replay_buffers.prioritized_episode_buffer.PrioritizedEpisodeReplayBuffer``,
  each filled to capacity (so every insert evicts the oldest items). One cycle = ``add`` B items,
  ``sample`` B, ``update_priorities`` of those B. Our items are small one-episode groups going
  through the real insertion path (prompt history, filter chain, priority function); RLlib's are
  one-step ``SingleAgentEpisode`` s (its capacity counts time steps, so one step = one item).

Run: ``.venv/bin/python benchmarks/buffer.py`` (about 5 minutes) or ``--quick`` (under a minute).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from actorlearner.core.trajectory import Group, Trajectory, TurnRecord
from actorlearner.replay.buffer import GroupReplayBuffer
from actorlearner.replay.filters import FilterChain
from actorlearner.replay.priorities import uniform
from actorlearner.replay.sumtree import SumTree

OPS = ("insert", "sample", "update")


def _side_by_side(
    ours: Callable[[], dict[str, float]], theirs: Callable[[], dict[str, float]], budget_s: float, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Alternates ``rounds`` rounds of each; a round runs cycles until ``budget_s / rounds`` passes.

    Two untimed cycles of each come first. Each callable runs one cycle and returns the seconds it
    spent in each op; the result is, per side, the seconds summed per op and the number of cycles.
    """
    for fn in (ours, theirs):  # warm-up: first calls pay one-time costs (RLlib sets up metrics)
        for _ in range(2):
            fn()
    totals: list[dict[str, float]] = [dict.fromkeys((*OPS, "cycles"), 0.0) for _ in range(2)]
    for _ in range(rounds):
        for fn, tot in ((ours, totals[0]), (theirs, totals[1])):
            start = time.perf_counter()
            while True:
                for op, secs in fn().items():
                    tot[op] += secs
                tot["cycles"] += 1
                if time.perf_counter() - start >= budget_s / rounds:
                    break
    return totals[0], totals[1]


def _rates(totals: dict[str, float], batch: int) -> dict[str, float]:
    """Items per second of each op, and of a whole cycle (B inserts + B samples + B updates)."""
    items = totals["cycles"] * batch
    out = {op: items / totals[op] for op in OPS}
    out["cycle"] = items / sum(totals[op] for op in OPS)
    out["cycles_measured"] = totals["cycles"]
    return out


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# --- tree ------------------------------------------------------------------------------------------


def _rllib_tree(priorities: np.ndarray) -> Any:
    """A ``SumSegmentTree`` holding ``priorities``, built with numpy (setting 10^6 items one by one
    through its API would take longer than the whole benchmark)."""
    from ray.rllib.execution.segment_tree import SumSegmentTree

    cap = 1 << (len(priorities) - 1).bit_length()
    tree = SumSegmentTree(cap)
    value = np.zeros(2 * cap)
    value[cap : cap + len(priorities)] = priorities
    lo = cap
    while lo > 1:
        value[lo // 2 : lo] = value[lo : 2 * lo : 2] + value[lo + 1 : 2 * lo : 2]
        lo //= 2
    tree.set_state(value.tolist())
    return tree


def bench_tree(
    capacity: int, batch: int, budget_s: float, rounds: int, fanout: int = 32, seed: int = 0
) -> dict[str, Any]:
    """One capacity of the tree comparison."""
    rng = np.random.default_rng(seed)
    initial = rng.random(capacity) + 0.01
    ours = SumTree(capacity, fanout=fanout)
    ours.set_all(initial)
    theirs = _rllib_tree(initial)
    pool = 256
    new_p = rng.random((pool, batch)) + 0.01
    upd_p = rng.random((pool, batch)) + 0.01
    draws = rng.random((pool, batch))
    new_l, upd_l, draws_l = new_p.tolist(), upd_p.tolist(), draws.tolist()
    state = {"ours": 0, "theirs": 0}

    def ring(k: int) -> np.ndarray:
        return (np.arange(batch) + k * batch) % capacity

    rings = [ring(k) for k in range(pool)]
    rings_l = [r.tolist() for r in rings]

    def our_cycle() -> dict[str, float]:
        k = state["ours"] % pool
        state["ours"] += 1
        t0 = time.perf_counter()
        ours.update(rings[k], new_p[k])
        t1 = time.perf_counter()
        idx = ours.find(draws[k] * ours.total)
        t2 = time.perf_counter()
        ours.update(idx, upd_p[k])
        t3 = time.perf_counter()
        return {"insert": t1 - t0, "sample": t2 - t1, "update": t3 - t2}

    def their_cycle() -> dict[str, float]:
        k = state["theirs"] % pool
        state["theirs"] += 1
        t0 = time.perf_counter()
        for i, p in zip(rings_l[k], new_l[k], strict=True):
            theirs[i] = p
        t1 = time.perf_counter()
        total = theirs.sum()
        idx = [theirs.find_prefixsum_idx(u * total) for u in draws_l[k]]
        t2 = time.perf_counter()
        for i, p in zip(idx, upd_l[k], strict=True):
            theirs[i] = p
        t3 = time.perf_counter()
        return {"insert": t1 - t0, "sample": t2 - t1, "update": t3 - t2}

    # The same operations on the same numbers must give the same leaves (up to rounding at interval
    # edges): replay a few identical cycles on copies of both trees before timing.
    ours_copy, theirs_copy = SumTree(capacity, fanout=fanout), _rllib_tree(initial)
    ours_copy.set_all(initial)
    matches = []
    for k in range(20):
        ours_copy.update(rings[k], new_p[k])
        for i, p in zip(rings_l[k], new_l[k], strict=True):
            theirs_copy[i] = p
        a = ours_copy.find(draws[k] * ours_copy.total)
        total = theirs_copy.sum()
        b = [theirs_copy.find_prefixsum_idx(u * total) for u in draws_l[k]]
        matches.append(np.mean(a == np.array(b)))
        ours_copy.update(a, upd_p[k])
        for i, p in zip(b, upd_l[k], strict=True):
            theirs_copy[i] = p
    agree = float(np.mean(matches))
    assert agree > 0.99, f"trees disagree on {1 - agree:.1%} of queries"
    ours_t, theirs_t = _side_by_side(our_cycle, their_cycle, budget_s, rounds)
    return {"ours": _rates(ours_t, batch), "rllib": _rates(theirs_t, batch), "agreement": float(agree)}


# --- buffer ----------------------------------------------------------------------------------------


def _groups(count: int, num_prompts: int = 1000) -> list[Group]:
    """``count`` one-trajectory groups sharing one small trajectory (ids unique)."""
    traj = Trajectory(
        token_ids=np.arange(1, 9, dtype=np.int32),
        loss_mask=np.array([0.0] * 4 + [1.0] * 4, dtype=np.float32),
        logprobs=np.zeros(8, dtype=np.float32),
        turn_index=np.array([-1] * 4 + [0] * 4, dtype=np.int32),
        post_tool=np.zeros(8, dtype=np.int8),
        prompt_length=4,
        turns=[TurnRecord(index=0, text="x", start=4, end=8, policy_version=0)],
        reward=1.0,
        reward_components={"answer": 1.0},
        policy_versions=[0],
        prompt_id="p",
    )
    trajs: list[Trajectory] = [traj]
    subs: list[str] = []
    return [
        Group(group_id=str(i), prompt_id=str(i % num_prompts), trajectories=trajs, sub_tasks=subs)
        for i in range(count)
    ]


def _episodes(count: int) -> list[Any]:
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    return [
        SingleAgentEpisode(
            id_=str(i),
            observations=[np.float32(0.0), np.float32(1.0)],
            actions=[0],
            rewards=[1.0],
            terminated=True,
            len_lookback_buffer=0,
        )
        for i in range(count)
    ]


def bench_buffer(
    capacity: int, batch: int, budget_s: float, rounds: int, run_rllib: bool, fanout: int = 32, seed: int = 0
) -> dict[str, Any]:
    """One capacity of the buffer comparison (RLlib's side only if ``run_rllib``)."""
    rng = np.random.default_rng(seed)
    extra = 64 * batch  # items cycle through a pool; an item is re-added only long after eviction
    pool_size = capacity + extra
    upd = (rng.random((256, batch)) + 0.01).tolist()
    result: dict[str, Any] = {}

    groups = _groups(pool_size)
    ours = GroupReplayBuffer(
        uniform,
        FilterChain([]),
        capacity=capacity,
        max_reuse=10**9,
        max_staleness=10**9,
        seed=seed,
        fanout=fanout,
    )
    _, result["ours_fill_s"] = _timed(
        lambda: [ours.add(groups[i : min(i + 1024, capacity)]) for i in range(0, capacity, 1024)]
    )
    state = {"ours": capacity, "theirs": capacity, "k": 0}

    def our_cycle() -> dict[str, float]:
        i = state["ours"] % pool_size
        state["ours"] += batch
        new = [groups[(i + j) % pool_size] for j in range(batch)]
        t0 = time.perf_counter()
        ours.add(new)
        t1 = time.perf_counter()
        sampled = ours.sample(batch, 0)
        t2 = time.perf_counter()
        ours.update_priorities([g.group_id for g in sampled], upd[state["ours"] % 256][: len(sampled)])
        t3 = time.perf_counter()
        return {"insert": t1 - t0, "sample": t2 - t1, "update": t3 - t2}

    if not run_rllib:
        our_cycle(), our_cycle()
        totals = dict.fromkeys((*OPS, "cycles"), 0.0)
        start = time.perf_counter()
        while time.perf_counter() - start < budget_s / 2:
            for op, secs in our_cycle().items():
                totals[op] += secs
            totals["cycles"] += 1
        result["ours"] = _rates(totals, batch)
        return result

    from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import PrioritizedEpisodeReplayBuffer

    episodes = _episodes(pool_size)
    theirs = PrioritizedEpisodeReplayBuffer(capacity=capacity, alpha=0.6)
    _, result["rllib_fill_s"] = _timed(
        lambda: [theirs.add(episodes[i : min(i + 1024, capacity)]) for i in range(0, capacity, 1024)]
    )

    def their_cycle() -> dict[str, float]:
        i = state["theirs"] % pool_size
        state["theirs"] += batch
        new = [episodes[(i + j) % pool_size] for j in range(batch)]
        t0 = time.perf_counter()
        theirs.add(new)
        t1 = time.perf_counter()
        theirs.sample(num_items=batch, beta=0.4)
        t2 = time.perf_counter()
        theirs.update_priorities(np.asarray(upd[state["theirs"] % 256]))
        t3 = time.perf_counter()
        return {"insert": t1 - t0, "sample": t2 - t1, "update": t3 - t2}

    ours_t, theirs_t = _side_by_side(our_cycle, their_cycle, budget_s, rounds)
    assert len(ours) == capacity and theirs.get_num_timesteps() == capacity
    result["ours"], result["rllib"] = _rates(ours_t, batch), _rates(theirs_t, batch)
    return result


# --- report ----------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _table(results: dict[str, dict[int, dict[str, Any]]]) -> str:
    rows = [
        "| structure | capacity | op (B items) | ours items/s | RLlib items/s | ours / RLlib |",
        "|---|---|---|---|---|---|",
    ]
    names = {"tree": "sum-tree vs `SumSegmentTree`", "buffer": "buffer vs `PrioritizedEpisodeReplayBuffer`"}
    for kind, by_cap in results.items():
        for cap, res in by_cap.items():
            for op in (*OPS, "cycle"):
                ours = res["ours"][op]
                theirs = res.get("rllib", {}).get(op)
                ratio = f"**{ours / theirs:,.1f}x**" if theirs else "n/a"
                rows.append(
                    f"| {names[kind]} | {cap:.0e} | {op} | {_fmt(ours)} | "
                    f"{_fmt(theirs) if theirs else 'not run'} | {ratio} |"
                )
    return "\n".join(rows)


def main() -> None:
    """Runs both comparisons and prints a markdown table and one JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short budgets, buffer at 10^4 only")
    parser.add_argument("--batch", type=int, default=32, help="B: items inserted, sampled, updated per cycle")
    parser.add_argument("--fanout", type=int, default=32, help="children per node of our sum-tree")
    parser.add_argument("--tree-capacities", default="1e4,1e5,1e6")
    parser.add_argument("--buffer-capacities", default="1e4,1e5,1e6")
    parser.add_argument(
        "--rllib-buffer-max",
        type=float,
        default=1e5,
        help="largest capacity at which RLlib's buffer is run (filling 10^6 episodes takes many GB)",
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds per capacity (both sides)")
    args = parser.parse_args()
    budget = args.budget or (1.0 if args.quick else 10.0)
    rounds = 3 if args.quick else 5
    tree_caps = [int(float(c)) for c in args.tree_capacities.split(",") if c]
    buffer_caps = [int(float(c)) for c in args.buffer_capacities.split(",") if c]
    if args.quick:
        buffer_caps = [c for c in buffer_caps if c <= 10_000]

    results: dict[str, dict[int, dict[str, Any]]] = {"tree": {}, "buffer": {}}
    for cap in tree_caps:
        results["tree"][cap] = bench_tree(cap, args.batch, budget, rounds, args.fanout)
        gc.collect()
    for cap in buffer_caps:
        results["buffer"][cap] = bench_buffer(
            cap, args.batch, budget, rounds, cap <= args.rllib_buffer_max, args.fanout
        )
        gc.collect()

    print(_table(results))
    ratios = {
        f"{kind}/{cap:.0e}/{op}": res["ours"][op] / res["rllib"][op]
        for kind, by_cap in results.items()
        for cap, res in by_cap.items()
        if "rllib" in res
        for op in (*OPS, "cycle")
    }
    print(
        json.dumps(
            {
                "benchmark": "buffer",
                "batch": args.batch,
                "quick": args.quick,
                "budget_s": budget,
                "fanout": args.fanout,
                "python": platform.python_version(),
                "numpy": np.__version__,
                "ratios": ratios,
                "results": {k: {str(c): r for c, r in v.items()} for k, v in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
