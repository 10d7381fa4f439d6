import math
import pickle

import numpy as np
import pytest

from actorlearner.core.history import PromptHistory
from actorlearner.core.registry import PRIORITIES, RegistryError
from actorlearner.core.trajectory import Group
from actorlearner.replay import dscl
from actorlearner.replay.buffer import GroupReplayBuffer, compute_priority
from actorlearner.replay.dscl import DSCLPriority, WarmupGate
from actorlearner.replay.filters import FilterChain
from envs.rewards import TOOLRL_REWARD_RANGE
from tests.conftest import make_group, make_trajectory

# A DSCL instance without the warm-up gate or the curriculum: the 7a formula alone, on ToolRL's
# reward scale [-3, 4] (the paper's).
PLAIN = {"warmup_batches": 0, "curriculum": False, "reward_range": TOOLRL_REWARD_RANGE}


def _history(*groups: list[float]) -> PromptHistory:
    """A prompt history that recorded the given groups' rewards (the buffer records before scoring)."""
    history = PromptHistory("p0")
    for rewards in groups:
        history.record(np.array(rewards, dtype=np.float64))
    return history


def _scored(rewards: list[float], components: dict[str, float], prompt_id: str = "p0", sub_tasks=()) -> Group:
    """A group whose every trajectory has the given normalized reward components."""
    trajs = [
        make_trajectory(r, prompt_id=prompt_id).replace(reward_components=dict(components)) for r in rewards
    ]
    return Group(group_id=prompt_id, prompt_id=prompt_id, trajectories=trajs, sub_tasks=list(sub_tasks))


# -- pure math ---------------------------------------------------------------------------------


def test_normalize_and_categories():
    assert dscl.normalize(0.5, (-3.0, 4.0)) == pytest.approx(0.5)
    assert dscl.normalize(9.0, (-3.0, 4.0)) == 1.0
    assert dscl.normalize(-5.0, (-3.0, 4.0)) == 0.0
    assert dscl.categorize(4.0, 0.0, reward_max=4.0, t_mean=0.0) == "mastered"
    assert dscl.categorize(-1.0, 0.0, reward_max=4.0, t_mean=0.0) == "hard"
    assert dscl.categorize(1.0, 0.0, reward_max=4.0, t_mean=0.0) == "informative"  # no signal, not hard
    assert dscl.categorize(-1.0, 0.5, reward_max=4.0, t_mean=0.0) == "informative"
    assert dscl.categorize(3.9, 0.01, reward_max=4.0, t_mean=0.0) == "informative"


def test_priority_formula_matches_hand_computed_value():
    # eps + (1 - m) + lambda_s sqrt(V_sample) + lambda_e sqrt(V_epoch)
    assert dscl.dscl_priority(0.25, 0.04, 0.01, eps=0.01, lambda_s=1.0, lambda_e=2.0) == pytest.approx(1.16)
    assert dscl.dscl_priority(1.0, 0.0, 0.0, eps=0.01) == pytest.approx(0.01)


def test_focus_weights_multiplier_and_ema_match_hand_computed_values():
    w = dscl.focus_weights({"a": 1.0, "b": 0.8}, tau=0.2)  # logits 0 and 1
    assert w["b"] == pytest.approx(math.e / (1 + math.e))
    assert sum(w.values()) == pytest.approx(1.0)
    assert dscl.focus_weights({}) == {}
    # 1 + kappa * sum_s w_s (1 - score_s); sub-tasks without focus are ignored
    mult = dscl.curriculum_multiplier({"a": 0.25, "b": 0.75}, {"a": 1.0, "b": 0.5, "c": 0.0}, kappa=2.0)
    assert mult == pytest.approx(1.75)
    assert dscl.ema_update({"a": 0.5}, {"a": 1.0, "b": 0.2}, decay=0.8) == pytest.approx({"a": 0.6, "b": 0.2})


