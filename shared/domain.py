"""The seam between SEAL's loops and a task family.

A `Domain` loads instances, writes the teacher's prompt, parses a self-edit (raising `SelfEditError`
with a reason on bad text), turns a parsed self-edit into a `TrainingPlan`, and scores a student on an
instance in two steps (`queries`, then `grade` of the answers) so that a student can answer the
queries of many adapted copies in one batched generation. Teacher, student and the outer loop only ever talk to this
interface, so a new domain registers here (or is named as `package.module:Class`) and needs no
edits elsewhere.
"""

from __future__ import annotations

import importlib
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from seal.shared.config import ConfigError
from seal.shared.config_parser import build


class SelfEditError(ValueError):
    """A self-edit that cannot be used; `reason` is recorded with a zero reward."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DataError(ValueError):
    """Instances that cannot be loaded: a missing file, a wrong layout, an unknown split."""


@dataclass(frozen=True)
class Example:
    """One training example. The loss covers the completion, and the prompt too when the plan says so."""

    prompt: str
    completion: str
    chat: bool = False
    """Wrap the prompt as a user turn in the student's chat template (when it uses one)."""


@dataclass
class TrainingPlan:
    """What the student trains on for one self-edit, and any hyperparameters the self-edit chose."""

    examples: list[Example]
    loss_on_prompt: bool = True
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    """Sequences per optimizer step; None: inner.batch_size."""


@dataclass
class SelfEdit:
    text: str
    items: list[Any]
    """The parsed content: text items for knowledge, a config mapping for ARC."""


@dataclass
class Score:
    value: float
    """Mean over the instance's checks, in [0, 1]."""
    details: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Queries:
    """What the student must answer to be scored on an instance (user messages, greedy decoding)."""

    prompts: list[str]
    max_new_tokens: int
    stop: str | None = "\n"


class Generate(Protocol):
    def __call__(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n") -> list[str]: ...


SPLIT = re.compile(r"^(?P<name>[\w-]+)(?:\[(?P<start>(?:-?\d+)?):(?P<stop>(?:-?\d+)?)(?::(?P<step>\d*))?\])?$")


def parse_split(split: str) -> tuple[str, slice]:
    """A split name with an optional Python slice, `NAME[start:stop:step]`: every domain's `load` takes it."""
    m = SPLIT.match(split.strip())
    if not m:
        raise DataError(f"split {split!r}: expected NAME or NAME[start:stop(:step)], e.g. train[:50]")
    to_int = lambda s: int(s) if s not in (None, "") else None  # noqa: E731
    if m["step"] and int(m["step"]) == 0:
        raise DataError(f"split {split!r}: step must be positive")
    return m["name"], slice(to_int(m["start"]), to_int(m["stop"]), to_int(m["step"]))


def round_instances(per_round: int | None, shuffle_seed: int, train: Sequence[Any], round_: int) -> list[Any]:
    """The training instances of outer-loop round `round_` (`data.per_round`): a new slice of one seeded
    shuffle every round, so rounds never share an instance; the whole split when per_round is None."""
    if per_round is None:
        return list(train)
    shuffled = list(train)
    random.Random(shuffle_seed).shuffle(shuffled)  # as make_squad_data.py: random.seed(42); random.shuffle(...)
    return shuffled[round_ * per_round: (round_ + 1) * per_round]


class Domain(ABC):
    """A task family. Subclasses set `name` and `Options` (a dataclass of their config keys)."""

    name: str = ""

    @dataclass
    class Options:
        pass

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "Domain":
        opts = {k: v for k, v in section.items() if k != "name"}
        return cls(build(cls.Options, opts, prefix="domain"))

    @abstractmethod
    def load(self, source: str, split: str) -> list[Any]:
        """The instances of `split` (`NAME[start:stop:step]`, see `parse_split`) from `source`; a
        `DataError` naming the source when they cannot be loaded."""

    @abstractmethod
    def instance_id(self, instance: Any) -> str:
        """A stable, unique id: the run store keys every record by it (a resumed run matches on it)."""

    @abstractmethod
    def teacher_prompt(self, instance: Any) -> str:
        """The user message that asks the teacher for a self-edit (also the prompt of its SFT pairs)."""

    @abstractmethod
    def parse(self, instance: Any, text: str) -> SelfEdit:
        """The teacher's text as a usable self-edit, or `SelfEditError(reason)`. Model output is data:
        never evaluate it. `SelfEdit.items` is stored as JSON and read back for `plan`, so it must
        survive `json.dumps` (lists, dicts, strings, numbers)."""

    @abstractmethod
    def plan(self, instance: Any, edit: SelfEdit | None) -> TrainingPlan:
        """The training plan for a parsed self-edit; `None` means the instance's own context only."""

    cpt_splits: tuple[str, ...] = ()
    """The names `cpt_plan` accepts as eval.cpt_split."""

    def cpt_plan(self, instance: Any, edit: SelfEdit | None, split: str | None = None) -> TrainingPlan:
        """The sequences a self-edit adds to the CPT corpus (eval.cpt: one adapter on every held-out
        instance): `plan`'s, or under `split` (one of `cpt_splits`, eval.cpt_split) the domain's own."""
        if split is not None:
            raise ValueError(f"the {self.name} domain has no CPT split {split!r}")
        return self.plan(instance, edit)

    @abstractmethod
    def queries(self, instance: Any) -> Queries:
        """The prompts a student answers for this instance (no context shown)."""

    @abstractmethod
    def grade(self, instance: Any, answers: Sequence[str]) -> Score:
        """Score the student's answers to `queries(instance)`, in order. Every row of `Score.details`
        carries the raw answer under `prediction` (the reward records keep them as `answers`)."""

    def evaluate(self, instance: Any, generate: Generate) -> Score:
        q = self.queries(instance)
        return self.grade(instance, generate(q.prompts, max_new_tokens=q.max_new_tokens, stop=q.stop))

    def preflight(self) -> None:
        """Check, before any model loads, what the domain will need later (e.g. the judge's endpoint);
        raise an error naming what is wrong. Nothing by default."""
        return None

    def describe(self, instance: Any) -> str:
        return self.instance_id(instance)

    def article(self, instance: Any) -> str | None:
        """The document an instance was cut from (a SQuAD passage's article): instances of one article are
        not independent, so `data.disjoint_articles` keeps the held-out set's articles out of training.
        None: the domain has no such notion."""
        return None

    def oracle_self_edits(self, instance: Any) -> list[str]:
        """Self-edits an oracle searches over (the evaluation's `oracle` row takes the best); none by default."""
        return []


_REGISTRY: dict[str, str] = {
    "knowledge": "seal.shared.knowledge:KnowledgeDomain",
    "arc": "seal.shared.arc:ArcDomain",
}


def register_domain(name: str, target: str) -> None:
    _REGISTRY[name] = target


def domain_class(name: str) -> type[Domain]:
    target = _REGISTRY.get(name, name)
    if ":" not in target:
        raise ConfigError(f"domain.name: unknown domain {name!r}; registered: {', '.join(sorted(_REGISTRY))} "
                          "(or name one as package.module:Class)")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise ConfigError(f"domain.name: cannot import {module!r} ({err}); is its folder on PYTHONPATH?") from err
    except AttributeError as err:
        raise ConfigError(f"domain.name: module {module!r} has no {attr!r}") from err
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise ConfigError(f"domain.name: {target} is not a seal Domain")
    return cls


def make_domain(section: dict[str, Any]) -> Domain:
    return domain_class(section["name"]).from_config(section)

