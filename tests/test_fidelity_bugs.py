"""Correctness bugs found by comparing with the paper's official code; each test failed before its fix."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from seal.shared import KnowledgeDomain, RunStore
from seal.shared.config_parser import parse_config
from seal.shared.models import fingerprint
from seal.shared.records import EvalRecord, RewardRecord
from seal.teacher.records import table_rows


def test_b5_any_changed_weight_changes_the_fingerprint(tiny_model_dir):
    """A teacher update that leaves the first, middle and last tensors alone must not keep old baselines."""
    from seal.shared.config import ModelConfig
    from seal.shared.models import load_model

    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    before = fingerprint(model)
    params = [p for n, p in model.named_parameters()]
    with torch.no_grad():
        params[3].add_(1e-3)  # not one of the six tensors the old fingerprint sampled
    assert fingerprint(model) != before


def test_b6_offset_and_limits_select_the_instances():
    from seal.run import load_split

    cfg = parse_config(["--data.offset", "2", "--data.train_limit", "3", "--data.eval_limit", "1"])
    run = SimpleNamespace(cfg=cfg, domain=KnowledgeDomain())
    train, heldout = load_split(run, "train"), load_split(run, "eval")
    everything = KnowledgeDomain().load("builtin", "train")
    assert [p.id for p in train] == [p.id for p in everything[2:5]] and len(heldout) == 1


def test_b7_cpt_absorbs_the_passage_of_an_instance_whose_self_edit_was_unusable(tmp_path):
    from seal.teacher import evaluation
    from seal.teacher.records import parse_record

    domain = KnowledgeDomain()
    heldout = domain.load("builtin", "heldout[:2]")
    edits = {heldout[0].id: [parse_record(domain, heldout[0], "The keeper lit the lamp every night at dusk.", 0)],
             heldout[1].id: [parse_record(domain, heldout[1], "", 0)]}  # the second self-edit is unusable
    assert not edits[heldout[1].id][0].ok
    seen = {}

    class Student:
        slots = 1

        def run_shared(self, plan, seeds, instances, done):
            seen["texts"] = [e.completion for e in plan.examples]

    cfg = parse_config(["--eval.seeds", "[0]"])
    evaluation._cpt(cfg, domain, RunStore(tmp_path, {}), Student(), heldout, "base_teacher", edits, set(),
                    SimpleNamespace(shard=lambda x: list(x), is_main=True))
    assert f"{heldout[1].title}\n{heldout[1].context}" in seen["texts"]


def test_b8_the_standard_error_is_over_instances_with_seeds_averaged_first():
    rows = [EvalRecord("c", "single", inst, 0, seed, score, "ok")
            for inst, scores in (("a", (1.0, 0.0)), ("b", (1.0, 1.0))) for seed, score in enumerate(scores)]
    (row,) = table_rows(rows, ["c"], cpt=False)
    assert row["single_n"] == 2  # instances, not (instance, seed) cells
    assert row["single_mean"] == pytest.approx(0.75)
    assert row["single_se"] == pytest.approx(math.sqrt(((0.5 - 0.75) ** 2 + (1 - 0.75) ** 2) / 1 / 2))


def test_report_reads_every_rank_of_a_multi_process_run(tmp_path):
    from tests.conftest import import_recipe

    store = RunStore(tmp_path, {"seed": 0})
    store.append("records", RewardRecord(0, "a", 0, 0, "ok", 0.0, 0.5, 0.5))
    RunStore(tmp_path, {"seed": 0}, rank=1).append("records", RewardRecord(0, "b", 0, 0, "ok", 0.0, 0.25, 0.25))
    report = import_recipe("report")
    rewards = report.round_rewards(report.read(tmp_path, "records", RewardRecord))
    assert rewards == {(0, "a", 0): 0.5, (0, "b", 0): 0.25}
    (tmp_path / "eval.csv").write_text('condition,single_mean\n"a,b",0.5\n')
    assert report.eval_rows(tmp_path) == [{"condition": "a,b", "single_mean": "0.5"}]



@pytest.mark.slow
def test_b3_re_evaluating_under_other_settings_does_not_reuse_old_samples(tiny_model_dir, tmp_path):
    """The eval section is outside the run digest (a finished run may be evaluated again), so its rows
    carry the settings they were made under, and another eval.temperature samples afresh."""
    import json

    from tests.test_outer import REPO, args_for, run

    out = tmp_path / "ev"

    def evaluate(*extra):
        cmd = [a if a != str(REPO / "recipes" / "seal.py") else str(REPO / "recipes" / "evaluate.py")
               for a in args_for(tiny_model_dir, out, "--outer.rounds", "0", "--eval.conditions",
                                 "[no_update, base_teacher]", "--eval.cpt", "false", *extra)]
        return run(cmd, tmp_path)

    def rows(name):
        return [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]

    evaluate()
    first = rows("eval_self_edits")
    evaluate()  # the same settings: nothing new
    assert rows("eval_self_edits") == first
    evaluate("--eval.temperature", "0.3")
    edits = rows("eval_self_edits")
    assert len(edits) == 2 * len(first) and len({r["eval_key"] for r in edits}) == 2
    cells = [r for r in rows("eval_records") if r["condition"] == "base_teacher"]
    assert len({r["eval_key"] for r in cells}) == 2


@pytest.mark.slow
def test_in_self_mode_the_round_model_can_absorb_its_own_self_edits(tiny_model_dir, tmp_path):
    """`eval.student: round`: the paper's evaluation, where the round-r model writes and absorbs."""
    import json

    from tests.test_outer import args_for, run

    out = tmp_path / "run"
    run(args_for(tiny_model_dir, out, "--outer.epochs", "4", "--eval.student", "round", "--eval.cpt", "false",
                 "--eval.conditions", "[no_update, round_teachers]"), tmp_path)
    baselines = [json.loads(line) for line in (out / "baselines.jsonl").read_text().splitlines()]
    heldout = {r["instance"] for r in baselines if r["instance"].startswith("heldout")}
    students = {r["student"] for r in baselines if r["instance"] in heldout}
    assert len(heldout) == 2 and len(students) == 2  # the base model's and the round-1 model's baselines
    assert "round1_teacher" in (out / "eval.md").read_text()