def test_reweight_reward_is_the_identity_under_uniform_focus():
    comps = {"format": 1.0, "name": 0.5, "keys": -0.5, "values": 1.0}
    uniform = {"name": 1 / 3, "keys": 1 / 3, "values": 1 / 3}
    assert dscl.reweight_reward(comps, uniform) == pytest.approx(2.0)
    skewed = {"name": 0.5, "keys": 0.25, "values": 0.25}  # x3/1: name 1.5, keys 0.75, values 0.75
    assert dscl.reweight_reward(comps, skewed) == pytest.approx(1.0 + 0.75 - 0.375 + 0.75)


def test_warmup_gate_needs_k_consecutive_batches_and_then_stays_open():
    gate = WarmupGate(threshold=1.0, patience=3)
    assert [gate.update(x) for x in [2.0, 2.0, 0.5, 2.0, 2.0]] == [False] * 5  # streak reset by 0.5
    assert gate.update(1.5) is True
    assert gate.update(-3.0) is True  # latched
    assert WarmupGate(1.0, 3).update(1.0) is False  # must exceed, not equal
    assert WarmupGate(1.0, 0).is_open


# -- the priority function ---------------------------------------------------------------------


def test_dscl_priority_of_an_informative_group():
    fn = DSCLPriority(**PLAIN)
    group = make_group([4.0, 2.0, 0.0, -2.0])  # mean 1, variance 5
    history = _history([-1.0, 1.0], group.rewards.tolist())  # group means 0, 1 -> V_epoch 0.25
    m = (1.0 + 3.0) / 7.0
    expected = 0.01 + (1 - m) + math.sqrt(5.0) / 7.0 + math.sqrt(0.25) / 7.0  # variances on [0, 1] scale
    assert fn(group, history) == pytest.approx(expected)
    raw = DSCLPriority(normalize_variance=False, lambda_s=0.5, lambda_e=2.0, **PLAIN)
    assert raw(group, history) == pytest.approx(0.01 + (1 - m) + 0.5 * math.sqrt(5.0) + 2.0 * 0.5)


def test_epoch_window_limits_v_epoch():
    group = make_group([1.0, 3.0])
    history = _history([-3.0, -3.0], [2.0, 2.0], group.rewards.tolist())  # means -3, 2, 2
    wide = DSCLPriority(**PLAIN)(group, history)
    narrow = DSCLPriority(epoch_window=2, **PLAIN)(group, history)  # means 2, 2 -> V_epoch 0
    assert narrow == pytest.approx(0.01 + (1 - 5 / 7) + 1 / 7)
    assert wide > narrow


def test_mastered_prompts_are_excluded_unless_revisited_and_hard_ones_down_weighted():
    mastered = make_group([4.0, 4.0, 4.0])
    history = _history(mastered.rewards.tolist())
    excluded = DSCLPriority(p_revisit=0.0, **PLAIN)
    assert excluded(mastered, history) == 0.0
    revisit = DSCLPriority(p_revisit=1.0, **PLAIN)
    assert revisit(mastered, history) == pytest.approx(0.01)  # eps + (1 - 1) + 0 + 0
    assert excluded.metrics()["dscl/excluded"] == 1
    assert revisit.metrics()["dscl/revisited"] == 1
    # the default p_revisit keeps about 5% of mastered groups
    fn = DSCLPriority(seed=1, **PLAIN)
    kept = sum(fn(mastered, history) > 0 for _ in range(2000))
    assert 60 < kept < 140

    hard = make_group([-2.0, -2.0])
    expected = (0.01 + (1 - 1 / 7)) * 0.25
    assert DSCLPriority(hard_weight=0.25, **PLAIN)(hard, _history([-2.0, -2.0])) == pytest.approx(expected)
    metrics = DSCLPriority(**PLAIN)
    metrics(hard, _history([-2.0, -2.0]))
    metrics(make_group([0.0, 1.0]), _history([0.0, 1.0]))
    out = metrics.metrics()
    assert out["dscl/category/hard"] == 1 and out["dscl/category/informative"] == 1
    assert out["dscl/category/mastered"] == 0
    assert metrics.metrics()["dscl/category/hard"] == 0  # counts reset after reading


