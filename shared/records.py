"""The rows of a run directory's tables, typed: what one phase hands the next, and what JSONL holds.

Each record class names its fields once and converts to and from the JSON object of one table line
(`to_json`/`from_json`); the run store writes and reads them (`RunStore.append`, `RunStore.iter(table,
cls)`), and so do tracking and the report. Field names are the JSON keys, so run directories written
before these classes existed read back unchanged. Optional context fields that are None (a training
round's `round`, an evaluation's `condition`) are left out of the JSON.

Two contracts with domains follow from this: `SelfEdit.items` is stored as JSON, so a domain's parsed
items must survive `json.dumps` (lists, dicts, strings, numbers); and every row of `Score.details`
carries the student's raw answer under `prediction`, which the reward records keep as `answers`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence


class Record:
    """JSON conversion for the record dataclasses below."""

    OPTIONAL: tuple[str, ...] = ()
    """Fields left out of the JSON when None."""

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {k: v for k, v in out.items() if not (k in self.OPTIONAL and v is None)}

    @classmethod
    def from_json(cls, row: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in row.items() if k in names})


class _SelfEditKeyed:
    """Records about one self-edit: keyed by (instance id, self-edit index); usable when status is ok."""

    instance: str
    index: int
    status: str

    @property
    def key(self) -> tuple[str, int]:
        return self.instance, self.index

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SelfEditRecord(_SelfEditKeyed, Record):
    """A sampled self-edit (`self_edits`, `eval_self_edits`): its text and how it parsed."""

    instance: str
    index: int
    text: str
    status: str
    """ok | invalid"""
    reason: str | None = None
    """Why an invalid self-edit could not be used."""
    items: list[Any] = field(default_factory=list)
    """The parsed content (must survive JSON)."""
    round: int | None = None
    """The training round that sampled it (self_edits)."""
    condition: str | None = None
    """The evaluation condition that sampled it (eval_self_edits)."""
    sample_seconds: float | None = None
    eval_key: str | None = None
    """The evaluation settings it was sampled under (eval_self_edits; see `teacher.evaluation.eval_key`)."""

    OPTIONAL = ("round", "condition", "sample_seconds", "eval_key")


@dataclass
class RewardRecord(_SelfEditKeyed, Record):
    """One inner loop of a training round (`records`): a (self-edit, seed) absorbed and scored.

    An unusable self-edit gets one record with `seed` None, status `invalid` and reward 0; an inner
    loop that failed (a non-finite loss) has status `failed` and reward 0."""

    round: int
    instance: str
    index: int
    seed: int | None
    status: str
    """ok | invalid | failed"""
    baseline: float | None
    score: float | None
    reward: float
    """score − baseline (0 unless ok)."""
    reason: str | None = None
    train: dict[str, Any] | None = None
    """steps, tokens, first_loss, last_loss of the inner loop."""
    seconds: dict[str, float] | None = None
    """absorb, score (wall time per adapter)."""
    answers: list[str] | None = None
    """The student's raw answers to the instance's queries after the update."""

    OPTIONAL = ("train", "seconds", "answers")


@dataclass
class EvalRecord(Record):
    """One held-out cell (`eval_records`): a condition's score on an instance for one self-edit and seed."""

    condition: str
    setting: str
    """single (one adapter per instance) | cpt (one adapter for all held-out instances)"""
    instance: str
    index: int | None
    seed: int | None
    score: float | None
    status: str
    """ok | invalid (scored as the no-update baseline) | failed (scored 0)"""
    reason: str | None = None
    eval_key: str | None = None
    """The evaluation settings it was measured under (see `teacher.evaluation.eval_key`)."""
    checks: int | None = None
    """How many checks (questions, test outputs) the score averages: the weight of the instance in the
    pooled accuracy (the official CPT figure)."""
    grades: dict[str, float] | None = None
    """The score under every grader the domain records (knowledge: contains, exact_match, f1), so a run
    can be read under another grader without rescoring."""
    seconds: dict[str, float] | None = None
    """absorb, score: wall time of the cell's training and scoring. A CPT row holds its seed's: the one
    adapter's training and its scoring of every held-out instance, the same on each instance's row."""
    train: dict[str, Any] | None = None
    """steps, tokens, first_loss, last_loss of the cell's inner loop."""

    OPTIONAL = ("reason", "eval_key", "checks", "grades", "seconds", "train")

    @property
    def key(self) -> tuple[str, str, str, int | None, int | None]:
        return self.condition, self.setting, self.instance, self.index, self.seed


