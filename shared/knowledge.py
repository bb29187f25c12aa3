"""Knowledge incorporation (SEAL §4.1): absorb a passage, then answer its questions without seeing it.

Instances are passages with questions. The teacher restates a passage (implications, rewrites,
question/answer pairs); each item of the self-edit becomes a training sequence `"{title}\\n{item}"`,
the raw passage is appended as one more, and the student is graded on no-context QA.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from seal.shared.config import Count, NonNegative
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
from seal.shared.graders import GRADERS, get_grader
from seal.shared.judge import Judge, JudgeConfig

_PASSAGE = "{title}\n{context}"

# Self-edit prompts (data, not code). The five paper formats are the official texts verbatim
# (knowledge-incorporation/src/data_generation/make_squad_data.py, MAKE_SQUAD_DATA_TEMPLATES_BASE); the
# `-lines` / `-dashes` / `-pairs` variants are ours: they ask small models for one item per line, a `---`
# between rewrites, and explicit Question/Answer lines, which our 135M demo model follows more reliably.
_IMPLICATIONS = ("Let's read the following passage and produce a {size}list of implications derived directly or "
                 "indirectly from the content.")
FORMATS: dict[str, str] = {
    "implications": _IMPLICATIONS.format(size="") + "\n\nPassage:\n" + _PASSAGE + "\n\nImplications:\n",
    "implications-long": _IMPLICATIONS.format(size="long ") + "\n\nPassage:\n" + _PASSAGE + "\n\nImplications:\n",
    "implications-very-long": (_IMPLICATIONS.format(size="very long ") + "\n\nPassage:\n" + _PASSAGE
                               + "\n\nImplications:\n"),
    "rewrite": ("Let's read the following passage and rewrite it in a few different ways, each one separated by "
                "a newline.\n\nPassage:\n" + _PASSAGE + "\n\nRewritten passages:\n"),
    "self-qa": ("Let's read the following passage and rewrite it in a question-answer format.\n\nPassage:\n"
                + _PASSAGE + "\n\nQuestion 1: "),
    "implications-long-lines": (
        "Let's read the following passage and produce a long list of implications derived directly or "
        "indirectly from the content. Write each implication as a full sentence on its own line.\n\n"
        "Passage:\n" + _PASSAGE + "\n\nImplications:\n"),
    "implications-very-long-lines": (
        "Let's read the following passage and produce a very long list of implications derived directly "
        "or indirectly from the content, covering every fact, name and number in it. Write each "
        "implication as a full sentence on its own line.\n\nPassage:\n" + _PASSAGE + "\n\nImplications:\n"),
    "rewrite-dashes": (
        "Let's read the following passage and rewrite it in a few different ways, each one separated by "
        "a line with ---.\n\nPassage:\n" + _PASSAGE + "\n\nRewrite:\n"),
    "self-qa-pairs": (
        "Let's read the following passage and write question and answer pairs about every fact in it. "
        "Write each pair as two lines, 'Question: ...' and 'Answer: ...'.\n\nPassage:\n" + _PASSAGE +
        "\n\nQuestions and answers:\n"),
}
QA_FORMATS = ("line", "official")

QA_PROMPT = "Let's answer a question directly and concisely.\nQuestion: Topic: {title}\n{question}\nAnswer:"
"""The official QA template (knowledge-incorporation/src/utils.py, SQUAD_ANSWER_TEMPLATE_BASE) ends with
"Answer:\n"; `qa_format: official` adds that newline, `line` (ours) leaves it off and stops at the first."""

_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]+(?=\s)|\(?\d{1,3}[.)](?=\s)|[a-z][.)](?=\s))\s*")
"""A list marker and the space after it ("1.5 million" and "-5 degrees" start with facts, not markers)."""
_QA_SPLIT = re.compile(r"(?im)^\s*(?:\d+[.)]\s*)?(?:question\s*\d*|q\d*)\s*[:.)]\s*")
_ANSWER = re.compile(r"(?is)^(.*?)(?:^|\n|\s)\s*(?:answer|a)\s*\d*\s*[:.)]\s*(.*)$")
"""A self-QA block's answer: "Answer:" or "A:" as a word of its own (not the end of "NASA:" or "(Carolina)")."""


