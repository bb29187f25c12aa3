"""Bad input, table-driven: every case ends in one `error: ...` line and exit status 2 before any model
loads, and no value a user can give reaches the loops unchecked (a property over the whole schema)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from seal.shared.config import Bound, ConfigError, NonEmpty, SealConfig, Unique
from seal.shared.config_parser import parse_config
from tests.conftest import import_recipe


def recipe_main():
    return import_recipe("seal").main


def fails_early(argv, capsys, tmp_path):
    """Run recipes/seal.py in-process; it must exit 2 with exactly one `error:` line. The teacher is a
    path that does not exist, so reaching the model load would fail with another message."""
    argv = ["--teacher.name", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "run"), *argv]
    with pytest.raises(SystemExit) as exit_:
        code = recipe_main()(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "cannot load model" not in err[0]
    return err[0]


CONFIG_CASES = [
    (["--inner.batch_size", "0"], r"inner.batch_size: must be >= 1"),
    (["--inner.lora_r", "0"], r"inner.lora_r: must be >= 1"),
    (["--sampling.max_new_tokens", "0"], r"sampling.max_new_tokens: must be >= 1"),
    (["--sampling.temperature", "0"], r"sampling.temperature: must be > 0"),
    (["--teacher.device", "tpu"], r"teacher.device: expected cpu, cuda"),
    (["--teacher.dtype", "int8"], r"teacher.dtype: expected one of"),
    (["--domain", "{name: nosuch.module:Thing}"], r"domain.name: cannot import 'nosuch.module'"),
    (["--domain", "{name: nosuch}"], r"domain.name: unknown domain 'nosuch'"),
    (["--inner.epochs", "0"], r"inner.epochs: must be >= 1"),
    (["--inner.epochs", "-3"], r"inner.epochs: must be >= 1"),
    (["--inner.lr", "-1"], r"inner.lr: must be > 0"),
    (["--inner.lr", "nan"], r"inner.lr: expected a finite number"),
    (["--outer.epochs", "0"], r"outer.epochs: must be > 0"),
    (["--sampling.top_p", "2"], r"sampling.top_p: must be in \(0, 1\]"),
    (["--inner.seeds", "[0, 0]"], r"inner.seeds: repeated values"),
    (["--eval.k", "0"], r"eval.k: must be >= 1"),
    (["--eval.seeds", "[]"], r"eval.seeds: must list at least one value"),
    (["--output_dir", ""], r"output_dir: empty path"),
    (["--output_dir", "$SEAL_TEST_UNSET_VAR/x"], r"environment variable SEAL_TEST_UNSET_VAR .* is not set"),
    (["--outer.trl_args", "{learning_rate: 1.0}"], r"outer.trl_args.learning_rate: .*set outer.lr instead"),
    (["--outer.trl_args", "{gradient_checkpoint: true}"], r"SFTConfig has no argument 'gradient_checkpoint'"),
    (["--outer.algorithm", "grpo", "--outer.filter", "all_positive"], r"outer.filter applies to .* rest_em only"),
    (["--inner.lr"], r"--inner.lr needs a value"),
    (["--inner.lr", "--seed", "3"], r"--inner.lr needs a value"),  # not lr = "--seed"
    (["--outer.algorithm", "grpo", "--sampling.k", "1"], r"outer.algorithm grpo needs sampling.k >= 2"),
    (["--config="], r"--config: empty path"),
    (["--domain", "{name: knowledge, grader: judge, judge: {url: 'http://127.0.0.1:9/v1', retries: 0, "
      "timeout_s: 2, cache: /dev/null}}"], r"judge at http://127.0.0.1:9/v1/chat/completions failed after 1 "),
    (["--data.train_split", "train[::0]"], r"step must be positive"),
    (["--data.train_split", "train[::00]"], r"step must be positive"),
    (["--data.train_split", "train[-:]"], r"expected NAME or NAME\[start:stop"),
    (["--data.eval_split", "nosuch"], r"no split 'nosuch'"),
    (["--eval.conditions", "[no_update, file]", "--eval.self_edits_file", "/nonexistent.jsonl"],
     r"eval.self_edits_file not found"),
    (["--eval.conditions", "[no_update, 'file:context_only=/x.json']"], r"names must be unique and not a built-in"),
    (["--eval.conditions", "['file:a=/x.json', 'file:a=/y.json']"], r"names must be unique .*: a$"),
    (["--eval.conditions", "[no_update, 'file:paper=/nonexistent_val.json']"],
     r"self-edits file not found: /nonexistent_val.json"),
]


@pytest.mark.parametrize("argv, message", CONFIG_CASES, ids=[" ".join(c[0])[:40] for c in CONFIG_CASES])
def test_a_bad_value_is_one_error_line_before_any_model_loads(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_TEST_UNSET_VAR", raising=False)
    import re

    line = fails_early(argv, capsys, tmp_path)
    assert re.search(message, line), line


def test_duplicated_yaml_keys_are_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 5.0e-3\n")
    line = fails_early(["--config", str(path)], capsys, tmp_path)
    assert "duplicate key 'lr' at line 4" in line


def test_tilde_in_output_dir_is_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_config(["--output_dir", "~/runs/a"]).output_dir == str(tmp_path / "runs/a")


# ---------------------------------------------------------------- data files

def knowledge_file(tmp_path, payload, name="data.json"):
    path = tmp_path / name
    path.write_bytes(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    return str(path)


DATA_CASES = [
    ([{"title": "T", "context": "C", "questions": ["what?"]}], r"data.json: record 0, question 0: expected"),
    ([{"title": "T", "context": None, "questions": []}], r"data.json: record 0: 'context' must be non-empty"),
    ([{"title": "T", "context": "C", "questions": [{"question": "q?"}]}], r"record 0, question 0: needs a "
                                                                            r"non-empty gold answer"),
    ([{"title": "T", "context": "C", "questions": [{"question": "q?", "answer": ""}]}], r"needs a non-empty"),
    ([{"title": "T", "context": "C", "questions": {"question": "q?"}}], r"'questions' must be a list"),
    (b"\xff\xfe not utf-8", r"data.json is not UTF-8 text"),
]


@pytest.mark.parametrize("payload, message", DATA_CASES, ids=[str(i) for i in range(len(DATA_CASES))])
def test_a_bad_data_file_is_one_error_line_naming_the_file(payload, message, capsys, tmp_path):
    import re

    source = knowledge_file(tmp_path, payload)
    line = fails_early(["--data.source", source, "--data.train_split", "all", "--data.eval_split", "all"],
                       capsys, tmp_path)
    assert re.search(message, line), line


def test_a_bad_jsonl_line_is_reported_with_its_number(capsys, tmp_path):
    good = json.dumps({"title": "T", "context": "C", "questions": [{"question": "q?", "answer": "a"}]})
    path = tmp_path / "d.jsonl"
    path.write_text(f"{good}\n\n{good}\n{{oops\n")
    line = fails_early(["--data.source", str(path), "--data.train_split", "all"], capsys, tmp_path)
    assert f"{path}:4: not valid JSON" in line


def test_a_repeated_passage_keeps_its_questions_once_and_every_gold_answer_counts(tmp_path):
    from seal.shared import KnowledgeDomain

    rec = {"title": "T", "context": "C", "questions": [{"question": "q?", "answer": ["Paris", "the city of Paris"]}]}
    (passage,) = KnowledgeDomain().load(knowledge_file(tmp_path, [rec, rec]), "all")
    assert len(passage.questions) == 1 and passage.questions[0].answers == ["Paris", "the city of Paris"]
    score = KnowledgeDomain(KnowledgeDomain.Options(grader="exact_match")).grade(passage, ["The city of Paris."])
    assert score.value == 1.0  # matches the second gold answer


def test_split_mapping_files_give_held_out_passages_their_own_ids(tmp_path):
    from seal.shared import KnowledgeDomain

    def rec(title):
        return {"title": title, "context": f"{title} text", "questions": [{"question": "q?", "answer": "a"}]}

    source = knowledge_file(tmp_path, {"train": [rec("A"), rec("B")], "heldout": [rec("C"), rec("D")]})
    domain = KnowledgeDomain()
    train, heldout = domain.load(source, "train"), domain.load(source, "heldout")
    assert not {p.id for p in train} & {p.id for p in heldout}


@pytest.mark.parametrize("grid, message", [([[0, -1]], "colours 0-9"), ([[12]], "colours 0-9"),
                                           ([[0, 1], [2]], "rectangular"), ([], "not a grid"),
                                           ([[0] * 31], "exceeds ARC's 30x30")])
def test_arc_files_with_bad_grids_are_refused_at_load(grid, message, tmp_path):
    from seal.shared import ArcDomain, DataError

    task = {"train": [{"input": [[1]], "output": grid}], "test": [{"input": [[1]], "output": [[1]]}]}
    path = tmp_path / "challenges.json"
    path.write_text(json.dumps({"t1": task}))
    with pytest.raises(DataError, match=message):
        ArcDomain().load(str(path), "all")


@pytest.mark.parametrize("section", ["null", "[]", '"x"', "3"])
def test_arc_self_edit_sections_of_the_wrong_type_are_unusable_not_a_crash(section):
    from seal.shared import ArcDomain, SelfEditError

    domain = ArcDomain()
    task = domain.load("arc-agi-1", "seal-train[:1]")[0]
    for key in ("data_generation", "training"):
        with pytest.raises(SelfEditError, match=f"{key} must be a JSON object"):
            domain.parse(task, f'{{"{key}": {section}}}')


# ---------------------------------------------------------------- the schema, by property

PROBES = [0, -1, -0.5, 1e30, float("nan"), float("inf"), "x", [], [0, 0], None, True]


def leaf_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if dataclasses.is_dataclass(inner[0]) and isinstance(inner[0], type):
            yield from leaf_fields(inner[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


def constraints(tp):
    """The checks declared on a field type (through Optional)."""
    for arg in [tp, *typing.get_args(tp)]:
        if typing.get_origin(arg) is typing.Annotated:
            return typing.get_args(arg)[1:]
    return ()


@pytest.mark.parametrize("key, tp", list(leaf_fields(SealConfig)), ids=[k for k, _ in leaf_fields(SealConfig)])
def test_every_field_takes_any_probe_with_a_meaning_or_a_one_line_error(key, tp):
    """For every key and every probe value: either a ConfigError (never another exception), or a config
    whose value satisfies the constraints declared on the field."""
    for probe in PROBES:
        try:
            cfg = parse_config([f"--{key}", json.dumps(probe) if not isinstance(probe, float) or math.isfinite(probe)
                                else str(probe)])
        except ConfigError as err:
            assert "\n" not in str(err)
            continue
        value = cfg
        for part in key.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        for check in constraints(tp):
            check.check(key, value)  # raises if an accepted value breaks the declared range
        if isinstance(value, float):
            assert math.isfinite(value), (key, probe)


def test_the_numeric_fields_of_the_loops_all_declare_a_range():
    """The counts and rates the loops divide by or iterate over cannot be left unchecked."""
    required = {"sampling.k", "sampling.temperature", "sampling.top_p", "sampling.max_new_tokens", "inner.lora_r",
                "inner.lr", "inner.epochs", "inner.batch_size", "inner.seeds", "inner.max_length", "outer.lr",
                "outer.epochs", "outer.rounds", "eval.k", "eval.seeds", "outer.grpo_steps", "outer.top_fraction"}
    declared = {key for key, tp in leaf_fields(SealConfig) if constraints(tp)}
    assert required <= declared, required - declared
    assert all(isinstance(c, (Bound, NonEmpty, Unique)) for _, tp in leaf_fields(SealConfig) for c in constraints(tp))


def test_a_passage_too_long_for_the_teacher_is_named_not_silently_cut(tiny_model_dir):
    from seal.shared import DataError, KnowledgeDomain, Passage, Question, SamplingConfig
    from seal.shared.config import ModelConfig
    from seal.shared.models import load_model
    from seal.teacher import Teacher

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    huge = Passage("huge-1", "Huge", "word " * 5000, [Question("q?", "a")])
    teacher = Teacher(model, tok, SamplingConfig(k=1, max_new_tokens=16), KnowledgeDomain(), chat=True)
    with pytest.raises(DataError, match=r"teacher prompt for 'Huge' has \d+ tokens.*exceeds the teacher's 512"):
        teacher.sample([huge])


def test_a_truncated_weights_file_is_a_model_load_error(tiny_model_dir, tmp_path):
    import shutil

    from seal.shared.config import ModelConfig
    from seal.shared.models import ModelLoadError, load_model

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot load model"):
        load_model(ModelConfig(name=str(broken)))


def test_a_judge_grader_without_an_endpoint_is_one_error_line(capsys, tmp_path):
    line = fails_early(["--domain", "{name: knowledge, grader: judge}"], capsys, tmp_path)
    assert "domain.judge.url" in line


def test_a_run_made_under_the_old_meaning_of_a_format_name_is_refused():
    """Four format names now mean the official prompts: their digests change, the others' do not."""
    import hashlib

    from seal.shared.store import config_digest

    def before(config):  # the digest as it was computed before the formats were renamed
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

    renamed = {"domain": {"name": "knowledge", "format": "self-qa", "split": "official"}}
    same = {"domain": {"name": "knowledge", "format": "implications", "split": "official"}}
    assert config_digest(renamed) != before(renamed) and config_digest(same) == before(same)