@dataclass
class BaselineRecord(Record):
    """A student's no-update score on an instance (`baselines`), keyed by the student's weights."""

    student: str
    """The fingerprint of the student's base weights."""
    instance: str
    score: float
    details: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    """Wall time since the previous baseline of its batch was measured (instances scored together: the
    first carries the batch's time)."""

    OPTIONAL = ("seconds",)


@dataclass
class RoundRecord(Record):
    """One finished outer-loop round (`rounds`)."""

    round: int
    mean_reward: float | None
    """Mean over self-edits of the seed-averaged reward."""
    fraction_positive: float | None
    self_edits: int
    kept: int
    """Self-edits the teacher was trained on (GRPO: every scored completion)."""
    sft_steps: int = 0
    sft_first_loss: float | None = None
    sft_last_loss: float | None = None
    algorithm: str | None = None
    """grpo for GRPO rounds; absent for ReST-EM rounds."""
    steps: int | None = None
    """GRPO optimizer steps."""
    logged_rewards: list[float] | None = None
    """GRPO: the mean reward TRL logged at each step."""
    seconds: dict[str, float] | None = None
    """{"update": wall time of the teacher update, from loading the teacher to its merged checkpoint (GRPO:
    with the inner loops of its rewards)}; absent when the update is not timed (the teacher carried over)."""

    OPTIONAL = ("algorithm", "steps", "logged_rewards", "seconds")


@dataclass
class GrpoRewardRecord(Record):
    """One completion scored by GRPO's reward function (`grpo_rewards`)."""

    round: int
    attempt: str
    """Tells this process's records from those of a killed earlier attempt at the round."""
    call: int
    instance: str
    text: str
    reward: float
    reason: str | None = None


def one_per_cell(rows: Iterable[Any], cell: Callable[[Any], Hashable], newer: Callable[[Any], bool]) -> list[Any]:
    """One row per cell: a cell measured under both an evaluation's earlier and current key (the settings
    changed in between and back) counts once, as its `newer` row."""
    best: dict[Hashable, Any] = {}
    for r in rows:
        if cell(r) not in best or newer(r):
            best[cell(r)] = r
    return list(best.values())


def mean_or_nan(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error of the mean, n); NaN where n is too small."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, 1
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), n


def edit_scores(records: Sequence[RewardRecord]) -> dict[tuple[str, int], float]:
    """Mean adapted score over seeds for each (instance, self-edit index); invalid and failed ones count
    as 0 (a self-edit solves its instance only when every seed does)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for r in records:
        sums.setdefault(r.key, []).append(r.score if r.ok and r.score is not None else 0.0)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def edit_rewards(records: Sequence[RewardRecord]) -> dict[tuple[str, int], float]:
    """Mean reward over seeds for each (instance, self-edit index); invalid and failed ones count as 0."""
    sums: dict[tuple[str, int], list[float]] = {}
    for r in records:
        sums.setdefault(r.key, []).append(r.reward if r.reward is not None else 0.0)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def teacher_round(condition: str) -> int | None:
    """The round whose teacher an evaluation condition samples: 0 for base_teacher, r for round{r}_teacher;
    None for any other row."""
    if condition == "base_teacher":
        return 0
    if not (condition.startswith("round") and condition.endswith("_teacher")):
        return None
    middle = condition[len("round"):-len("_teacher")]
    return int(middle) if middle.isdigit() else None


def grade_means(details: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """The mean of each grader over a score's checks, where every check carries `grades` (knowledge
    domain); None otherwise."""
    if not details or not all(isinstance(d.get("grades"), dict) for d in details):
        return None
    names = set.intersection(*(set(d["grades"]) for d in details))
    return {name: sum(float(d["grades"][name]) for d in details) / len(details) for name in sorted(names)}