@dataclass
class Question:
    question: str
    answer: str
    """The first gold answer (what self-QA examples and the judge show)."""
    answers: list[str] = field(default_factory=list)
    """Every gold answer; empty means [answer]."""


@dataclass
class Passage:
    id: str
    title: str
    context: str
    questions: list[Question] = field(default_factory=list)


@dataclass
class KnowledgeOptions:
    format: str = "implications"
    """implications | implications-long | implications-very-long | rewrite | self-qa (the official prompt
    texts) | implications-long-lines | implications-very-long-lines | rewrite-dashes | self-qa-pairs (ours)"""
    split: str = "seal"
    """How a self-edit becomes training items. official: split on `---`, then one item per line with a
    leading preamble line dropped, `Question N:` blocks for self-QA, nothing dropped or capped
    (utils.py build_train_sequences). seal: the same splits, then list markers stripped, items under
    min_item_words and repeats dropped, at most max_items."""
    qa_format: str = "line"
    """How the student is asked and graded. official: the prompt ends "Answer:\n", greedy decoding up to
    answer_max_new_tokens stops only at end of sequence, the whole answer is graded. line: the prompt ends
    "Answer:", decoding stops at the first newline, that line is graded."""
    grader: str = "contains"
    """contains | exact_match | f1 | judge (an LLM judge, configured under `judge`)"""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    include_passage: bool = True
    """Append the raw passage as one more training sequence (the paper does)."""
    max_items: Count = 32
    """split seal: at most this many items per self-edit."""
    min_item_words: NonNegative = 3
    """split seal: items with fewer words are dropped."""
    answer_max_new_tokens: Count = 24
    """Tokens the student may generate per answer (official: 64)."""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown self-edit format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.split not in ("official", "seal"):
            raise ValueError(f"split: expected 'official' or 'seal', got {self.split!r}")
        if self.qa_format not in QA_FORMATS:
            raise ValueError(f"qa_format: expected 'line' or 'official', got {self.qa_format!r}")
        if self.grader != "judge":
            get_grader(self.grader)


def _passages_from_records(records: list[Any], origin: str) -> list[Passage]:
    """Grouped layout `{title, context, questions:[{question, answer}]}` or flat SQuAD rows, grouped by
    context. A passage listed twice is one passage (its record's questions are not added again); a question
    asked twice of one passage counts twice, as in the official evaluation."""
    passages: dict[str, Passage] = {}
    for i, rec in enumerate(records):
        where = f"{origin}: record {i}"
        if not isinstance(rec, dict) or "context" not in rec:
            raise DataError(f"{where} has no 'context' field (expected title, context, questions)")
        if not isinstance(rec["context"], str) or not rec["context"].strip():
            raise DataError(f"{where}: 'context' must be non-empty text, got {rec['context']!r:.60}")
        if not isinstance(rec.get("title", ""), str):
            raise DataError(f"{where}: 'title' must be text, got {rec['title']!r:.60}")
        title = rec.get("title", "").replace("_", " ")
        key = f"{title}\x00{rec['context']}"
        passage = passages.get(key)
        repeated = passage is not None and "questions" in rec  # a passage listed twice (its record again)
        if passage is None:
            passage = passages[key] = Passage(id=str(rec.get("id", "")) if "questions" in rec else "",
                                              title=title, context=rec["context"])
        if "questions" in rec:
            if not isinstance(rec["questions"], list):
                raise DataError(f"{where}: 'questions' must be a list of {{question, answer}} objects")
            rows = rec["questions"]
        else:
            rows = [rec] if "question" in rec else []
        for j, q in enumerate(rows):
            question = _question(q, f"{where}, question {j}")
            # a question asked twice of one passage counts twice, as in the official evaluation (the SQuAD dev
            # file has 22 such; its first 200 shuffled passages hold 974 questions); only a repeated record's
            # questions are not added again
            if not repeated or all((question.question, question.answers) != (old.question, old.answers)
                                   for old in passage.questions):
                passage.questions.append(question)
    out = list(passages.values())
    for i, p in enumerate(out):
        p.id = p.id or f"{i:05d}"
    seen: dict[str, str] = {}
    for p in out:  # the run store keys every record by id: two passages on one id would share cells
        if p.id in seen:
            raise DataError(f"{origin}: passages {seen[p.id]!r} and {p.title!r} have the same id {p.id!r} (ids must be "
                            "unique; records without one are numbered by position)")
        seen[p.id] = p.title
    return out