def test_each_round_draws_new_instances_from_one_seeded_shuffle():
    from seal.shared.domain import round_instances

    pool = list(range(20))
    rounds = [round_instances(5, 42, pool, r) for r in range(3)]
    assert all(len(r) == 5 for r in rounds) and len(set(sum(rounds, []))) == 15  # never the same twice
    assert rounds[0] != pool[:5] and rounds == [round_instances(5, 42, pool, r) for r in range(3)]
    assert round_instances(None, 42, pool, 1) == pool


def test_too_few_instances_for_the_rounds_is_an_error_before_any_model_loads():
    from seal.run import load_split
    from seal.shared import DataError

    cfg = parse_config(["--data.per_round", "10", "--outer.rounds", "2", "--data.train_split", "train[:12]"])
    with pytest.raises(DataError, match=r"data.per_round 10 × outer.rounds 2 needs 20 training instances"):
        load_split(SimpleNamespace(cfg=cfg, domain=KnowledgeDomain()), "train")


def test_the_held_out_passages_can_be_drawn_as_the_official_code_draws_them():
    """The paper's 200: the first of the dev passages after `random.seed(42); random.shuffle(passages)`."""
    import random

    from seal.run import load_split

    cfg = parse_config(["--data.eval_shuffle_seed", "42", "--data.eval_limit", "3"])
    drawn = load_split(SimpleNamespace(cfg=cfg, domain=KnowledgeDomain()), "eval")
    official = KnowledgeDomain().load("builtin", "heldout")
    random.seed(42)
    random.shuffle(official)
    assert [p.id for p in drawn] == [p.id for p in official[:3]]