def test_warmup_gate_keeps_priorities_uniform_until_batches_are_good():
    fn = DSCLPriority(warmup_batches=2, batch_groups=2, t_warm=1.0, p_revisit=0.0, curriculum=False)
    mastered = make_group([4.0, 4.0])
    history = _history([4.0, 4.0])
    low = make_group([0.0, 1.0])
    assert fn(mastered, history) == 1.0  # uniform before warm-up; this opens batch 1 (mean 4)
    assert fn(low, _history([0.0, 1.0])) == 1.0  # batch 1 closes: mean (8 + 1) / 4 = 2.25 > 1
    assert not fn.gate.is_open and fn.gate.streak == 1
    fn(mastered, history)
    fn(mastered, history)  # batch 2 closes with mean 4 -> open
    assert fn.gate.is_open
    assert fn(mastered, history) == 0.0
    assert fn.metrics()["dscl/warm"] == 1.0


def test_observe_batch_drives_batches_explicitly():
    fn = DSCLPriority(warmup_batches=1, batch_groups=0)
    fn(make_group([4.0, 4.0]), _history([4.0, 4.0]))  # batch_groups=0: never closes on its own
    assert fn.num_batches == 0 and not fn.gate.is_open
    fn.observe_batch([])  # closes the open batch (mean 4 > 1)
    assert fn.num_batches == 1 and fn.gate.is_open


def test_dscl_never_returns_nan_or_negative():
    fn = DSCLPriority(warmup_batches=0)
    weird = [
        make_group([float("nan"), 1.0]),
        make_group([float("nan"), float("nan")]),
        Group(group_id="empty", prompt_id="p0", trajectories=[]),
        _scored([1.0, 2.0], {"format": float("inf"), "name": float("nan")}),
        make_group([1e300, -1e300]),
    ]
    for group in weird:
        history = _history([0.0, float("nan")])
        value = compute_priority(fn, group, history)  # raises PriorityError on NaN/negative
        assert math.isfinite(value) and value >= 0


# -- the curriculum ----------------------------------------------------------------------------


def test_curriculum_shifts_focus_to_the_lagging_sub_task():
    fn = DSCLPriority(batch_groups=4, warmup_batches=0)
    history = _history([0.0, 1.0])
    phase1 = {"format": 1.0, "name": 1.0, "keys": 0.9, "values": 0.2}  # values lag
    for _ in range(5):
        for i in range(4):
            fn(_scored([0.0, 1.0], phase1, prompt_id=f"p{i}"), history)
    focus = fn.focus()
    assert max(focus, key=focus.__getitem__) == "values"
    assert focus["values"] > 0.5
    assert fn.mastery["values"] == pytest.approx(0.2)

    # a prompt weak on the lagging sub-task is sampled more than an equally rewarded strong one
    weak = fn.priority(_scored([0.0, 1.0], {**phase1, "values": 0.0}), history)[0]
    strong = fn.priority(_scored([0.0, 1.0], {**phase1, "values": 1.0}), history)[0]
    assert weak > strong

    phase2 = {"format": 1.0, "name": 1.0, "keys": 0.3, "values": 1.0}  # values learned, keys regress
    for _ in range(15):
        for i in range(4):
            fn(_scored([0.0, 1.0], phase2, prompt_id=f"p{i}"), history)
    focus = fn.focus()
    assert max(focus, key=focus.__getitem__) == "keys"
    metrics = fn.metrics()
    assert metrics["dscl/focus/keys"] == pytest.approx(focus["keys"])
    assert metrics["dscl/mastery/values"] > 0.9
    assert metrics["dscl/batches"] == 20


def test_curriculum_multiplier_applies_to_the_priority():
    fn = DSCLPriority(warmup_batches=0, kappa=2.0, batch_groups=0)
    fn.mastery = {"format": 1.0, "values": 0.0}
    w = dscl.focus_weights(fn.mastery, 0.2)
    group = _scored([0.0, 1.0], {"format": 1.0, "values": 0.5})
    base = DSCLPriority(warmup_batches=0, curriculum=False)(group, _history([0.0, 1.0]))
    assert fn(group, _history([0.0, 1.0])) == pytest.approx(base * (1 + 2.0 * w["values"] * 0.5))