def _question(q: Any, where: str) -> Question:
    if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not q["question"].strip():
        raise DataError(f"{where}: expected {{question: text, answer: text or list}}, got {q!r:.80}")
    answers = _answers(q.get("answer", q.get("answers")), where)
    return Question(q["question"], answers[0], answers)


def _answers(answer: Any, where: str) -> list[str]:
    """Every gold answer (SQuAD lists several); each must be non-empty text (an empty gold answer would
    score an empty prediction as correct)."""
    if isinstance(answer, dict) and "text" in answer:  # datasets' squad: {"text": [...], "answer_start": [...]}
        answer = answer["text"]
    values = answer if isinstance(answer, list) else [answer]
    texts = [v.get("text") if isinstance(v, dict) else v for v in values]
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(f"{where}: needs a non-empty gold answer, got {answer!r:.80}")
    return list(dict.fromkeys(texts))


def _squad_v1(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The official SQuAD v1.1 JSON layout, flattened to grouped records."""
    rows = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            rows.append({"title": article.get("title", ""), "context": para["context"],
                         "questions": [{"question": qa["question"], "answer": qa["answers"]}
                                       for qa in para["qas"]]})
    return rows


def official_segments(text: str) -> list[str]:
    """The `---` segments of a self-edit, or the whole of it (utils.py `_split_segments`)."""
    return [seg.strip() for seg in text.split("---") if seg.strip()] or [text.strip()]


def official_items(text: str) -> list[str]:
    """The official split (knowledge-incorporation/src/utils.py, build_train_sequences with split_newlines):
    `---` segments, then a self-QA completion (one with `Question N:` and `Answer:`) as one item per
    question from the raw text, anything else as one item per non-empty line, a leading preamble line
    dropped when the list proper starts at "1."; nothing else is dropped or capped."""
    segments = official_segments(text)
    if re.search(r"Question\s+\d+:", text) and re.search(r"Answer\s*:", text):
        items = [item.strip() for item in re.split(r"\n(?=Question\s+\d+:)", text.strip()) if item.strip()]
        if items and not items[0].startswith("Question"):  # the prompt ended with "Question 1: "
            items[0] = "Question 1: " + items[0]
        return items
    lines = [line.strip() for seg in segments for line in seg.splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("1."):
        lines = lines[1:]
    return lines


class KnowledgeDomain(Domain):
    name = "knowledge"
    Options = KnowledgeOptions

    def __init__(self, options: KnowledgeOptions | None = None):
        super().__init__(options)
        self.judge = Judge(self.options.judge) if self.options.grader == "judge" else None

    def preflight(self) -> None:
        if self.judge is not None:
            self.judge.ping()

    # ------------------------------------------------------------------ data
    def load(self, source: str, split: str) -> list[Passage]:
        """Passages from `builtin`, a JSON/JSONL file, or a `datasets` name; split `NAME[start:stop:step]`.

        A JSON file may hold a list (the single split `all`), a mapping of split name to list, or the
        official SQuAD v1.1 layout (`all`). The split `articles[start:stop]` of such a file slices its
        articles (titles, in order of first appearance) rather than its passages, so two article slices
        never share an article: an offline train/evaluation split of the SQuAD dev file whose held-out
        passages come from articles the teacher never trained on, as the paper's train/dev split.
        """
        name, window = parse_split(split)
        by_article = name == "articles"
        if by_article:
            if source == "builtin" or not (source.endswith((".json", ".jsonl")) or Path(source).is_file()):
                raise DataError(f"split {split!r} slices the articles of a single-list JSON file; {source!r} is "
                                "not one (with the hub use its own splits, e.g. train and validation)")
            name = "all"
        if source == "builtin":
            text = resources.files("seal.shared").joinpath("data/knowledge_sample.json").read_text()
            splits = {k: v for k, v in json.loads(text).items() if isinstance(v, list)}
            records = self._pick(splits, name, "builtin")
            passages = _passages_from_records(records, "builtin")
            for p in passages:
                p.id = f"{name}-{p.id}"
        elif source.endswith((".json", ".jsonl")) or Path(source).is_file():
            passages = _passages_from_records(self._read_file(Path(source), name), source)
            if name != "all":  # a mapping of splits numbers each from 0: the split name keeps ids (and the
                for p in passages:  # baselines cached by id) apart between training and held-out passages
                    p.id = f"{name}-{p.id}"
        else:
            passages = self._from_datasets(source, name)
        if by_article:
            titles = list(dict.fromkeys(p.title for p in passages))[window]
            passages = [p for p in passages if p.title in set(titles)]
        else:
            passages = passages[window]
        if not passages:
            raise DataError(f"{source} split {split!r} selects no passages")
        empty = [f"{p.id} ({p.title})" for p in passages if not p.questions]
        if empty:
            raise DataError(f"{source} split {split!r}: passages without questions cannot be scored: "
                            + ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else ""))
        return passages

    @staticmethod
    def _pick(splits: dict[str, list], name: str, origin: str) -> list:
        if name not in splits:
            raise DataError(f"{origin}: no split {name!r}; available: {', '.join(splits)}")
        return splits[name]

    def _read_file(self, path: Path, name: str) -> list[dict[str, Any]]:
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text: {err}") from err
        if path.suffix == ".jsonl":
            data: Any = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        data.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{n}: not valid JSON: {err}") from err
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} is not valid JSON: {err}") from err
        if isinstance(data, dict) and isinstance(data.get("data"), list) and data["data"] \
                and isinstance(data["data"][0], dict) and "paragraphs" in data["data"][0]:  # not a split named data
            data = _squad_v1(data)
        if isinstance(data, list):
            return self._pick({"all": data}, name, str(path))
        if isinstance(data, dict):
            return self._pick({k: v for k, v in data.items() if isinstance(v, list)}, name, str(path))
        raise DataError(f"{path}: expected a list of passages or a mapping of splits")

    def _from_datasets(self, source: str, name: str) -> list[Passage]:
        import datasets

        try:
            rows = datasets.load_dataset(source, split=name)
        except Exception as err:  # datasets raises many types for a missing dataset
            raise DataError(f"cannot load dataset {source!r} split {name!r}: {err}") from err
        passages = _passages_from_records([dict(r) for r in rows], source)
        for p in passages:
            p.id = f"{name}-{p.id}"
        return passages

    def instance_id(self, instance: Passage) -> str:
        return instance.id

    def describe(self, instance: Passage) -> str:
        return instance.title

    def article(self, instance: Passage) -> str | None:
        return instance.title or None  # an untitled passage's article is unknown

    # ------------------------------------------------------------------ self-edits
    def teacher_prompt(self, instance: Passage) -> str:
        return FORMATS[self.options.format].format(title=instance.title, context=instance.context)

    def parse(self, instance: Passage, text: str) -> SelfEdit:
        """Split a self-edit into items: `---` blocks, `Question N:` pairs, or lines; drop list markers,
        fragments shorter than `min_item_words` and repeats (small models loop)."""
        if not text or not text.strip():
            raise SelfEditError("empty self-edit")
        if self.options.split == "official":
            return SelfEdit(text=text, items=official_items(text))
        if FORMATS[self.options.format].endswith("Question 1: ") and not _QA_SPLIT.match(text):
            text = "Question 1: " + text  # the prompt asked the first question's marker itself
        if re.search(r"(?m)^\s*-{3,}\s*$", text):
            raw = re.split(r"(?m)^\s*-{3,}\s*$", text)
        elif len(_QA_SPLIT.findall(text)) >= 1 and self.options.format.startswith("self-qa"):
            raw = [self._qa_item(block) for block in _QA_SPLIT.split(text)[1:]]
        else:
            raw = text.splitlines()
        items, seen = [], set()
        for item in raw:
            if item is None:
                continue
            item = _LIST_MARKER.sub("", item.strip()).strip()
            key = " ".join(item.lower().split())
            if len(item.split()) < self.options.min_item_words or key in seen:
                continue
            seen.add(key)
            items.append(item)
            if len(items) == self.options.max_items:
                break
        if not items:
            raise SelfEditError(f"no usable items (need at least {self.options.min_item_words} words per item)")
        return SelfEdit(text=text, items=items)

    @staticmethod
    def _qa_item(block: str) -> str | None:
        m = _ANSWER.match(block.strip())
        if not m or not m.group(2).strip():
            return None
        question, answer = " ".join(m.group(1).split()), " ".join(m.group(2).split())
        return f"Question: {question}\nAnswer: {answer}"

    def plan(self, instance: Passage, edit: SelfEdit | None) -> TrainingPlan:
        sequences = [f"{instance.title}\n{item}" for item in (edit.items if edit else [])]
        if self.options.include_passage or edit is None:
            sequences.append(f"{instance.title}\n{instance.context}")
        return TrainingPlan(examples=[Example(prompt="", completion=s) for s in sequences])

    cpt_splits = ("segments",)

    def cpt_plan(self, instance: Passage, edit: SelfEdit | None, split: str | None = None) -> TrainingPlan:
        """segments: the self-edit's `---` segments, the whole of it when it has none (the official CPT:
        CPT.sh runs CPT.py without --split_newlines), then the passage as `plan` adds it."""
        if edit is not None and split == "segments":
            edit = SelfEdit(text=edit.text, items=official_segments(edit.text))
        return super().cpt_plan(instance, edit, None if split == "segments" else split)

    # ------------------------------------------------------------------ scoring
    def qa_prompt(self, instance: Passage, question: Question) -> str:
        prompt = QA_PROMPT.format(title=instance.title, question=question.question)
        return prompt + "\n" if self.options.qa_format == "official" else prompt

    def queries(self, instance: Passage) -> Queries:
        if not instance.questions:
            raise DataError(f"passage {instance.id} ({instance.title}) has no questions to score")
        return Queries(prompts=[self.qa_prompt(instance, q) for q in instance.questions],
                       max_new_tokens=self.options.answer_max_new_tokens,
                       stop=None if self.options.qa_format == "official" else "\n")

    def grade(self, instance: Passage, answers: Sequence[str]) -> Score:
        details = []
        for q, raw in zip(instance.questions, answers, strict=True):
            prediction = raw.strip() if self.options.qa_format == "official" else raw.strip().split("\n")[0].strip()
            # Every offline grade is kept so a run can be re-read under another grader.
            golds = q.answers or [q.answer]  # as the SQuAD script: the best match over every gold answer
            grades = {name: max(grade(prediction, gold) for gold in golds) for name, grade in GRADERS.items()}
            if self.judge is not None:
                grades["judge"] = self.judge.grade(q.question, prediction, q.answer)
            details.append({"question": q.question, "gold": q.answer, "prediction": prediction,
                            "score": grades[self.options.grader], "grades": grades})
        return Score(value=sum(d["score"] for d in details) / len(details), details=details)
