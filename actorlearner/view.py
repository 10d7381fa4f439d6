"""``actorlearner view RUN_DIR``: one self-contained HTML page of what the learner saw.

Reads ``RUN_DIR/samples.jsonl`` (written by the replay buffer, ``reporting.log_samples``) and shows,
per learner draw, the logged groups: each trajectory's tokens decoded in runs, with the prompt,
the sampled assistant tokens (trained: loss mask > 0; sampled but masked by a filter) and the
observation tokens told apart; its tool calls and their results; the reward, its components and the
group advantage (``training.advantage`` of the run's ``config.json``, before the overlong penalty
and entropy shaping); and per group the priority the draw used, the inclusion probability, the
importance weight, the staleness and what the filters did. Groups the filters dropped are listed
after the draw they preceded. The page has no scripts and loads nothing.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from actorlearner.core.errors import ConfigError
from actorlearner.replay.samplelog import RUN_FILE, SAMPLES_FILE

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
.group{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
.dropped{border-color:#d33;background:#fff5f5} .meta{color:#555;font-size:13px}
table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
.tokens{white-space:pre-wrap;font:12px/1.5 ui-monospace,monospace;background:#f6f6f6;padding:8px;
border-radius:4px}
.prompt{color:#666} .trained{background:#c9f2c9} .masked{background:#ffd8a8;text-decoration:line-through}
.obs{background:#dde6f5;color:#234} .call{font:12px ui-monospace,monospace;margin:2px 0}
.ok{color:#17672b} .err{color:#b00020} .legend span{padding:1px 6px;margin-right:8px;border-radius:3px}
"""


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """The logged groups of ``run_dir`` (lines that do not parse, e.g. cut by a crash, are skipped).

    Raises:
        ConfigError: If ``run_dir`` has no ``samples.jsonl``.
    """
    path = run_dir / SAMPLES_FILE
    if not path.is_file():
        raise ConfigError(
            f"view: {run_dir} has no {SAMPLES_FILE}; pass a run directory written by train "
            "with reporting.log_samples > 0"
        )
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def load_tokenizer(run_dir: Path, path: str | None = None) -> Any:
    """The run's tokenizer (``path``, else ``run.json``'s model path), or None if it cannot be loaded."""
    if path is None:
        try:
            path = json.loads((run_dir / RUN_FILE).read_text())["model_path"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def advantages(rewards: list[float], estimator: Any) -> list[float] | None:
    """The group's advantages with the run's estimator; None when it cannot be resolved here."""
    from actorlearner.learn.losses import group_advantages

    try:
        return [float(a) for a in group_advantages(np.asarray(rewards, dtype=np.float64), estimator)]
    except Exception:  # a user's estimator may not import in the viewer: show none rather than fail
        return None


def token_runs(traj: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """Consecutive tokens of one kind: ``prompt``, ``trained``, ``masked`` (sampled, mask 0) or ``obs``."""
    ids, mask = traj["token_ids"], traj["loss_mask"]
    sampled = np.zeros(len(ids), dtype=bool)
    for turn in traj["turns"]:
        sampled[turn["start"] : turn["end"]] = True
    runs: list[tuple[str, list[int]]] = []
    for i, token in enumerate(ids):
        kind = (
            "prompt"
            if i < traj["prompt_length"]
            else ("trained" if mask[i] > 0 else "masked")
            if sampled[i]
            else "obs"
        )
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(token)
        else:
            runs.append((kind, [token]))
    return runs


def _decode(tokenizer: Any, ids: list[int]) -> str:
    if tokenizer is None:
        return " ".join(str(i) for i in ids) + " "
    return str(tokenizer.decode(ids, skip_special_tokens=False))


def _trajectory_html(traj: dict[str, Any], advantage: float | None, tokenizer: Any, index: int) -> str:
    spans = "".join(
        f'<span class="{kind}">{html.escape(_decode(tokenizer, ids))}</span>'
        for kind, ids in token_runs(traj)
    )
    calls = []
    for turn in traj["turns"]:
        for call in turn["tool_calls"]:
            result = call["output"] if call["ok"] else f"error: {call['error']}"
            css = "ok" if call["ok"] else "err"
            args = json.dumps(call["arguments"])
            calls.append(
                f'<div class="call">turn {turn["index"]}: {html.escape(call["name"])}({html.escape(args)}) '
                f'&rarr; <span class="{css}">{html.escape(str(result))}</span></div>'
            )
    components = ", ".join(f"{k} {v:+.3g}" for k, v in traj["reward_components"].items())
    adv = "n/a" if advantage is None else f"{advantage:+.3f}"
    summary = (
        f"#{index}: reward {traj['reward']:.3f} ({html.escape(components)}), advantage {adv}, "
        f"success {traj['success']}, versions {traj['policy_versions']}"
    )
    opened = " open" if index == 0 else ""  # the first trajectory of a group shows its tokens
    body = f'{"".join(calls)}<div class="tokens">{spans}</div>'
    return f"<details{opened}><summary>{summary}</summary>{body}</details>"


def _group_html(row: dict[str, Any], estimator: Any, tokenizer: Any) -> str:
    trajs = row["trajectories"]
    computed = advantages([t["reward"] for t in trajs], estimator)
    adv: list[float | None] = list(computed) if computed is not None else [None] * len(trajs)
    if row["kind"] == "sampled":
        meta = (
            f"priority {row['priority']:.4g} &middot; inclusion {row['inclusion']:.3g} &middot; "
            f"IS weight {row['is_weight']:.3g} &middot; staleness {row['staleness']} &middot; "
        )
    else:
        meta = ""
    head = (
        f"<b>{html.escape(row['kind'])}</b> group {html.escape(row['group_id'])} "
        f"(prompt {html.escape(row['prompt_id'])}, task {html.escape(row['task_id'])}"
        f"{', ' + html.escape(', '.join(row['sub_tasks'])) if row['sub_tasks'] else ''})"
    )
    meta += f"filters: {html.escape(row['filter_note'] or 'n/a')}"
    body = "".join(
        _trajectory_html(t, a, tokenizer, i) for i, (t, a) in enumerate(zip(trajs, adv, strict=True))
    )
    css = "group dropped" if row["kind"] == "dropped" else "group"
    return f'<div class="{css}">{head}<div class="meta">{meta}</div>{body}</div>'


def render(rows: Iterable[dict[str, Any]], title: str, estimator: Any, tokenizer: Any) -> str:
    """The page: draws in order, each with its sampled groups, then the groups dropped before it."""
    by_draw: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_draw[int(row.get("draw", 0))].append(row)
    sections = []
    for draw in sorted(by_draw):
        group_rows = sorted(by_draw[draw], key=lambda r: r["kind"] != "sampled")
        version = next((r["learner_version"] for r in group_rows if r["kind"] == "sampled"), None)
        label = f"Draw {draw}" + (
            f" (learner version {version})" if version is not None else " (no draw yet)"
        )
        sections.append(
            f"<h2>{label}</h2>" + "".join(_group_html(r, estimator, tokenizer) for r in group_rows)
        )
    legend = (
        '<p class="legend"><span class="prompt">prompt</span>'
        '<span class="trained">trained (assistant)</span>'
        '<span class="masked">sampled, masked by a filter</span>'
        '<span class="obs">observation (masked)</span></p>'
    )
    note = "" if tokenizer is not None else "<p>No tokenizer found: token ids are shown.</p>"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{legend}{note}"
        f"{''.join(sections) or '<p>No groups were logged.</p>'}</body></html>"
    )


def write_view(run_dir: Path, out: Path | None = None, tokenizer_path: str | None = None) -> Path:
    """Writes the page for ``run_dir`` (default ``RUN_DIR/view.html``); returns its path.

    Raises:
        ConfigError: If the run has no samples log.
    """
    rows = read_samples(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        estimator = config["training"]["advantage"]
    except (OSError, ValueError, KeyError, TypeError):
        estimator = "grpo"
    page = render(rows, f"actorlearner: {run_dir.name}", estimator, load_tokenizer(run_dir, tokenizer_path))
    out = out or run_dir / "view.html"
    out.write_text(page, encoding="utf-8")
    return out