def test_knowledge_runs_measured_under_the_earlier_question_and_split_rules_are_refused():
    """A question asked twice of one passage counts twice now, and the seal split reads list markers and
    answers differently: run directories of real data, or of the seal split, made before are refused;
    builtin passages (no repeated question) under the official split keep their digest."""
    import hashlib

    from seal.shared.store import config_digest

    def before(config):
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

    official = {"name": "knowledge", "split": "official"}
    unchanged = {"domain": official, "data": {"source": "builtin"}}
    real = {"domain": official, "data": {"source": "/data/squad.json"}}
    seal_split = {"domain": {"name": "knowledge"}, "data": {"source": "builtin"}}
    assert config_digest(unchanged) == before(unchanged)
    assert config_digest(real) != before(real) and config_digest(seal_split) != before(seal_split)


def test_self_edit_files_must_name_their_passages_unambiguously(tmp_path):
    """A JSONL row keyed by title matches every passage of that article, so one passage's self-edit would
    train another: refused. A file that matches no held-out passage is refused; one that covers some gives
    its row those passages only."""
    from seal.shared import DataError, Passage, Question
    from seal.shared.knowledge import KnowledgeDomain
    from seal.teacher.evaluation import published_self_edits

    domain = KnowledgeDomain()
    a, b, c = (Passage(f"p-{i}", title, f"Context {i}.", [Question("q?", "a")])
               for i, title in enumerate(["Normans", "Normans", "Oxygen"]))
    path = tmp_path / "edits.jsonl"
    path.write_text(json.dumps({"title": "Normans", "text": "edit for a"}) + "\n")
    with pytest.raises(DataError, match="'Normans' match 2 held-out instances.*'instance'"):
        published_self_edits(str(path), domain, [a, b, c], 1)
    path.write_text("".join(json.dumps(row) + "\n" for row in (
        {"instance": "p-0", "text": "edit for a"}, {"instance": "p-1", "text": "edit for b"},
        {"title": "Oxygen", "text": "edit for c"})))
    assert published_self_edits(str(path), domain, [a, b, c], 1) == {
        ("p-0", 0): "edit for a", ("p-1", 0): "edit for b", ("p-2", 0): "edit for c"}
    with path.open("a", encoding="utf-8") as fh:  # as our eval_self_edits.jsonl keeps it: unescaped
        fh.write(json.dumps({"instance": "p-0", "text": "line\u2028break"}, ensure_ascii=False) + "\n")
    assert published_self_edits(str(path), domain, [a], 2)[("p-0", 1)] == "line\u2028break"
    with pytest.raises(DataError, match="none of its self-edits match the 1 held-out"):
        published_self_edits(str(path), domain, [Passage("p-9", "Other", "x", [Question("q?", "a")])], 1)
    assert published_self_edits(str(path), domain, [a, Passage("p-9", "Other", "x", [])], 1) == {
        ("p-0", 0): "edit for a"}  # the evaluation warns that the file's row covers 1 of the 2
