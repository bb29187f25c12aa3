"""From the loops' results to the run store's records, and from records to the tables a user reads.

The record types themselves live in `seal.shared.records`; this module shapes them (a parsed self-edit,
an inner loop's reward, an evaluation cell), computes a round's statistics, and formats the per-round
summary, the rounds table and the held-out evaluation table (markdown and CSV).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

from seal.shared.dist import Dist
from seal.shared.domain import Domain, SelfEditError
from seal.shared.records import (
    EvalRecord,
    RewardRecord,
    RoundRecord,
    SelfEditRecord,
    edit_rewards,
    mean_or_nan,
    mean_se,
)
from seal.shared.store import RunStore
from seal.student.inner_loop import JobResult
from seal.teacher.checkpoints import read_update


def parse_record(domain: Domain, instance: Any, text: str, index: int, **context: Any) -> SelfEditRecord:
    """A sampled self-edit and how it parsed (an unusable one keeps the reason); `context`: round or
    condition, sample_seconds."""
    iid = domain.instance_id(instance)
    try:
        edit = domain.parse(instance, text)
    except SelfEditError as err:
        return SelfEditRecord(iid, index, text, "invalid", err.reason, [], **context)
    return SelfEditRecord(iid, index, text, "ok", None, edit.items, **context)


def reward_record(result: JobResult, round_: int) -> RewardRecord:
    """One training-round inner loop (its job keyed by (instance id, self-edit index)): its score, its
    gain over the baseline, how training went."""
    (iid, index), seed, base = result.job.key, result.job.seed, result.baseline
    if result.error:
        return RewardRecord(round_, iid, index, seed, "failed", base, None, 0.0, reason=result.error)
    a = result.stats
    return RewardRecord(round_, iid, index, seed, "ok", base, result.score.value, result.reward,
                        train={"steps": a.steps, "tokens": a.tokens, "first_loss": a.first_loss,
                               "last_loss": a.last_loss},
                        seconds={"absorb": a.seconds, "score": result.score_seconds},
                        answers=[d["prediction"] for d in result.score.details])


# ---------------------------------------------------------------- a training round


def summary_rows(domain: Domain, instances: Sequence[Any], records: Sequence[RewardRecord]) -> list[dict[str, Any]]:
    rewards = edit_rewards(records)
    base = {r.instance: r.baseline for r in records}
    valid = {r.key for r in records if r.ok}
    rows = []
    for inst in instances:
        iid = domain.instance_id(inst)
        mine = [v for (i, _), v in rewards.items() if i == iid]
        rows.append({"instance": iid, "name": domain.describe(inst), "baseline": base.get(iid, math.nan),
                     "mean_reward": mean_or_nan(mine), "best_reward": max(mine) if mine else math.nan,
                     "valid": sum(1 for (i, _) in valid if i == iid), "edits": len(mine)})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| instance | baseline | mean reward | best reward | valid/k |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name'][:40]} | {r['baseline']:.3f} | {r['mean_reward']:+.3f} | "
                     f"{r['best_reward']:+.3f} | {r['valid']}/{r['edits']} |")
    finite = [r for r in rows if not math.isnan(r["mean_reward"])]
    if finite:
        n = len(finite)
        lines.append(f"| **mean over {n}** | {sum(r['baseline'] for r in finite) / n:.3f} | "
                     f"{sum(r['mean_reward'] for r in finite) / n:+.3f} | "
                     f"{sum(r['best_reward'] for r in finite) / n:+.3f} | |")
    return "\n".join(lines)


def round_stats(round_: int, rewards: Sequence[float], kept: int, **extra: Any) -> RoundRecord:
    """Mean and fraction positive of a round's per-self-edit rewards; the teacher-loss fields are
    filled in by `finish_round` from the published checkpoint."""
    return RoundRecord(round=round_, mean_reward=mean_or_nan(rewards),
                       fraction_positive=mean_or_nan([float(r > 0) for r in rewards]),
                       self_edits=len(rewards), kept=kept, **extra)


def finish_round(store: RunStore, finished: dict[int, RoundRecord], stats: RoundRecord, target: Path,
                 dist: Dist) -> bool:
    """Add the teacher update's losses (from its checkpoint) to the round's stats and record the round
    once (on the main process). True when it was recorded now."""
    update = read_update(target)
    losses = update["losses"]
    stats.seconds = {"update": update["seconds"]} if "seconds" in update else None
    stats.sft_steps = len(losses)
    stats.sft_first_loss = losses[0] if losses else None
    stats.sft_last_loss = losses[-1] if losses else None
    if stats.round in finished:
        return False
    if dist.is_main:
        store.append("rounds", stats)
    finished[stats.round] = stats
    return True


def format_rounds(rounds: Sequence[RoundRecord]) -> str:
    lines = ["| round | mean reward | positive | kept / self-edits | teacher loss (first → last) |",
             "|---:|---:|---:|---:|---|"]
    for r in rounds:
        loss = (f"{r.sft_first_loss:.3f} → {r.sft_last_loss:.3f}" if r.sft_first_loss is not None
                else "no update")
        lines.append(f"| {r.round} | {_signed(r.mean_reward)} | {_percent(r.fraction_positive)} | "
                     f"{r.kept} / {r.self_edits} | {loss} |")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.3f}"


def _percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.0f}%"


# ---------------------------------------------------------------- the held-out evaluation


def table_rows(records: Sequence[EvalRecord], labels: Sequence[str], cpt: bool) -> list[dict[str, Any]]:
    """Per condition and setting: mean ± SE over instances (`n` counts instances). Each instance's value is
    the mean over seeds of its (seed) cell, a cell being the mean over the instance's self-edits (the
    oracle takes the best of them instead). Seeds are averaged before the SE: an instance's seeds share
    its questions, so treating them as independent would understate the error. CPT rows also carry
    `cpt_pooled`, the accuracy over all questions (instances weighted by their number of checks; NaN for
    cells recorded before checks were)."""
    cells: dict[tuple[str, str], dict[tuple[str, Any], list[float]]] = {}
    checks: dict[tuple[str, str], dict[str, int]] = {}
    for r in records:
        cells.setdefault((r.condition, r.setting), {}).setdefault((r.instance, r.seed), []).append(r.score)
        if r.checks:
            checks.setdefault((r.condition, r.setting), {})[r.instance] = r.checks
    rows = []
    for label in labels:
        row: dict[str, Any] = {"condition": label}
        for setting in ("single", "cpt") if cpt else ("single",):
            source = ("no_update", "single") if label == "no_update" else (label, setting)
            pick = max if label == "oracle" else mean_or_nan
            per_instance: dict[str, list[float]] = {}
            for (instance, _), scores in cells.get(source, {}).items():
                per_instance.setdefault(instance, []).append(pick(scores))
            values = [mean_or_nan(seeds) for seeds in per_instance.values()]
            row[f"{setting}_mean"], row[f"{setting}_se"], row[f"{setting}_n"] = mean_se(values)
            if setting == "cpt":  # the official CPT figure: every question counts once, whatever its passage
                weights = checks.get(source, {})
                row["cpt_pooled"] = (sum(v * weights[i] for i, v in zip(per_instance, values)) /
                                     sum(weights[i] for i in per_instance)
                                     if per_instance and all(i in weights for i in per_instance) else math.nan)
        rows.append(row)
    return rows


def _cell(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if math.isnan(se) else f" ± {100 * se:.1f}")


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cpt = any("cpt_mean" in r for r in rows)
    head = "| condition | single-instance acc. % | n |" + (" CPT acc. % | n | CPT pooled % |" if cpt else "")
    sep = "|---|---:|---:|" + ("---:|---:|---:|" if cpt else "")
    lines = [head, sep]
    for r in rows:
        line = f"| {r['condition']} | {_cell(r['single_mean'], r['single_se'])} | {r['single_n']} |"
        if cpt:
            line += f" {_cell(r['cpt_mean'], r['cpt_se'])} | {r['cpt_n']} | {_cell(r['cpt_pooled'], math.nan)} |"
        lines.append(line)
    return "\n".join(lines)


def format_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_eval_tables(store: RunStore, rows: Sequence[dict[str, Any]]) -> str:
    """`eval.md` and `eval.csv` in the run directory; returns the markdown table."""
    table = format_markdown(rows)
    store.write_text("eval.md", table + "\n")
    store.write_text("eval.csv", format_csv(rows))
    return table
