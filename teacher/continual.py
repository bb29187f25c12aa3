"""Continual self-edits: the paper's catastrophic-forgetting experiment.

For each of S sequences of K passages (drawn at random from the training split): starting from the
configured model θ0, self-edit passage k, absorb (self-edit + passage) into a fresh LoRA, merge it into
the weights (θ_{k+1} = θ_k + scaling · B A), and score θ_{k+1} on the questions of passages 0..k. Row 0
scores θ0 on all K. The result per sequence is a (K+1) × K lower-triangular accuracy matrix; the table
reports mean and standard deviation over sequences, and forgetting as the accuracy on passage i right
after its own update against after all K updates.

Resuming: each finished step's adapter is saved in the run directory (`adapters/seqS/stepK.safetensors`)
before its scores are recorded, so θ_k of a killed sequence is *recovered* exactly — θ0 plus the saved
adapters merged in the same order gives the same weights bit for bit — and no finished step is redone.
A step killed before its `done` record is retrained from its seed (deterministic on one machine).
Sequences are independent: under `accelerate launch --num_processes N` each rank runs every N-th one.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from seal.shared.config import ContinualRunConfig
from seal.shared.dist import Dist
from seal.shared.domain import DataError, Domain, SelfEdit, SelfEditError
from seal.shared.models import load_model
from seal.shared.records import Record
from seal.shared.store import RunStore
from seal.shared.tracking import Phase
from seal.student.inner_loop import Student
from seal.student.loading import make_student
from seal.teacher.sampling import Teacher, derive_seed

log = logging.getLogger("seal")


@dataclass
class ContinualStep(Record):
    """One merged update of a sequence (`continual_steps`)."""

    sequence: int
    step: int
    """k: the passage index within the sequence that this update absorbed (0-based)."""
    instance: str
    text: str
    status: str
    """ok | invalid (the self-edit could not be used: the passage alone was absorbed) | failed (training
    diverged: nothing was merged)"""
    reason: str | None = None
    train: dict[str, Any] | None = None


@dataclass
class ContinualScore(Record):
    """The accuracy of θ_row (after `row` updates) on passage `column` of a sequence (`continual_scores`)."""

    sequence: int
    row: int
    column: int
    instance: str
    score: float


def draw_sequences(pool: Sequence[Any], k: int, s: int, seed: int) -> list[list[Any]]:
    """S sequences of K distinct passages each, drawn from the pool with a seeded RNG per sequence."""
    if len(pool) < k:
        raise DataError(f"continual.passages is {k} but the training split holds {len(pool)} instances")
    return [random.Random(derive_seed(seed, "continual-draw", n)).sample(list(pool), k) for n in range(s)]


def adapter_path(store: RunStore, sequence: int, step: int) -> Path:
    return store.path / "adapters" / f"seq{sequence}" / f"step{step}.safetensors"


def run_continual(cfg: ContinualRunConfig, domain: Domain, store: RunStore, pool: Sequence[Any],
                  dist: Dist | None = None) -> dict[str, Any]:
    """Run (or resume) every sequence of this rank; returns the matrices of all ranks (on every rank)."""
    dist = dist or Dist()
    cc = cfg.continual
    sequences = draw_sequences(pool, cc.passages, cc.sequences, cc.seed)
    model, tok = load_model(cfg.teacher)
    student = make_student(model, tok, cfg.inner, cfg.teacher, domain)
    theta0 = student.bank.base_weights()
    fixed_teacher = None
    if cc.teacher == "fixed":  # the starting model, kept apart from the one being updated
        t_model, t_tok = load_model(cfg.teacher)
        fixed_teacher = Teacher(t_model, t_tok, cfg.sampling, domain, student.chat)
    done = {(r.sequence, r.step): r.status for r in store.iter("continual_steps", ContinualStep)}
    scored = {(r.sequence, r.row, r.column) for r in store.iter("continual_scores", ContinualScore)}
    mine = dist.shard(list(range(cc.sequences)))
    with Phase(f"continual: {len(mine)} sequence(s) of {cc.passages} merged updates", len(mine) * cc.passages,
               dist.is_main) as phase:
        for n in mine:
            student.bank.restore_base(theta0)
            run_sequence(cfg, domain, store, student, fixed_teacher, n, sequences[n], done, scored, phase)
    dist.barrier()
    return matrices(store, cc.passages, cc.sequences)


def run_sequence(cfg: ContinualRunConfig, domain: Domain, store: RunStore, student: Student,
                 fixed_teacher: Teacher | None, n: int, passages: Sequence[Any], done: set, scored: set,
                 phase: Phase) -> None:
    from safetensors.torch import load_file, save_file

    score_rows(store, domain, student, n, 0, passages, scored)  # θ0 on all K
    for k, passage in enumerate(passages):
        path = adapter_path(store, n, k)
        if (n, k) in done:  # recover θ_{k+1}: merge the saved adapter exactly as the first run did
            if done[(n, k)] != "failed":  # a diverged step merged nothing
                student.bank.load_slot(0, load_file(str(path)))
                student.bank.merge(0)
            phase.update()
            continue
        seed = derive_seed(cfg.continual.seed, "continual", n, k)
        teacher = fixed_teacher or Teacher(student.model, student.tokenizer, cfg.sampling, domain, student.chat)
        text = teacher.sample([passage], 1, round_=seed)[0].texts[0]
        try:
            edit: SelfEdit | None = domain.parse(passage, text)
            status, reason = "ok", None
        except SelfEditError as err:
            edit, status, reason = None, "invalid", err.reason
        stats = student.absorb_many([domain.plan(passage, edit)], [seed])[0]
        if stats.error:  # e.g. a non-finite loss: nothing is merged, and the same seed would diverge again
            status, reason = "failed", stats.error
            log.warning("continual: sequence %d step %d not merged: %s", n, k, stats.error)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(student.bank.peft_state_dict(0), str(tmp))
            tmp.replace(path)  # the adapter is on disk before the step counts as done
            student.bank.merge(0)
        score_rows(store, domain, student, n, k + 1, passages[: k + 1], scored)
        store.append("continual_steps", ContinualStep(n, k, domain.instance_id(passage), text, status, reason,
                                                      {"steps": stats.steps, "first_loss": stats.first_loss,
                                                       "last_loss": stats.last_loss}))
        log.debug("continual: sequence %d step %d (%s) absorbed and merged", n, k, domain.describe(passage))
        phase.update()


def score_rows(store: RunStore, domain: Domain, student: Student, n: int, row: int, passages: Sequence[Any],
               scored: set) -> None:
    """The merged model (adapters off) on each passage of the row not yet scored."""
    todo = [(j, p) for j, p in enumerate(passages) if (n, row, j) not in scored]
    if not todo:
        return
    with student.adapters_off():
        scores = [domain.evaluate(p, student.generate) for _, p in todo]
    for (j, p), score in zip(todo, scores):
        store.append("continual_scores", ContinualScore(n, row, j, domain.instance_id(p), score.value))
        scored.add((n, row, j))


def matrices(store: RunStore, k: int, s: int) -> dict[str, Any]:
    """Per sequence the (K+1) × K matrix (None above the diagonal, except row 0), their mean and standard
    deviation over sequences, and the forgetting summary."""
    per = [[[None] * k for _ in range(k + 1)] for _ in range(s)]
    for r in store.iter("continual_scores", ContinualScore):
        if r.sequence < s and r.row <= k and r.column < k:
            per[r.sequence][r.row][r.column] = r.score
    finished = [n for n, m in enumerate(per) if all(m[i][j] is not None for i in range(k + 1) for j in range(k)
                                                   if i == 0 or j < i)]
    complete = [per[n] for n in finished]
    mean = [[_stat(complete, i, j, _mean) for j in range(k)] for i in range(k + 1)]
    std = [[_stat(complete, i, j, _std) for j in range(k)] for i in range(k + 1)]
    forgetting = []
    for n, m in zip(finished, complete):
        right_after = [m[i + 1][i] for i in range(k)]
        at_end = [m[k][i] for i in range(k)]
        forgetting.append({"sequence": n, "right_after": _mean(right_after), "after_all": _mean(at_end),
                           "drop": _mean(right_after) - _mean(at_end)})
    return {"passages": k, "sequences": s, "complete": len(complete), "matrices": per, "mean": mean, "std": std,
            "forgetting": forgetting}


def _stat(ms, i, j, fn):
    values = [m[i][j] for m in ms if m[i][j] is not None]
    return fn(values) if values and (i == 0 or j < i) else None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    mu = _mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def paper_matrix(path: str) -> list[list[float | None]]:
    """The mean matrix of the official results file (knowledge-incorporation/results/continual_self_edits/
    overall_results.json, written by src/continual/average_results.py): `mean_over_sequences`, row r after
    r merged edits, with the cells above the diagonal stored as 0.0 (returned as None, as ours)."""
    try:
        data = json.loads(Path(path).read_text())
        rows = data["mean_over_sequences"]
        return [[v if r == 0 or c < r else None for c, v in enumerate(row)] for r, row in enumerate(rows)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"continual.paper_results {path}: not the official overall_results.json ({err})") from err


def format_matrix(mean: list[list[float | None]], std: list[list[float | None]] | None = None,
                  title: str = "after update") -> str:
    k = len(mean[0]) if mean else 0
    lines = [f"| {title} | " + " | ".join(f"passage {j}" for j in range(k)) + " |",
             "|---|" + "---:|" * k]
    for i, row in enumerate(mean):
        cells = []
        for j, v in enumerate(row):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
                continue
            sd = std[i][j] if std else None
            cells.append(f"{100 * v:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None and not math.isnan(sd) else ""))
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_forgetting(result: dict[str, Any]) -> str:
    rows = result["forgetting"]
    if not rows:
        return "no complete sequence yet"
    lines = ["| sequence | accuracy right after its own update % | after all K updates % | drop |",
             "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sequence']} | {100 * r['right_after']:.1f} | {100 * r['after_all']:.1f} | "
                     f"{100 * r['drop']:+.1f} |")
    after = [r["right_after"] for r in rows]
    end = [r["after_all"] for r in rows]
    lines.append(f"| **mean ± sd** | {100 * _mean(after):.1f} ± {100 * _std(after):.1f} | "
                 f"{100 * _mean(end):.1f} ± {100 * _std(end):.1f} | "
                 f"{100 * (_mean(after) - _mean(end)):+.1f} |")
    return "\n".join(lines)