def test_task_labels_are_sub_tasks():
    fn = DSCLPriority(batch_groups=2, warmup_batches=0, component_ranges={})
    history = _history([0.0, 1.0])
    for _ in range(3):
        fn(_scored([4.0, 4.0], {}, prompt_id="a", sub_tasks=["single"]), history)
        fn(_scored([-3.0, -3.0], {}, prompt_id="b", sub_tasks=["parallel"]), history)
    assert fn.mastery == pytest.approx({"task/single": 1.0, "task/parallel": 0.0})
    assert max(fn.focus(), key=fn.focus().__getitem__) == "task/parallel"


def test_a_clean_format_is_mastered_so_the_focus_goes_to_the_unmastered_task(caplog):
    # Calculator-like groups: no format problem (penalty 0); add solved, mul half solved. The format
    # penalty read on [0, 1] scores 0 (never mastered) and takes ~95% of the focus; with the
    # penalty's range the focus goes to the task that is not mastered.
    fn = DSCLPriority(
        batch_groups=2,
        warmup_batches=0,
        reward_range=(-1.0, 1.0),
        component_ranges=dscl.PENALTY_FORMAT_RANGES,
    )
    history = _history([0.0, 1.0])
    for _ in range(5):
        fn(_scored([1.0, 1.0], {"answer": 1.0, "format": 0.0}, prompt_id="a", sub_tasks=["add"]), history)
        fn(_scored([1.0, 0.0], {"answer": 0.5, "format": 0.0}, prompt_id="m", sub_tasks=["mul"]), history)
    assert fn.mastery["format"] == pytest.approx(1.0)
    focus = fn.focus()
    assert focus["format"] < 0.2 and focus["task/mul"] > 3 * focus["task/add"]  # was 0.95 on format
    # with the default ranges a format penalty is out of range: one warning names it
    default = DSCLPriority(batch_groups=2, warmup_batches=0, reward_range=(-1.0, 1.0))
    with caplog.at_level("WARNING", logger="actorlearner.replay.dscl"):
        for _ in range(3):
            default(_scored([0.0, 1.0], {"answer": 0.5, "format": -0.1}, sub_tasks=["mul"]), history)
    warned = [r for r in caplog.records if "outside its range" in r.getMessage()]
    assert len(warned) == 1 and "'format' = -0.1" in warned[0].getMessage()
    assert default.focus()["format"] > 0.9  # what the warning is about


def test_component_ranges_and_given_sub_task_scores():
    t = make_trajectory(1.0).replace(reward_components={"format": 0.5, "correct": 0.0, "other": 7.0})
    scores = dscl.trajectory_component_scores(t, {"format": (0.0, 1.0), "correct": (-3.0, 3.0)})
    assert scores == pytest.approx({"format": 0.5, "correct": 0.5})
    t.sub_task_scores = {"name": 1.0, "keys": 0.25}  # type: ignore[attr-defined]
    assert dscl.trajectory_component_scores(t, {"format": (0.0, 1.0)}) == {"name": 1.0, "keys": 0.25}


# -- registry, config, buffer ------------------------------------------------------------------


def test_dscl_resolves_to_a_fresh_instance_with_options():
    a, b = PRIORITIES.resolve("dscl"), PRIORITIES.resolve("dscl")
    assert isinstance(a, DSCLPriority) and a is not b
    c = PRIORITIES.resolve({"name": "dscl", "lambda_s": 0.5, "reward_range": [0, 1]})
    assert c.lambda_s == 0.5 and c.reward_range == (0.0, 1.0)
    assert isinstance(PRIORITIES.resolve("actorlearner.replay.dscl:DSCLPriority"), DSCLPriority)
    assert isinstance(PRIORITIES.resolve(DSCLPriority), DSCLPriority)
    with pytest.raises(RegistryError, match=r"dscl.*lambda_x"):
        PRIORITIES.resolve({"name": "dscl", "lambda_x": 1.0})
    with pytest.raises(RegistryError, match="reward_range"):
        PRIORITIES.resolve({"name": "dscl", "reward_range": [4, -3]})
    with pytest.raises(RegistryError, match="tau"):
        PRIORITIES.resolve({"name": "dscl", "tau": 0})