def test_article_slices_of_one_file_never_share_an_article(tmp_path):
    """Offline, the paper recipe's training and held-out passages come from different articles (SQuAD's
    train and dev splits are article-disjoint; slicing passages of one file is not)."""
    import json

    from seal.run import load_split
    from seal.shared import DataError

    rows = [{"title": f"Article {a}", "context": f"Passage {a}.{i} text.", "questions": [
        {"question": f"Q{a}.{i}?", "answer": "text"}]} for a in range(6) for i in range(a + 2)]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(rows))
    cfg = parse_config(["--config", "recipes/knowledge/qwen2.5-7b.yaml", "--data.source", str(path),
                        "--data.train_split", "articles[:3]", "--data.eval_split", "articles[3:]",
                        "--data.per_round", "2", "--data.eval_limit", "5"])
    run = SimpleNamespace(cfg=cfg, domain=KnowledgeDomain())
    train, heldout = load_split(run, "train"), load_split(run, "eval")
    assert {p.title for p in train} == {"Article 0", "Article 1", "Article 2"} and len(train) == 2 + 3 + 4
    assert not {p.title for p in train} & {p.title for p in heldout} and len(heldout) == 5
    everything = {p.id: p.context for p in KnowledgeDomain().load(str(path), "all")}
    assert all(everything[p.id] == p.context for p in train + heldout)  # same ids as the whole file
    with pytest.raises(DataError, match="slices the articles of a single-list JSON file"):
        KnowledgeDomain().load("builtin", "articles[:2]")


def test_disjoint_articles_trains_on_what_the_held_out_articles_leave(tmp_path):
    """The paper's evaluation passages (a seeded shuffle of the whole dev file) span almost every article:
    with `data.disjoint_articles` training keeps only the articles the held-out passages leave."""
    import json

    from seal.run import load_split
    from seal.shared import ConfigError, DataError

    rows = [{"title": f"Article {a}", "context": f"Passage {a}.{i} text.", "questions": [
        {"question": f"Q{a}.{i}?", "answer": "text"}]} for a in range(6) for i in range(3)]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(rows))
    args = ["--data.source", str(path), "--data.train_split", "all", "--data.eval_split", "all",
            "--data.eval_shuffle_seed", "42", "--data.eval_limit", "3", "--data.disjoint_articles", "true"]
    run = SimpleNamespace(cfg=parse_config(args), domain=KnowledgeDomain())
    heldout, train = load_split(run, "eval"), load_split(run, "train")
    held = {p.title for p in heldout}
    assert len(heldout) == 3 and 1 <= len(held) <= 3
    assert {p.title for p in train} == {f"Article {a}" for a in range(6)} - held and len(train) == 3 * (6 - len(held))
    run = SimpleNamespace(cfg=parse_config(args[:-2]), domain=KnowledgeDomain())
    assert len(load_split(run, "train")) == 18  # off: the same file's passages, articles shared
    run = SimpleNamespace(cfg=parse_config([*args[:-4], "--data.eval_limit", "18", "--data.disjoint_articles", "true"]),
                          domain=KnowledgeDomain())
    with pytest.raises(DataError, match="no train instances .* data.disjoint_articles"):
        load_split(run, "train")
    arc = SimpleNamespace(cfg=parse_config(["--domain.name", "arc", "--data.disjoint_articles", "true"]),
                          domain=SimpleNamespace(load=lambda source, split: ["t1", "t2"], article=lambda i: None))
    with pytest.raises(ConfigError, match="does not say which article"):
        load_split(arc, "train")


def test_the_paper_recipes_split_the_dev_file_by_article():
    from seal.shared.config_parser import load_yaml

    for recipe in ("qwen2.5-7b.yaml", "qwen2.5-7b-teaches-72b.yaml"):
        data = load_yaml(f"recipes/knowledge/{recipe}")["data"]
        assert (data["train_split"], data["eval_split"]) == ("articles[:24]", "articles[24:]"), recipe


