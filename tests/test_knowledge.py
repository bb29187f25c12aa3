import json

import pytest

from seal.shared.domain import DataError, SelfEditError, make_domain
from seal.shared.knowledge import FORMATS, KnowledgeDomain, KnowledgeOptions, Passage, Question


@pytest.fixture
def domain():
    return KnowledgeDomain()


def passage():
    return Passage(id="p1", title="Isle of Fennick", context="The island has 412 people.",
                   questions=[Question("How many people live there?", "412"),
                              Question("What is the town?", "Saltmere")])


def test_builtin_splits_and_slices(domain):
    train = domain.load("builtin", "train")
    held = domain.load("builtin", "heldout")
    assert len(train) >= 12 and len(held) >= 6
    assert all(3 <= len(p.questions) <= 5 for p in train + held)
    assert not {p.id for p in train} & {p.id for p in held}
    assert [p.id for p in domain.load("builtin", "train[1:3]")] == [p.id for p in train[1:3]]
    assert [p.id for p in domain.load("builtin", "train[::5]")] == [p.id for p in train[::5]]
    with pytest.raises(DataError, match="no split 'dev'"):
        domain.load("builtin", "dev")
    with pytest.raises(DataError, match="selects no passages"):
        domain.load("builtin", "train[100:]")
    with pytest.raises(DataError, match="expected NAME or NAME"):
        domain.load("builtin", "train[1:2")


def test_grouped_json_jsonl_and_official_squad(domain, tmp_path):
    grouped = [{"title": "A_b", "context": "ctx one", "questions": [{"question": "q?", "answer": "x"}]},
               {"title": "C", "context": "ctx two", "questions": [{"question": "r?", "answer": "y"}]}]
    (tmp_path / "g.json").write_text(json.dumps(grouped))
    ps = domain.load(str(tmp_path / "g.json"), "all")
    assert [p.title for p in ps] == ["A b", "C"] and ps[0].questions[0].answer == "x"
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(g) for g in grouped))
    assert len(domain.load(str(tmp_path / "g.jsonl"), "all[1:]")) == 1
    official = {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
        {"question": "q1", "answers": [{"text": "a1", "answer_start": 0}]},
        {"question": "q2", "answers": [{"text": "a2", "answer_start": 0}]}]}]}]}
    (tmp_path / "o.json").write_text(json.dumps(official))
    (p,) = domain.load(str(tmp_path / "o.json"), "all")
    assert [q.answer for q in p.questions] == ["a1", "a2"]