def test_dscl_in_config_and_buffer():
    from actorlearner import AlgorithmConfig, ConfigError

    cfg = AlgorithmConfig().replay(priority_fn={"name": "dscl", "kappa": 2.0})
    assert cfg.replay.priority_fn == {"name": "dscl", "kappa": 2.0}
    with pytest.raises((ConfigError, ValueError)):
        AlgorithmConfig().replay(priority_fn={"name": "dscl", "kapa": 2.0})

    fn = PRIORITIES.resolve({"name": "dscl", "warmup_batches": 0, "p_revisit": 0.0})
    fn = pickle.loads(pickle.dumps(fn))  # the buffer actor receives it pickled
    buf = GroupReplayBuffer(fn, FilterChain([]), max_reuse=1000)
    buf.add([make_group([4.0, 4.0], prompt_id="done", group_id="a"), make_group([0.0, 2.0], group_id="b")])
    assert len(buf) == 2
    drawn = {g.group_id for _ in range(50) for g in buf.sample(1, 0)}
    assert drawn == {"b"}  # the mastered prompt is excluded


def test_state_round_trip():
    fn = DSCLPriority(batch_groups=1, warmup_batches=1)
    fn(_scored([3.0, 3.5], {"format": 1.0, "values": 0.5}), _history([3.0, 3.5]))
    clone = DSCLPriority(batch_groups=1, warmup_batches=1)
    clone.set_state(fn.get_state())
    assert clone.mastery == fn.mastery and clone.gate.is_open and clone.num_batches == 1
    assert float(clone.rng.random()) == float(fn.rng.random())


# -- the reward scale comes from the options ---------------------------------------------------


def test_dscl_knows_no_particular_reward():
    fn = DSCLPriority()
    assert fn.reward_range == (0.0, 1.0) and fn.component_ranges is None
    assert not any(name.startswith("TOOLRL") for name in vars(dscl))
    # without component_ranges every reward component is a sub-task on [0, 1]
    t = make_trajectory(1.0).replace(reward_components={"answer": 0.5, "format": -0.2, "tool": 3.0})
    assert dscl.trajectory_component_scores(t, None) == {"answer": 0.5, "format": 0.0, "tool": 1.0}
    assert dscl.out_of_range_components(t, None) == [("format", -0.2, (0.0, 1.0)), ("tool", 3.0, (0.0, 1.0))]
    assert dscl.out_of_range_components(t, dscl.PENALTY_FORMAT_RANGES) == []
    assert dscl.trajectory_component_scores(t, {}) == {}


def test_function_calling_config_sets_toolrl_scale():
    from actorlearner import AlgorithmConfig
    from envs.rewards import TOOLRL_MAX, TOOLRL_MIN

    config = AlgorithmConfig.from_yaml("configs/function_calling.yaml")
    fn = PRIORITIES.resolve(config.replay.priority_fn)
    assert isinstance(fn, DSCLPriority)
    assert fn.reward_range == TOOLRL_REWARD_RANGE == (TOOLRL_MIN, TOOLRL_MAX)
    assert fn.component_ranges is None


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"eps": -1}, "eps must be a finite number >= 0, got -1"),
        ({"epoch_window": 2.5}, "epoch_window must be an int >= 0, got 2.5"),
        ({"p_revisit": 2}, "p_revisit must be a number in [0, 1], got 2"),
        ({"tau": 0}, "tau must be a number > 0, got 0"),
        ({"component_ranges": {"format": [1, 1]}}, "component_ranges['format'] must be a finite [low, high]"),
    ],
)
def test_bad_knobs_raise_one_line(knobs, message):
    with pytest.raises(ValueError) as caught:
        DSCLPriority(**knobs)
    assert message in str(caught.value)