def test_cpt_trains_on_the_first_cpt_k_self_edits_each_with_its_passage(tmp_path):
    """The official CPT.py: 5 self-edits per passage, `build_train_sequences` appends the passage to each
    (it appears 5 times), 3 epochs, lr 1e-3, 4 × grad-accum 2; accuracy pooled over the questions."""
    from seal.shared.domain import Score
    from seal.student.inner_loop import AbsorbStats
    from seal.teacher import evaluation
    from seal.teacher.records import parse_record

    domain = KnowledgeDomain()
    (inst,) = domain.load("builtin", "heldout[:1]")
    texts = ["The keeper lit the lamp every night at dusk.", "The lamp was lit by the keeper at dusk.",
             "A third self-edit that CPT must leave out."]
    edits = {inst.id: [parse_record(domain, inst, t, j) for j, t in enumerate(texts)]}
    seen = {}

    class Student:
        slots = 1

        def run_shared(self, plan, seeds, instances, done):
            seen["plan"] = plan
            for seed in seeds:
                done(seed, AbsorbStats(1, 1, 1.0, 1.0, 0.0), [Score(0.5, [{}, {}, {}, {}])], 0.0)

    cfg = parse_config(["--eval.seeds", "[0]", "--eval.cpt_k", "2", "--eval.cpt_epochs", "3", "--eval.cpt_lr",
                        "0.001", "--eval.cpt_batch_size", "8"])
    store = RunStore(tmp_path, {})
    evaluation._cpt(cfg, domain, store, Student(), [inst], "base_teacher", edits, set(),
                    SimpleNamespace(shard=lambda x: list(x), is_main=True))
    plan = seen["plan"]
    completions = [e.completion for e in plan.examples]
    assert completions.count(f"{inst.title}\n{inst.context}") == 2  # once per self-edit, as the official code
    learnt = "\n".join(completions)
    assert texts[0] in learnt and texts[1] in learnt and texts[2] not in learnt
    assert (plan.epochs, plan.lr, plan.batch_size) == (3, 0.001, 8)
    (cell,) = store.iter("eval_records", EvalRecord)
    assert cell.checks == 4
    assert evaluation.samples_per_instance(cfg) == 2  # eval.k 1 for single passages, 2 sampled for CPT


def test_cpt_splits_a_self_edit_on_dashes_only_as_the_official_cpt(tmp_path):
    """The official CPT.sh runs CPT.py without --split_newlines: a self-edit trains as its `---` segments
    (the whole of it when it has none, a preamble line kept), each under the title, then the passage; the
    single-passage plans keep the line split (query_server.sh passes --split_newlines). Before, CPT used
    the line split too."""
    from seal.run import preflight
    from seal.shared.config import ConfigError
    from seal.shared.config_parser import load_yaml
    from seal.teacher import evaluation
    from seal.teacher.records import parse_record

    domain = KnowledgeDomain(KnowledgeDomain.Options(split="official"))
    (inst,) = domain.load("builtin", "heldout[:1]")
    texts = ["Sure:\n1. The keeper lit the lamp.\n2. The lamp burned all night.",
             "First part.\n---\nSecond part.\nMore.", "---"]
    edits = {inst.id: [parse_record(domain, inst, t, j) for j, t in enumerate(texts)]}

    def corpus(*overrides: str) -> list[str]:
        seen = {}

        class Student:
            slots = 1

            def run_shared(self, plan, seeds, instances, done):
                seen["texts"] = [e.completion for e in plan.examples]

        cfg = parse_config(["--eval.seeds", "[0]", "--eval.cpt_k", "3", *overrides])
        evaluation._cpt(cfg, domain, RunStore(tmp_path, {}), Student(), [inst], "base_teacher", edits, set(),
                        SimpleNamespace(shard=lambda x: list(x), is_main=True))
        assert all(t.startswith(f"{inst.title}\n") for t in seen["texts"])
        return [t.removeprefix(f"{inst.title}\n").replace(inst.context, "<passage>") for t in seen["texts"]]

    assert corpus("--eval.cpt_split", "segments") == [
        texts[0], "<passage>", "First part.", "Second part.\nMore.", "<passage>", "---", "<passage>"]
    lines = ["1. The keeper lit the lamp.", "2. The lamp burned all night.", "<passage>",
             "First part.", "Second part.", "More.", "<passage>", "---", "<passage>"]
    assert corpus() == lines  # null: as the single-passage plans
    single = evaluation._plans(domain, [inst], "base_teacher", edits)[inst.id]
    assert [e.completion.removeprefix(f"{inst.title}\n").replace(inst.context, "<passage>")
            for _, plan in single for e in plan.examples] == lines
    for name in ("knowledge", "arc"):  # a split the domain does not have stops the run before any model loads
        from seal.shared.domain import make_domain

        # (eval.enabled false too: recipes/evaluate.py evaluates whatever it says)
        cfg = parse_config(["--domain.name", name, "--eval.cpt_split", "lines", "--eval.enabled", "false"])
        with pytest.raises(ConfigError, match="eval.cpt_split 'lines'"):
            preflight(cfg, make_domain(cfg.domain), SimpleNamespace(is_main=False, share=lambda m: m))
    for recipe in ("qwen2.5-7b.yaml", "qwen2.5-7b-teaches-72b.yaml"):
        assert load_yaml(f"recipes/knowledge/{recipe}")["eval"]["cpt_split"] == "segments", recipe


