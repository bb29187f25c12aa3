"""The worked example of docs/NEW_DOMAIN.md: a third domain in one file (examples/arithmetic.py), unit-tested
here and run through the real recipe, a ReST-EM round and the held-out evaluation, on a tiny model."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from seal.shared import ConfigError, DataError, SelfEdit, SelfEditError, make_domain
from seal.shared.domain import _REGISTRY, Domain, domain_class
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "arithmetic.py"
TARGET = "arithmetic:ArithmeticDomain"


def _import_example():
    """Import examples/arithmetic.py as the top-level module `arithmetic`, as `PYTHONPATH=examples` would, so
    that `domain.name: arithmetic:ArithmeticDomain` resolves in this process too."""
    spec = importlib.util.spec_from_file_location("arithmetic", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["arithmetic"] = module
    spec.loader.exec_module(module)
    return module


arithmetic = _import_example()
ArithmeticDomain, Problem = arithmetic.ArithmeticDomain, arithmetic.Problem
STATEMENT = re.compile(r"has (\d+) \w+ and (buys|gives) (\d+)")


def test_implements_the_abstract_seam_and_imports_no_loop_code():
    assert Domain.__abstractmethods__ == {"load", "instance_id", "teacher_prompt", "parse", "plan", "queries",
                                          "grade"}
    assert Domain.__abstractmethods__ <= set(vars(ArithmeticDomain)) and not ArithmeticDomain.__abstractmethods__
    modules = set()
    for node in ast.walk(ast.parse(EXAMPLE.read_text())):
        if isinstance(node, ast.ImportFrom):
            modules.add(node.module or "")
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    assert not [m for m in modules if m.startswith(("seal.teacher", "seal.student", "teacher", "student"))]
    assert {m for m in modules if m.startswith("seal")} <= {"seal.shared", "seal.shared.domain"}


def test_load_is_generated_deterministic_sliced_and_disjoint():
    domain = ArithmeticDomain()
    train, heldout = domain.load("builtin", "train"), domain.load("builtin", "heldout")
    assert len(train) == len(heldout) == 16
    assert [p.id for p in train] == [f"train-{i:04d}" for i in range(16)]
    assert train == ArithmeticDomain().load("builtin", "train")  # same seed, same problems
    assert train != ArithmeticDomain(arithmetic.ArithmeticOptions(seed=1)).load("builtin", "train")
    # disjoint, and each question names its problem without the statement (CPT asks them all together)
    questions = [p.question for p in train + heldout]
    assert len(set(questions)) == len(questions)
    assert not {p.statement for p in train} & {p.statement for p in heldout}
    assert domain.load("builtin", "train[2:8:3]") == train[2:8:3]
    assert domain.load("builtin", "heldout[-2:]") == heldout[-2:]
    for p in train + heldout:  # the gold answer is the statement's arithmetic
        a, verb, b = STATEMENT.search(p.statement).groups()
        assert p.answer == (int(a) + int(b) if verb == "buys" else int(a) - int(b)) >= 0
        assert str(p.answer) in p.solution and domain.describe(p) == p.statement


@pytest.mark.parametrize("source, split, message", [
    ("builtin", "test", "split 'test' selects no problems"),
    ("builtin", "train[16:]", "selects no problems"),
    ("builtin", "train[::0]", "step must be positive"),
    ("builtin", "train[a:b]", "expected NAME or NAME[start:stop(:step)]"),
    ("problems.json", "train", "unknown data source 'problems.json'"),
])
def test_load_errors_are_data_errors(source, split, message):
    with pytest.raises(DataError, match=re.escape(message)):
        ArithmeticDomain().load(source, split)


@pytest.mark.parametrize("options, key", [
    ({"problems": 0}, "domain.problems"),
    ({"problems": 21, "template": "add"}, "domain.problems"),  # 8 names x 5 items per operation, two splits
    ({"template": "multiply"}, "domain.template"),
    ({"max_operand": 0}, "domain.max_operand"),
    ({"seed": "zero"}, "domain.seed"),
    ({"format": "self-qa"}, "format"),  # a knowledge option is unknown here
])
def test_options_are_checked_naming_the_key(options, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        make_domain({"name": TARGET, **options})


def test_named_as_module_class_or_registered(monkeypatch):
    assert domain_class(TARGET) is ArithmeticDomain
    domain = make_domain({"name": TARGET, "problems": 4, "template": "add", "max_operand": 3})
    assert isinstance(domain, ArithmeticDomain) and domain.options.problems == 4
    assert all(p.answer <= 6 and "buys" in p.statement for p in domain.load("builtin", "train"))
    monkeypatch.setitem(_REGISTRY, "arithmetic", TARGET)  # what `register_domain("arithmetic", ...)` does
    assert make_domain({"name": "arithmetic"}).name == "arithmetic"


@pytest.mark.parametrize("text, reason", [("", "empty self-edit"), ("  \n ", "empty self-edit"),
                                          ("Ann buys more apples.", "no number in the self-edit")])
def test_parse_rejects_unusable_text_with_a_reason(text, reason):
    problem = ArithmeticDomain().load("builtin", "train[:1]")[0]
    with pytest.raises(SelfEditError) as err:
        ArithmeticDomain().parse(problem, text)
    assert err.value.reason == reason


def test_parse_items_survive_json_and_plan_from_them():
    domain = ArithmeticDomain()
    problem = domain.load("builtin", "train[:1]")[0]
    text = "  3 + 4 = 7\n\n3 + 4 = 7\nThe answer is 7.\n" + "".join(f"step {i}\n" for i in range(20))
    edit = domain.parse(problem, text)
    assert edit.text == text and edit.items[:2] == ["3 + 4 = 7", "The answer is 7."] and len(edit.items) == 8
    stored = json.loads(json.dumps(edit.items))  # the run store keeps items as JSON; the loops plan from that
    plan = domain.plan(problem, SelfEdit(text=text, items=stored))
    assert plan == domain.plan(problem, edit)
    assert [e.completion for e in plan.examples] == [f"{problem.statement} {problem.question}", *edit.items]
    assert all(e.prompt == "" and not e.chat for e in plan.examples) and plan.loss_on_prompt
    context_only = domain.plan(problem, None)
    assert [e.completion for e in context_only.examples] == [f"{problem.statement} {problem.question}",
                                                             problem.solution]
    assert len(set(plan.examples + context_only.examples)) == 1 + 8 + 1  # hashable: CPT deduplicates examples


@pytest.mark.parametrize("answer, score", [
    ("7", 1.0), (" 7 shells\nmore text", 1.0), ("Eli has 7 now.", 1.0), ("07", 1.0),
    ("17", 0.0), ("seven", 0.0), ("", 0.0), ("3 + 4 = 7", 0.0),  # the *first* integer counts
    ("\n7", 1.0),  # leading whitespace, newline included, is stripped first
])
def test_grade_compares_the_first_integer(answer, score):
    problem = Problem("train-0000", "Eli has 3 shells and buys 4 more.", "How many shells does Eli have now?",
                      "3 + 4 = 7, so Eli has 7 shells now.", 7)
    result = ArithmeticDomain().grade(problem, [answer])
    assert result.value == score and len(result.details) == 1
    row = result.details[0]
    assert row["prediction"] == answer.strip().split("\n")[0].strip() and row["gold"] == 7
    assert json.loads(json.dumps(row)) == row  # baselines and records store the details as JSON


def test_queries_hide_the_statement_and_evaluate_uses_them():
    domain = ArithmeticDomain()
    problem = domain.load("builtin", "heldout[:1]")[0]
    queries = domain.queries(problem)
    assert queries.max_new_tokens == 8 and queries.stop == "\n" and len(queries.prompts) == 1
    assert problem.question in queries.prompts[0] and problem.statement not in queries.prompts[0]
    calls = []

    def generate(prompts, max_new_tokens, stop="\n"):
        calls.append((list(prompts), max_new_tokens, stop))
        return [f" {problem.answer}"]

    assert domain.evaluate(problem, generate).value == 1.0  # what the student's baseline calls
    assert calls == [(queries.prompts, 8, "\n")]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_round_and_the_evaluation_run_through_the_recipe(tiny_model_dir, tmp_path):
    heldout = ArithmeticDomain(arithmetic.ArithmeticOptions(problems=4)).load("builtin", "heldout[:2]")
    edits_file = tmp_path / "edits.jsonl"  # usable self-edits for sure: the `file` condition plans and absorbs them
    edits_file.write_text("".join(json.dumps({"instance": p.id, "text": f"{p.solution}\nThe answer is {p.answer}."})
                                  + "\n" for p in heldout))
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "recipes" / "seal.py"),
           "--config", str(REPO / "recipes" / "knowledge" / "smollm2-135m.yaml"),
           # a whole mapping replaces the knowledge recipe's domain section (format, grader are knowledge keys)
           "--domain", f"{{name: {TARGET}, problems: 4}}", "--teacher.name", str(tiny_model_dir),
           "--output_dir", str(out), "--threads", "1", "--data.train_split", "train[:2]",
           "--data.eval_split", "heldout[:2]", "--sampling.max_new_tokens", "24", "--inner.epochs", "2",
           "--inner.seeds", "[0, 1]", "--outer.epochs", "1", "--eval.cpt_epochs", "1",
           "--eval.conditions", "[no_update, context_only, base_teacher, round_teachers, file]",
           "--eval.self_edits_file", str(edits_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "examples"),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    edits = _rows(out / "self_edits.jsonl")
    assert len(edits) == 2 * 2 and {e["status"] for e in edits} <= {"ok", "invalid"}
    assert {e["instance"] for e in edits} == {"train-0000", "train-0001"}
    records = _rows(out / "records.jsonl")
    assert {r["status"] for r in records} <= {"ok", "invalid", "failed"}
    expected = set()
    for e in edits:  # a usable self-edit gets one inner loop per seed; an unusable one a single zero-reward record
        seeds = [0, 1] if e["status"] == "ok" else [None]
        expected |= {(e["instance"], e["index"], s) for s in seeds}
    keys = [(r["instance"], r["index"], r["seed"]) for r in records]
    assert len(keys) == len(set(keys)) and set(keys) == expected
    for r in records:
        if r["status"] == "ok":  # the `prediction` of every details row, kept as the record's answers
            assert len(r["answers"]) == 1 and isinstance(r["answers"][0], str)
    baselines = _rows(out / "baselines.jsonl")
    assert {b["instance"] for b in baselines} == {"train-0000", "train-0001", "heldout-0000", "heldout-0001"}
    assert all("prediction" in row for b in baselines for row in b["details"])
    assert sum(b["seconds"] for b in baselines) > 0 and all(b["seconds"] >= 0 for b in baselines)  # report.py's
    (round_,) = _rows(out / "rounds.jsonl")  # time per phase
    assert round_["round"] == 0 and round_["seconds"]["update"] > 0
    assert (out / "teachers" / "round1" / "seal_teacher_update.json").is_file()

    from_file = [e for e in _rows(out / "eval_self_edits.jsonl") if e["condition"] == "file"]
    assert [e["status"] for e in from_file] == ["ok", "ok"] and from_file[0]["items"][-1].startswith("The answer")
    absorbed = [r for r in _rows(out / "eval_records.jsonl") if r["condition"] == "file" and r["setting"] == "single"]
    assert len(absorbed) == 2 * 1 and all(r["status"] == "ok" for r in absorbed)  # instances x eval.seeds
    table = (out / "eval.md").read_text()
    for condition in ("no_update", "context_only", "base_teacher", "round1_teacher", "file"):
        assert f"| {condition} |" in table, table
    assert "ArithmeticDomain" in (out / "config.yaml").read_text()