def test_correctness_components_choose_what_is_reweighted():
    comps = [{"format": 1.0, "name": 1.0, "values": v} for v in (0.0, 1.0)]
    for names, changed in ((None, {"name", "values"}), (["format", "values"], {"format", "values"})):
        fn = DSCLPriority(reweight_rewards=True, batch_groups=0, correctness_components=names)
        fn.mastery = {"format": 0.0, "name": 1.0, "values": 0.5}  # format lags most: by default left alone
        group = _scored([2.0, 2.0], {})
        for t, c in zip(group.trajectories, comps, strict=True):
            t.reward_components, t.reward = dict(c), sum(c.values())
        before = [t.reward for t in group.trajectories]
        out = fn.reweight_group(group)
        assert [t.reward for t in out.trajectories] != before
        focus = fn.focus()
        chosen = sorted(changed)
        total = sum(focus[c] for c in chosen)
        for t, c in zip(out.trajectories, comps, strict=True):
            expected = sum(v for k, v in c.items() if k not in changed)
            expected += sum(len(chosen) * focus[k] / total * c[k] for k in chosen)
            assert t.reward == pytest.approx(expected)


def test_reweight_group_returns_a_new_group_and_leaves_its_input_alone():
    fn = DSCLPriority(reweight_rewards=True, batch_groups=0)
    fn.mastery = {"name": 1.0, "values": 0.0}  # values lag: they get the focus
    group = _scored([0.0, 0.0], {})
    for t, v in zip(group.trajectories, (0.0, 1.0), strict=True):
        t.reward_components, t.reward = {"name": 1.0, "values": v}, 1.0 + v
    components = [dict(t.reward_components) for t in group.trajectories]
    out = fn.reweight_group(group)
    assert out is not group
    assert list(group.rewards) == [1.0, 2.0]  # the input keeps the env's rewards
    assert [t.reward_components for t in group.trajectories] == components
    assert list(out.rewards) != [1.0, 2.0]
    assert out.rewards[1] == pytest.approx(2.0)  # all correct: the sum is kept
    assert fn.reweight_group(group) is not None
    off = DSCLPriority(reweight_rewards=False, batch_groups=0)
    off.mastery = dict(fn.mastery)
    assert off.reweight_group(group) is group  # nothing to change: the very group


def test_buffer_stores_the_reweighted_group_while_arrival_metrics_keep_the_env_rewards():
    fn = DSCLPriority(reweight_rewards=True, batch_groups=0, warmup_batches=0)
    fn.mastery = {"name": 1.0, "values": 0.0}
    buf = GroupReplayBuffer(fn, FilterChain([]))
    group = _scored([0.0, 0.0], {})
    for t, v in zip(group.trajectories, (0.0, 3.0), strict=True):
        t.reward_components, t.reward = {"name": 0.0, "values": v}, v
    buf.add([group])
    assert list(group.rewards) == [0.0, 3.0]  # the arriving group is not mutated
    stored = buf.groups[0]
    assert list(stored.rewards) != [0.0, 3.0]  # the stored group carries the reweighted rewards
    metrics = buf.pop_metrics()
    assert metrics["rollout/reward_mean"] == pytest.approx(1.5)
    assert metrics["dscl/reweight_abs_delta"] > 0


# -- every branch acts behind the shipped filter chain (issue 9, defect 2) ---------------------


def test_prompt_category_takes_the_window_majority_when_the_newest_group_has_spread():
    cat = lambda means, variances, share=0.5: dscl.prompt_category(means, variances, 4.0, 0.0, share=share)  # noqa: E731
    assert cat([4.0], [0.0]) == "mastered"  # the newest group decides when it has no spread
    assert cat([1.0, 1.0, -2.0], [0.5, 0.5, 0.0]) == "hard"
    assert cat([4.0, 4.0, 3.5], [0.0, 0.0, 0.25]) == "mastered"  # 2 of 3 mastered: a slip
    assert cat([4.0, 3.5], [0.0, 0.25]) == "informative"  # 1 of 2 is not more than half
    assert cat([-2.0, -2.0, -1.0], [0.0, 0.0, 1.0]) == "hard"
    assert cat([-2.0, 4.0, -1.0], [0.0, 0.0, 1.0]) == "informative"  # no category holds a majority
    assert cat([4.0, 4.0, 3.5], [0.0, 0.0, 0.25], share=1.0) == "informative"  # the paper's rule
    assert cat([], []) == "informative"