def test_a_failed_cpt_adapter_scores_zero_on_every_instance_and_is_not_retrained(tmp_path):
    """A CPT seed whose loss went non-finite used to leave no cells: the CPT column averaged the surviving
    seeds only, and every resume trained the failing seed again. Its cells are now recorded as failed
    (score 0), as a failed single-instance cell, all in one append."""
    from seal.shared.domain import Score
    from seal.student.inner_loop import AbsorbStats
    from seal.teacher import evaluation

    domain = KnowledgeDomain()
    heldout = domain.load("builtin", "heldout[:2]")
    trained = []

    class Student:
        slots, base_fingerprint = 1, "f"
        baselines = {("f", p.id): Score(0.0, [{}] * len(p.questions)) for p in heldout}

        def run_shared(self, plan, seeds, instances, done):
            for seed in seeds:
                trained.append(seed)
                done(seed, AbsorbStats(1, 1, math.nan, math.nan, 0.0, error="non-finite loss"), None, 0.0)

    cfg = parse_config(["--eval.seeds", "[0, 1]"])
    store = RunStore(tmp_path, {})
    dist = SimpleNamespace(shard=lambda x: list(x), is_main=True)
    evaluation._cpt(cfg, domain, store, Student(), heldout, "context_only", {}, set(), dist, "key")
    cells = list(store.iter("eval_records", EvalRecord))
    assert sorted((c.instance, c.seed, c.status, c.score) for c in cells) == [
        (p.id, seed, "failed", 0.0) for p in heldout for seed in (0, 1)]
    assert all(c.reason == "non-finite loss" for c in cells)
    (row,) = table_rows(cells, ["context_only"], cpt=True)
    assert (row["cpt_mean"], row["cpt_n"], row["cpt_pooled"]) == (0.0, 2, 0.0)  # questions counted as ever
    assert [c.checks for c in cells if c.seed == 0] == [len(p.questions) for p in heldout]
    evaluation._cpt(cfg, domain, store, Student(), heldout, "context_only", {}, {c.key for c in cells}, dist, "key")
    assert trained == [0, 1]  # a resumed evaluation does not train the failed seeds again


def test_cpt_rows_report_the_accuracy_pooled_over_questions_beside_the_mean_over_instances():
    rows = [EvalRecord("c", "cpt", "a", None, 0, 1.0, "ok", checks=1),
            EvalRecord("c", "cpt", "b", None, 0, 0.0, "ok", checks=3)]
    (row,) = table_rows(rows, ["c"], cpt=True)
    assert row["cpt_mean"] == pytest.approx(0.5) and row["cpt_pooled"] == pytest.approx(0.25)
    (old,) = table_rows([replace(r, checks=None) for r in rows], ["c"], cpt=True)
    assert math.isnan(old["cpt_pooled"])  # cells recorded before checks were: no figure rather than a wrong one


def test_a_plans_batch_size_sets_its_steps():
    from seal.shared.domain import Example, TrainingPlan
    from seal.student.inner_loop import Student

    me = SimpleNamespace(inner=SimpleNamespace(batch_size=1, epochs=2))
    plan = TrainingPlan([Example("", str(i)) for i in range(8)], batch_size=4)
    assert [len(b) for b in Student._schedule(me, [None] * 8, plan, 0)] == [4, 4, 4, 4]
    assert len(Student._schedule(me, [None] * 8, replace(plan, batch_size=None), 0)) == 16


def test_the_single_cells_key_names_how_many_self_edits_they_average():
    """With CPT drawing 5 self-edits, the key named only the draw: lowering eval.k kept counting the cells
    of the self-edits the single setting no longer uses."""
    from seal.teacher.evaluation import cpt_key, sample_key

    wide, official = (parse_config(["--eval.k", k, "--eval.cpt_k", "5"]) for k in ("3", "1"))
    assert sample_key(wide) != sample_key(official) and cpt_key(wide) == cpt_key(official)
    assert sample_key(official) == sample_key(parse_config(["--eval.k", "1", "--eval.cpt_k", "5",
                                                            "--eval.cpt_lr", "0.5"]))  # CPT's own setting
