"""A third SEAL domain in one file: arithmetic word problems (the worked example of docs/NEW_DOMAIN.md).

The teacher writes a worked solution to a generated word problem; the student absorbs problem + solution and
answers the question *without* the problem: the reward is positive only when the solution was right and absorbed."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from seal.shared import ConfigError, DataError, Domain, Example, Score, SelfEdit, SelfEditError, TrainingPlan
from seal.shared.domain import Queries, parse_split

NAMES = ("Ann", "Bo", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana")
ITEMS = ("apples", "stamps", "marbles", "pencils", "shells")
TEMPLATES = {  # op -> (statement, question, worked solution)
    "add": ("{name} has {a} {item} and buys {b} more.", "How many {item} does {name} have now?",
            "{a} + {b} = {answer}, so {name} has {answer} {item} now."),
    "subtract": ("{name} has {a} {item} and gives {b} away.", "How many {item} does {name} have left?",
                 "{a} - {b} = {answer}, so {name} has {answer} {item} left."),
}
TEACHER_PROMPT = ("Solve the word problem. Write a short worked solution, one step per line, and end with "
                  "'The answer is N.'\n\nProblem: {statement} {question}\n\nSolution:\n")
QUERY_PROMPT = "Answer with a single number.\nQuestion: {question}\nAnswer:"
_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    id: str
    statement: str
    question: str
    solution: str
    answer: int


@dataclass
class ArithmeticOptions:
    """The `domain:` keys besides `name`; `Domain.from_config` builds this and rejects unknown keys."""
    problems: int = 16
    """Problems per split. Each (name, item, operation) is used once over both splits, so a question names
    its problem without the statement, and `train` and `heldout` never share one."""
    seed: int = 0
    max_operand: int = 9
    template: str = "mixed"
    """add | subtract | mixed (each problem picks one)"""

    def __post_init__(self) -> None:  # ConfigError naming the key (`build` would only prefix "domain:")
        if self.template not in ("add", "subtract", "mixed"):
            raise ConfigError(f"domain.template: expected add, subtract or mixed, got {self.template!r}")
        most = len(NAMES) * len(ITEMS) * (2 if self.template == "mixed" else 1) // 2
        if not 1 <= self.problems <= most:
            raise ConfigError(f"domain.problems: must be in 1..{most} with template {self.template!r}, "
                              f"got {self.problems}")
        if self.max_operand < 1:
            raise ConfigError(f"domain.max_operand: must be at least 1, got {self.max_operand}")


class ArithmeticDomain(Domain):
    name = "arithmetic"
    Options = ArithmeticOptions
    options: ArithmeticOptions

    def load(self, source: str, split: str) -> list[Problem]:
        """`builtin` only: the problems are generated, so a run is reproducible from its config alone."""
        if source != "builtin":
            raise DataError(f"arithmetic: unknown data source {source!r}; only 'builtin' (generated from domain.seed)")
        name, window = parse_split(split)
        o, rng = self.options, random.Random(self.options.seed)
        pool = [(who, item, op) for op in TEMPLATES if o.template in (op, "mixed") for who in NAMES for item in ITEMS]
        rng.shuffle(pool)
        splits: dict[str, list[Problem]] = {"train": [], "heldout": []}
        for i, (who, item, op) in enumerate(pool[: 2 * o.problems]):
            a, b = sorted((rng.randint(1, o.max_operand), rng.randint(1, o.max_operand)), reverse=op == "subtract")
            answer = a + b if op == "add" else a - b
            texts = (t.format(name=who, item=item, a=a, b=b, answer=answer) for t in TEMPLATES[op])
            part = "train" if i < o.problems else "heldout"
            splits[part].append(Problem(f"{part}-{i % o.problems:04d}", *texts, answer))
        if not splits.get(name, [])[window]:
            raise DataError(f"arithmetic: split {split!r} selects no problems (splits: train, heldout; "
                            f"{o.problems} problems each)")
        return splits[name][window]

    def instance_id(self, instance: Problem) -> str:
        return instance.id  # stable under slicing: `train[2:4]` keeps the ids of `train`

    def describe(self, instance: Problem) -> str:
        return instance.statement

    def teacher_prompt(self, instance: Problem) -> str:
        return TEACHER_PROMPT.format(statement=instance.statement, question=instance.question)

    def parse(self, instance: Problem, text: str) -> SelfEdit:
        """Non-empty lines, deduplicated; items stay plain strings because the run store writes them as JSON."""
        if not text or not text.strip():
            raise SelfEditError("empty self-edit")
        if not _INT.search(text):
            raise SelfEditError("no number in the self-edit")
        lines = dict.fromkeys(line.strip() for line in text.splitlines() if line.strip())
        return SelfEdit(text=text, items=list(lines)[:8])  # 8 lines at most: small models repeat themselves

    def plan(self, instance: Problem, edit: SelfEdit | None) -> TrainingPlan:
        """The problem, then the teacher's lines; `None` (the context_only condition) gives the gold solution."""
        texts = (f"{instance.statement} {instance.question}", *(edit.items if edit else [instance.solution]))
        return TrainingPlan(examples=[Example(prompt="", completion=t) for t in texts])

    def queries(self, instance: Problem) -> Queries:
        return Queries(prompts=[QUERY_PROMPT.format(question=instance.question)], max_new_tokens=8, stop="\n")

    def grade(self, instance: Problem, answers: Sequence[str]) -> Score:
        """Our own grader: the first integer of the answer's first line must equal the gold answer."""
        details = []
        for raw in answers:
            prediction = raw.strip().split("\n")[0].strip()  # the outer loop stores it as the record's answer
            number = int(found.group()) if (found := _INT.search(prediction)) else None
            details.append({"question": instance.question, "gold": instance.answer, "prediction": prediction,
                            "number": number, "score": float(number == instance.answer)})
        return Score(value=sum(d["score"] for d in details) / max(len(details), 1), details=details)