def test_flat_rows_are_grouped_by_context(domain, tmp_path):
    rows = [{"title": "T", "context": "c1", "question": "a", "answers": {"text": ["x"], "answer_start": [0]}},
            {"title": "T", "context": "c1", "question": "b", "answers": {"text": ["y"], "answer_start": [0]}},
            {"title": "T", "context": "c2", "question": "c", "answers": {"text": ["z"], "answer_start": [0]}}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ps = domain.load(str(tmp_path / "rows.jsonl"), "all")
    assert [len(p.questions) for p in ps] == [2, 1]


def test_bad_data_files(domain, tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        domain.load(str(tmp_path / "nope.json"), "all")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        domain.load(str(tmp_path / "bad.json"), "all")
    (tmp_path / "noq.json").write_text(json.dumps([{"title": "T", "context": "c", "questions": []}]))
    with pytest.raises(DataError, match="passages without questions cannot be scored: 00000 \\(T\\)"):
        domain.load(str(tmp_path / "noq.json"), "all")
    (tmp_path / "noctx.json").write_text(json.dumps([{"title": "T"}]))
    with pytest.raises(DataError, match="record 0 has no 'context'"):
        domain.load(str(tmp_path / "noctx.json"), "all")


def test_parse_lines_strips_markers_and_repeats(domain):
    text = "1. The island has 412 people.\n- The island has 412 people.\n* Saltmere is the only town.\nok\n"
    edit = domain.parse(passage(), text)
    assert edit.items == ["The island has 412 people.", "Saltmere is the only town."]


def test_parse_dash_blocks(domain):
    text = "First rewrite of the passage here.\n---\nSecond rewrite, also long enough.\n---\n"
    assert len(domain.parse(passage(), text).items) == 2


def test_parse_self_qa_pairs():
    domain = KnowledgeDomain(KnowledgeOptions(format="self-qa"))
    text = ("Question 1: How many people live on the island?\nAnswer: 412\n"
            "Question 2: What is the town called?\nAnswer: Saltmere\nQuestion 3: dangling with no answer")
    items = domain.parse(passage(), text).items
    assert items == ["Question: How many people live on the island?\nAnswer: 412",
                     "Question: What is the town called?\nAnswer: Saltmere"]


@pytest.mark.parametrize("text", ["", "   \n ", "a\nb c\n"])
def test_unusable_self_edits_raise_with_a_reason(domain, text):
    with pytest.raises(SelfEditError) as err:
        domain.parse(passage(), text)
    assert err.value.reason


def test_plan_prefixes_title_and_appends_passage(domain):
    edit = domain.parse(passage(), "The island has 412 people.\nSaltmere is the only town.")
    plan = domain.plan(passage(), edit)
    texts = [e.completion for e in plan.examples]
    assert texts == ["Isle of Fennick\nThe island has 412 people.", "Isle of Fennick\nSaltmere is the only town.",
                     "Isle of Fennick\nThe island has 412 people."]
    assert all(e.prompt == "" for e in plan.examples) and plan.loss_on_prompt
    no_passage = KnowledgeDomain(KnowledgeOptions(include_passage=False)).plan(passage(), edit)
    assert len(no_passage.examples) == 2
    assert [e.completion for e in domain.plan(passage(), None).examples] == [texts[-1]]


def test_evaluate_grades_first_line_without_context(domain):
    seen = {}

    def generate(prompts, max_new_tokens, stop="\n"):
        seen["prompts"] = prompts
        return [" 412 people\nextra", "Brask"]

    score = domain.evaluate(passage(), generate)
    assert score.value == 0.5
    assert "The island has 412" not in seen["prompts"][0]
    assert seen["prompts"][0].startswith("Let's answer a question directly and concisely.\nQuestion: Topic: Isle")
    assert score.details[0]["prediction"] == "412 people"
    assert score.details[0]["grades"] == {"exact_match": 0.0, "f1": pytest.approx(2 / 3), "contains": 1.0}


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown self-edit format"):
        KnowledgeOptions(format="poems")
    with pytest.raises(ValueError, match="unknown grader"):
        make_domain({"name": "knowledge", "grader": "vibes"})
    with pytest.raises(ValueError, match="unknown config key in section 'domain': colour"):
        make_domain({"name": "knowledge", "colour": "red"})
    with pytest.raises(ValueError, match="unknown domain 'chess'"):
        make_domain({"name": "chess"})
    paper = {"implications", "implications-long", "implications-very-long", "rewrite", "self-qa"}
    assert paper <= set(FORMATS) and set(FORMATS) - paper == {"implications-long-lines",
                                                                "implications-very-long-lines", "rewrite-dashes",
                                                                "self-qa-pairs"}


def test_the_paper_formats_are_the_official_prompt_texts():
    passage = KnowledgeDomain().load("builtin", "train[:1]")[0]
    prompt = KnowledgeDomain(KnowledgeOptions(format="self-qa")).teacher_prompt(passage)
    assert prompt == ("Let's read the following passage and rewrite it in a question-answer format.\n\n"
                      f"Passage:\n{passage.title}\n{passage.context}\n\nQuestion 1: ")
    assert KnowledgeDomain().teacher_prompt(passage).endswith(f"{passage.context}\n\nImplications:\n")


@pytest.mark.parametrize("text, items", [
    ("Sure, here they are:\n1. The lamp is white.\n2. It was built in 1874.",
     ["1. The lamp is white.", "2. It was built in 1874."]),  # the preamble line is dropped
    ("A.\nB\n---\nC", ["A.", "B", "C"]),  # short lines are kept: nothing is filtered
    ("Who built it?\nAnswer: Hesper.\nQuestion 2: When?\nAnswer: 1874.",
     ["Question 1: Who built it?\nAnswer: Hesper.", "Question 2: When?\nAnswer: 1874."]),
])
def test_the_official_split(text, items):
    from seal.shared.knowledge import official_items

    assert official_items(text) == items
    domain = KnowledgeDomain(KnowledgeOptions(split="official"))
    passage = domain.load("builtin", "train[:1]")[0]
    assert domain.parse(passage, text).items == items


def test_the_official_qa_format_asks_with_a_newline_and_grades_the_whole_answer():
    domain = KnowledgeDomain(KnowledgeOptions(qa_format="official", answer_max_new_tokens=64, grader="contains"))
    passage = domain.load("builtin", "train[:1]")[0]
    queries = domain.queries(passage)
    assert queries.stop is None and queries.max_new_tokens == 64
    assert all(p.endswith("\nAnswer:\n") for p in queries.prompts)
    gold = passage.questions[0].answer
    answers = [f"Let me think.\nIt is {gold}."] + [""] * (len(passage.questions) - 1)
    assert domain.grade(passage, answers).details[0]["score"] == 1.0  # the gold is on the second line
    line = KnowledgeDomain(KnowledgeOptions(grader="contains"))
    assert line.grade(passage, answers).details[0]["score"] == 0.0


def test_a_question_asked_twice_counts_twice_and_ids_are_unique(tmp_path):
    """The loader dropped a question repeated within one passage (22 in the SQuAD dev file), so the paper's
    200 evaluation passages held 971 questions instead of the official 974; a repeated record still adds
    nothing. Two passages on one id would share their cells in the run store."""
    import json

    from seal.shared import DataError

    q = {"question": "When?", "answer": "1874"}
    rows = [{"title": "T", "context": "c1", "questions": [q, q, {"question": "Who?", "answer": "Oda"}]},
            {"title": "T", "context": "c1", "questions": [q]}]  # the same passage listed again
    path = tmp_path / "p.json"
    path.write_text(json.dumps(rows))
    (p,) = KnowledgeDomain().load(str(path), "all")
    assert [x.question for x in p.questions] == ["When?", "When?", "Who?"]
    path.write_text(json.dumps([{**rows[0], "id": "00001"}, {"title": "U", "context": "c2", "questions": [q]}]))
    with pytest.raises(DataError, match="have the same id '00001'"):
        KnowledgeDomain().load(str(path), "all")
    path.write_text(json.dumps({"data": rows, "heldout": []}))  # a split named "data", not the SQuAD layout
    assert len(KnowledgeDomain().load(str(path), "data")) == 1


def test_the_seal_split_keeps_leading_numbers_and_reads_answers_as_words():
    domain = KnowledgeDomain()
    (p,) = domain.load("builtin", "train[:1]")
    items = domain.parse(p, "1. 1.5 million people visited.\n-5 degrees is the record low.\n- A third fact here.").items
    assert items == ["1.5 million people visited.", "-5 degrees is the record low.", "A third fact here."]
    qa = KnowledgeDomain(KnowledgeDomain.Options(format="self-qa-pairs"))
    text = ("Question: Which team (Carolina) won Super Bowl 50?\nAnswer: Denver Broncos\n"
            "Question: Who runs NASA: the agency?\nA: Its administrator")
    assert qa.parse(p, text).items == ["Question: Which team (Carolina) won Super Bowl 50?\nAnswer: Denver Broncos",
                                       "Question: Who runs NASA: the agency?\nAnswer: Its administrator"]