def _shipped_buffer(**knobs) -> GroupReplayBuffer:
    """The buffer as configs/function_calling.yaml builds it: its DSCL and its filter chain, in order."""
    from actorlearner import AlgorithmConfig
    from actorlearner.core.registry import FILTERS

    config = AlgorithmConfig.from_yaml("configs/function_calling.yaml")
    spec = {**config.replay.priority_fn, "warmup_batches": 0, **knobs}
    names = [f if isinstance(f, str) else f["name"] for f in config.replay.filters]
    assert {"uniform_tool_outcome", "zero_variance"} <= set(names)
    chain = FilterChain(
        [(name, FILTERS.resolve(f)) for name, f in zip(names, config.replay.filters, strict=True)]
    )
    return GroupReplayBuffer(PRIORITIES.resolve(spec), chain, max_reuse=1000)


def _stored_priority(buf: GroupReplayBuffer, group_id: str) -> float:
    return float(buf._priority[buf._slot_of[group_id]])


def test_each_dscl_branch_acts_through_the_shipped_filter_chain():
    buf = _shipped_buffer(p_revisit=0.0, curriculum=False)
    fn = buf.priority_fn
    # mastered: two flawless groups (dropped by the filters, still recorded), then one with a slip
    buf.add([make_group([4.0] * 4, "m", group_id="m1"), make_group([4.0] * 4, "m", group_id="m2")])
    assert len(buf) == 0
    buf.add([make_group([4.0, 4.0, 4.0, 2.0], "m", group_id="m3")])
    assert len(buf) == 1 and _stored_priority(buf, "m3") == 0.0  # stored, never drawn
    assert buf.prompts_to_skip()[0] == ["m"]  # and the runners skip the prompt
    # hard: two failing groups, then one lucky rollout; the same group of a fresh prompt is informative
    buf.add([make_group([-3.0] * 4, "h", group_id=f"h{i}") for i in (1, 2)])
    lucky = [-3.0, -3.0, -3.0, 1.0]
    buf.add([make_group(lucky, "h", group_id="h3"), make_group(lucky, "fresh", group_id="f1")])
    m, v = (np.mean(lucky) + 3) / 7, np.var(lucky) / 49
    v_epoch = np.var([-3.0, -3.0, np.mean(lucky)]) / 49
    assert fn.hard_weight == 0.5
    assert _stored_priority(buf, "h3") == pytest.approx(
        0.5 * (0.01 + (1 - m) + math.sqrt(v) + math.sqrt(v_epoch))
    )
    # informative: the 7a formula
    assert _stored_priority(buf, "f1") == pytest.approx(0.01 + (1 - m) + math.sqrt(v))
    drawn = {g.group_id for _ in range(30) for g in buf.sample(2, 0)}
    assert drawn == {"h3", "f1"}
    metrics = buf.pop_metrics()
    assert metrics["dscl/excluded"] == 1 and metrics["dscl/down_weighted"] == 1
    assert metrics["dscl/category/mastered"] == 2 and metrics["dscl/category/hard"] == 2
    # the zero-spread groups were dropped before storage (by TAO-RL's reference rule, first in line)
    assert metrics["filter/uniform_tool_outcome/groups_dropped"] == 4


def test_the_curriculum_acts_through_the_shipped_filter_chain():
    on, off = _shipped_buffer(batch_groups=1), _shipped_buffer(batch_groups=1, curriculum=False)
    for buf in (on, off):  # one batch where "values" lags: it gets the focus
        buf.add([_scored([1.0, 2.0], {"format": 1.0, "name": 1.0, "values": 0.0}, prompt_id="warm")])
        buf.add([_scored([1.0, 2.0], {"format": 1.0, "name": 1.0, "values": 0.2}, prompt_id="q")])
    focus = on.priority_fn.focus()
    assert max(focus, key=focus.get) == "values"
    multiplier = dscl.curriculum_multiplier(focus, {"format": 1.0, "name": 1.0, "values": 0.2})
    assert multiplier > 1.5
    ratio = _stored_priority(on, "q") / _stored_priority(off, "q")
    assert ratio == pytest.approx(multiplier, rel=0.05)
