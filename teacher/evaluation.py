"""Held-out evaluation: the paper's conditions side by side, as a table with mean ± standard error.

Conditions (rows): no update; the instance's own context only (passage only); context + self-edits
from the base teacher; from each ReST-EM round's teacher; from a file written by any other model; from a
served teacher behind an OpenAI-compatible endpoint (`served`: a `vllm serve` model, GPT-4.1, ...).
Settings (columns): *single* (one fresh adapter per instance, the paper's main table) and *cpt*
(one adapter trained on every held-out instance's sequences at once, then every question asked).
The student that absorbs is the run's base student, so rows differ only in their self-edits; with
`eval.student: round` in mode self, the round-r model absorbs its own self-edits (the paper's evaluation).
Every sample and score goes to the run store; a restarted evaluation skips what it holds.
Under N processes each rank samples every N-th held-out instance and runs every N-th inner loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from seal.shared.config import SealConfig, ServedConfig, named_files
from seal.shared.dist import Dist
from seal.shared.domain import DataError, Domain, Example, SelfEdit, TrainingPlan
from seal.shared.models import load_model, load_tokenizer, resolve, uses_chat_template
from seal.shared.records import EvalRecord, SelfEditRecord, grade_means, one_per_cell, teacher_round
from seal.shared.store import RunStore
from seal.shared.tracking import Phase
from seal.student.inner_loop import AbsorbStats, Job, JobResult, Student
from seal.student.loading import load_student, make_student
from seal.teacher.checkpoints import is_complete, teacher_checkpoint, teacher_config
from seal.teacher.records import parse_record, table_rows
from seal.teacher.rewards import absorb_and_score, load_baselines, record_baselines
from seal.teacher.sampling import Teacher, derive_seed
from seal.teacher.served import ServedTeacher
from seal.teacher.vllm_sampling import VLLMTeacher

log = logging.getLogger("seal")

Plans = dict[str, list[tuple[int | None, TrainingPlan | None]]]


def condition_teachers(cfg: SealConfig, store: RunStore) -> list[tuple[str, Any]]:
    """(label, teacher) for every teacher condition requested: a model config, or for `served` the
    OpenAI-compatible endpoint (`sampling.served`)."""
    out: list[tuple[str, Any]] = []
    if "base_teacher" in cfg.eval.conditions:
        out.append(("base_teacher", teacher_config(cfg, store, 0)))
    if "round_teachers" in cfg.eval.conditions:
        for r in range(1, cfg.outer.rounds + 1):
            if is_complete(teacher_checkpoint(store, r)):
                out.append((f"round{r}_teacher", teacher_config(cfg, store, r)))
    if "served" in cfg.eval.conditions:
        out.append(("served", cfg.sampling.served))
    return out


def samples_per_instance(cfg: SealConfig) -> int:
    """Self-edits drawn per held-out instance: the single setting uses the first eval.k, CPT the first
    eval.cpt_k (the official evaluation: completions[0] for single passages, the first 5 for CPT)."""
    return max(cfg.eval.k, cfg.eval.cpt_k or cfg.eval.k) if cfg.eval.cpt else cfg.eval.k


def _sample_condition(cfg: SealConfig, domain: Domain, store: RunStore, instances: Sequence[Any], label: str,
                      teacher_cfg, have: set[tuple[str, str, int]], dist: Dist, key: str,
                      shared_model=None) -> None:
    """This rank's share of `instances` still without their self-edits from `label`'s teacher. Whether
    to load the teacher, and a vLLM engine's length, are decided on all of `instances` (every rank read
    the same store), so every rank builds or reuses its engine together: vLLM's external_launcher engine
    start is collective (vllm/v1/executor/uniproc_executor.py all-reduces the memory it may use)."""
    k = samples_per_instance(cfg)
    needed = [i for i in instances if not all((label, domain.instance_id(i), j) in have for j in range(k))]
    if not needed:
        return
    ids = {domain.instance_id(i) for i in needed}
    missing = [i for i in dist.shard(instances) if domain.instance_id(i) in ids]
    on_vllm = cfg.sampling.backend == "vllm" and not isinstance(teacher_cfg, ServedConfig)
    if not missing and not on_vllm:  # a transformers or served teacher: nothing for this rank to do
        return
    sampling = replace(cfg.sampling, seed=derive_seed(cfg.sampling.seed, "eval", label),
                       temperature=cfg.eval.temperature if cfg.eval.temperature is not None
                       else cfg.sampling.temperature)
    teacher: Any
    step = 1  # instances per sample() call
    if isinstance(teacher_cfg, ServedConfig) or cfg.sampling.backend == "openai":
        # the server holds the teacher (under backend openai, base_teacher is the served model too); enough
        # instances per call to keep `concurrency` requests in flight
        teacher = ServedTeacher(sampling, domain)
        step = max(1, cfg.sampling.served.concurrency // k)
    elif on_vllm:
        tok = load_tokenizer(teacher_cfg)
        teacher = VLLMTeacher(resolve(teacher_cfg.name), tok, sampling, domain, uses_chat_template(teacher_cfg, tok),
                              needed, revision=teacher_cfg.revision)
    else:
        model, tok = shared_model if shared_model is not None else load_model(teacher_cfg)
        teacher = Teacher(model, tok, sampling, domain, uses_chat_template(teacher_cfg, tok))
    try:
        with Phase(f"evaluation: sampling {k} self-edit(s) per held-out instance from {label}", len(missing),
                   dist.is_main) as phase:
            for start in range(0, len(missing), step):
                chunk = missing[start:start + step]
                for inst, samples in zip(chunk, teacher.sample(chunk, k)):
                    iid = domain.instance_id(inst)
                    for j, text in enumerate(samples.texts):
                        if (label, iid, j) not in have:
                            store.append("eval_self_edits", parse_record(
                                domain, inst, text, j, condition=label, eval_key=key,
                                sample_seconds=samples.seconds / max(1, len(samples.texts))))
                            have.add((label, iid, j))
                    phase.update()
    finally:
        if isinstance(teacher, VLLMTeacher):  # asleep, for the next teacher's weights (`vllm_engine.teacher_engine`)
            teacher.release()


def file_self_edits(cfg: SealConfig, domain: Domain, heldout: Sequence[Any]) -> dict[tuple[str, int], str]:
    """`eval.self_edits_file`, read and matched to the held-out instances (a bad file fails here, early)."""
    path = Path(cfg.eval.self_edits_file or "")
    if not path.is_file():
        raise DataError(f"eval.self_edits_file not found: {path}")
    return published_self_edits(str(path), domain, heldout, samples_per_instance(cfg))


def published_self_edits(path: str, domain: Domain, heldout: Sequence[Any], k: int) -> dict[tuple[str, int], str]:
    """Self-edits another model wrote, matched to the held-out instances: the first k per instance. The
    file is our JSONL ({instance or title, text} per line) or a JSON list of records with `completions`,
    as the official repository ships its models' self-edits (knowledge-incorporation/data/
    synthetic_data/eval/*_val.json: title, context, questions, five completions), matched by context."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"self-edits file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{file} is not UTF-8 text: {err}") from err
    by_key: dict[str, list[str]] = {}
    if file.suffix == ".json":
        try:
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise TypeError("expected a list of records")
            for n, row in enumerate(rows):
                texts = row["completions"]
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    raise TypeError(f"record {n}: 'completions' must be a list of strings")
                by_key.setdefault(f"context\x00{row['context']}", texts)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{file}: expected a JSON list of {{title, context, completions}} ({err})") from err
    else:
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines: a text may hold U+2028 (JSON keeps it)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row.get("text"), str):
                    raise TypeError("'text' must be a string")
                by_key.setdefault(str(row.get("instance") or row["title"]), []).append(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                raise DataError(f"{file}:{n}: expected JSON with 'instance' or 'title' and 'text' ({err})") from err
    out = {}
    described = Counter(domain.describe(inst) for inst in heldout)
    matched = 0
    for inst in heldout:
        context = getattr(inst, "context", None)
        texts = (by_key.get(f"context\x00{context}") if context is not None else None) \
            or by_key.get(domain.instance_id(inst))
        if not texts and (texts := by_key.get(domain.describe(inst))) and described[domain.describe(inst)] > 1:
            raise DataError(f"{file}: self-edits keyed by {domain.describe(inst)!r} match "
                            f"{described[domain.describe(inst)]} held-out instances (one title, several passages); "
                            "key each row by its 'instance' id")
        matched += bool(texts)
        for j, edit in enumerate((texts or [])[:k]):
            out[(domain.instance_id(inst), j)] = edit
    if heldout and not matched:
        raise DataError(f"{file}: none of its self-edits match the {len(heldout)} held-out instances (matched by "
                        "context, instance id or title): is it the right file for data.source and data.eval_split?")
    return out


def self_edit_files(cfg: SealConfig, domain: Domain, heldout: Sequence[Any]
                    ) -> tuple[dict[tuple[str, int], str], dict[str, dict[tuple[str, int], str]]]:
    """The self-edits of the `file` condition and of every `file:NAME=PATH` one, read and matched to the
    held-out instances (a bad file fails here: call it before any model loads)."""
    conditions = cfg.eval.conditions
    file_edits = file_self_edits(cfg, domain, heldout) if "file" in conditions else {}
    published = {name: published_self_edits(path, domain, heldout, samples_per_instance(cfg))
                 for name, path in named_files(conditions).items()}
    return file_edits, published


def evaluate(cfg: SealConfig, domain: Domain, store: RunStore, heldout: Sequence[Any],
             dist: Dist | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the evaluation and return one row per condition (every rank calls this)."""
    dist = dist or Dist()
    conditions = cfg.eval.conditions
    file_edits, published = self_edit_files(cfg, domain, heldout)  # a bad file fails first
    files = ({"file": file_edits} if "file" in conditions else {}) | published
    for name, given in files.items():
        covered = len({iid for iid, _ in given})
        if covered < len(heldout) and dist.is_main:
            log.warning("evaluation %s: self-edits for %d of the %d held-out instances; its rows cover those only",
                        name, covered, len(heldout))
    old, legacy = eval_key(cfg, store, file_edits, dist)
    key = sample_key(cfg)
    # a file's rows carry its content too: another file, or a changed one, never reuses them, while every
    # file shares the no-update and passage-only cells
    digests = {name: _digest(edits) for name, edits in files.items()}  # once: a file may hold thousands
    keys = {name: f"{key}:{digest}" for name, digest in digests.items()}
    earlier_keys = {name: f"{old}:{digests[name]}" for name in published}  # the file condition kept `old`
    # the held-out selection may change between evaluations (more passages later): single-instance cells are
    # reused by instance, while a CPT adapter trains on the whole held-out set, so its cells name that set,
    # and its own settings (another CPT learning rate retrains CPT only)
    ids = [domain.instance_id(i) for i in heldout]
    heldout_set = hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()[:12]
    split = f":{cfg.eval.cpt_split}" if cfg.eval.cpt_split else ""
    cpt, cpt_earlier = f":{heldout_set}:{cpt_key(cfg)}{split}", f":{heldout_set}{split}"

    def expected(condition: str, setting: str | None) -> str:
        """The key of the rows this evaluation writes."""
        return keys.get(condition, key) + (cpt if setting == "cpt" else "")

    def earlier(condition: str, setting: str | None) -> str:
        """The key rows carried before the samples' and CPT's settings had keys of their own (`eval_key`)."""
        return earlier_keys.get(condition, old) + (cpt_earlier if setting == "cpt" else "")

    def current(r: SelfEditRecord | EvalRecord) -> bool:  # measured under this evaluation's settings
        setting = getattr(r, "setting", None)
        return (r.eval_key or legacy) in (expected(r.condition, setting), earlier(r.condition, setting))

    def measured(rows: Iterable[Any]) -> list[Any]:
        """The current rows, one per cell (or sampled self-edit)."""
        return one_per_cell(filter(current, rows),
                            lambda r: r.key if isinstance(r, EvalRecord) else (r.condition, r.instance, r.index),
                            lambda r: r.eval_key == expected(r.condition, getattr(r, "setting", None)))

    if cfg.mode == "teacher_student":
        student = load_student(cfg.inner, cfg.student, domain, dist)
        shared = None
    else:  # the base student is the base teacher: its model also samples the base_teacher condition
        model, tok = load_model(cfg.teacher)
        student = make_student(model, tok, cfg.inner, cfg.teacher, domain)
        shared = (model, tok)

    # 1. Self-edits for every teacher condition (one teacher in memory at a time). Every rank reads the
    # store before any appends to it: the same `have` everywhere, so the same engines (`_sample_condition`)
    dist.barrier()
    have = {(r.condition, r.instance, r.index) for r in store.iter("eval_self_edits", SelfEditRecord) if current(r)}
    for label, teacher_cfg in condition_teachers(cfg, store):
        _sample_condition(cfg, domain, store, heldout, label, teacher_cfg, have, dist, key,
                          shared if label == "base_teacher" else None)
    given = {"oracle": [(inst, j, text) for inst in heldout for j, text in enumerate(domain.oracle_self_edits(inst))]
             if "oracle" in conditions else [],
             "file": [(next(i for i in heldout if domain.instance_id(i) == iid), j, text)
                      for (iid, j), text in file_edits.items()]}
    given.update({name: [(next(i for i in heldout if domain.instance_id(i) == iid), j, text)
                         for (iid, j), text in edits.items()] for name, edits in published.items()})
    if dist.is_main:
        for label, rows in given.items():
            for inst, j, text in rows:
                if (label, domain.instance_id(inst), j) not in have:
                    store.append("eval_self_edits", parse_record(domain, inst, text, j, condition=label,
                                                                 eval_key=keys.get(label, key)))
    load_baselines(store, student)
    record_baselines(store, student, dist.shard(heldout), dist.is_main)
    dist.barrier()

    edits: dict[str, dict[str, list[SelfEditRecord]]] = {}
    for r in measured(store.iter("eval_self_edits", SelfEditRecord)):
        edits.setdefault(r.condition, {}).setdefault(r.instance, []).append(r)
    load_baselines(store, student)

    # 2. The base student absorbs each condition's plans.
    done = {r.key for r in store.iter("eval_records", EvalRecord) if current(r)}
    dist.barrier()  # every rank has read `done` before any appends to it: the same job lists to shard
    labels = ["no_update"] if "no_update" in conditions else []
    labels += ["context_only"] if "context_only" in conditions else []
    labels += [label for label, _ in condition_teachers(cfg, store)]
    labels += ["file"] if "file" in conditions else []
    labels += list(published)
    labels += ["oracle"] if "oracle" in conditions else []
    base_student = student
    for label in labels:
        cell_key = keys.get(label, key)
        student = absorbing_student(cfg, domain, store, heldout, label, base_student, dist)
        plans = _plans(domain, heldout, label, edits.get(label, {}))
        jobs: list[Job] = []
        for inst in heldout:
            iid = domain.instance_id(inst)
            baseline = student.baselines[(student.base_fingerprint, iid)]
            base, checks = baseline.value, len(baseline.details) or None
            if label == "no_update":
                if ("no_update", "single", iid, None, None) not in done and dist.is_main:
                    store.append("eval_records", EvalRecord(label, "single", iid, None, None, base, "ok",
                                                            eval_key=cell_key, checks=checks,
                                                            grades=grade_means(baseline.details)))
                continue
            for j, plan in plans.get(iid, []):
                if j is not None and j >= cfg.eval.k and label != "oracle":  # sampled for CPT only
                    continue
                for seed in cfg.eval.seeds:
                    # as recorded for an unusable self-edit; a job's result replaces score and status
                    cell = EvalRecord(label, "single", iid, j, seed, base, "invalid", eval_key=cell_key,
                                      checks=checks, grades=grade_means(baseline.details))
                    if cell.key in done:
                        continue
                    if plan is None:  # unusable: the student stays as it was
                        if dist.is_main:
                            store.append("eval_records", cell)
                    else:
                        jobs.append(Job(inst, plan, seed, key=cell))

        def record(results: list[JobResult]) -> None:
            store.append_many("eval_records", [
                replace(result.job.key, **(dict(score=0.0, status="failed", reason=result.error, grades=None)
                                           if result.error else _scored(result)))
                for result in results])

        if label != "no_update":
            absorb_and_score(student, store, dist.shard(jobs), record, f"evaluation: {label}", dist.is_main)
        if cfg.eval.cpt and label not in ("no_update", "oracle"):
            _cpt(cfg, domain, store, student, heldout, label, edits.get(label, {}), done, dist, expected(label, "cpt"))
    dist.barrier()
    if dist.is_main:  # what the tables were made of, for recipes/report.py
        made_of = {"keys": {label: expected(label, "single") for label in labels},
                   "cpt_keys": {label: expected(label, "cpt") for label in labels},
                   "earlier_keys": {label: earlier(label, "single") for label in labels}, "instances": ids}
        store.write_text("eval_current.json", json.dumps(made_of) + "\n")
    held = set(ids)
    return table_rows([r for r in measured(store.iter("eval_records", EvalRecord)) if r.instance in held],
                      labels, cfg.eval.cpt)


def _scored(result: JobResult) -> dict[str, Any]:
    """What an evaluation cell records of its inner loop: the score, every grader's, how long and how it trained."""
    return dict(score=result.score.value, status="ok", checks=len(result.score.details) or None,
                grades=grade_means(result.score.details),
                seconds={"absorb": result.stats.seconds, "score": result.score_seconds}, train=_train(result.stats))


def _train(stats: AbsorbStats) -> dict[str, Any]:
    return {"steps": stats.steps, "tokens": stats.tokens, "first_loss": stats.first_loss, "last_loss": stats.last_loss}


def absorbing_student(cfg: SealConfig, domain: Domain, store: RunStore, heldout: Sequence[Any], label: str,
                      base: Student, dist: Dist) -> Student:
    """The student that absorbs a condition's self-edits: the base student, or with `eval.student: round`
    in mode self the round-r model for `round{r}_teacher` (its baselines measured and stored first)."""
    round_ = teacher_round(label)
    if cfg.mode != "self" or cfg.eval.student != "round" or not round_:  # base_teacher: the base student
        return base
    round_cfg = teacher_config(cfg, store, round_)
    model, tok = load_model(round_cfg)
    student = make_student(model, tok, cfg.inner, round_cfg, domain)
    load_baselines(store, student)
    record_baselines(store, student, dist.shard(heldout), dist.is_main)
    dist.barrier()
    load_baselines(store, student)
    return student


def sample_key(cfg: SealConfig) -> str:
    """The evaluation settings outside the run's config digest (the `eval` section may change between
    evaluations of one run) that change the self-edits drawn or the single-instance cells: the sampling
    temperature, the self-edits drawn per instance (a draw of n depends on n) and those the single cells use
    (eval.k: a smaller k must not count the cells of the others), and who absorbs them. Rows
    carry it (a file's rows its content too, CPT's its settings: `cpt_key`), and an evaluation reuses
    only its own."""
    settings = {"temperature": cfg.eval.temperature if cfg.eval.temperature is not None else cfg.sampling.temperature,
                "k": cfg.eval.k, "samples": samples_per_instance(cfg), "student": cfg.eval.student}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def cpt_key(cfg: SealConfig) -> str:
    """The CPT adapter's own settings: self-edits per instance, epochs, learning rate, batch."""
    settings = {"k": cfg.eval.cpt_k or cfg.eval.k, "epochs": cfg.eval.cpt_epochs or cfg.inner.epochs,
                "lr": cfg.eval.cpt_lr or cfg.inner.lr, "batch_size": cfg.eval.cpt_batch_size or cfg.inner.batch_size}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def eval_key(cfg: SealConfig, store: RunStore, file_edits: dict[tuple[str, int], str],
             dist: Dist) -> tuple[str, str]:
    """(earlier key, legacy key). The key rows carried before `sample_key` and `cpt_key` (one hash of the
    sampling temperature, self-edits per instance, every CPT setting and the self-edits file): such rows
    are still read, so an evaluation made before resumes without recomputing them. Rows written before
    keys existed belong to the first evaluation that finds them (recorded in eval_settings.json)."""
    settings = {"temperature": cfg.eval.temperature if cfg.eval.temperature is not None else cfg.sampling.temperature,
                "k": cfg.eval.k, "cpt_epochs": cfg.eval.cpt_epochs or cfg.inner.epochs, "student": cfg.eval.student,
                "file": sorted(f"{iid}/{j}/{text}" for (iid, j), text in file_edits.items())}
    # keys added later enter only when set, so evaluations made before them keep their key
    settings.update({name: getattr(cfg.eval, name) for name in ("cpt_k", "cpt_lr", "cpt_batch_size")
                     if getattr(cfg.eval, name) is not None})
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    marker = store.path / "eval_settings.json"
    if marker.exists():
        return key, json.loads(marker.read_text())["legacy_key"]
    if dist.is_main:
        store.write_text("eval_settings.json", json.dumps({"legacy_key": key, "settings": settings}) + "\n")
    return key, key


def _digest(edits: dict[tuple[str, int], str]) -> str:
    return hashlib.sha256(json.dumps(sorted(f"{i}/{j}/{t}" for (i, j), t in edits.items())).encode()).hexdigest()[:12]


def _plans(domain: Domain, heldout: Sequence[Any], label: str, edits: dict[str, list[SelfEditRecord]],
           make: Callable[[Any, SelfEdit | None], TrainingPlan] | None = None) -> Plans:
    """Per instance, (self-edit index, plan) — plan None for an unusable self-edit, which leaves the
    student as it was (scored as the no-update baseline, as its reward is 0 in a round). `make`: how a
    plan is made (`Domain.plan`; CPT's `Domain.cpt_plan`)."""
    make = make or domain.plan
    out: Plans = {}
    for inst in heldout:
        iid = domain.instance_id(inst)
        if label == "context_only":
            out[iid] = [(None, make(inst, None))]
            continue
        for rec in sorted(edits.get(iid, []), key=lambda r: r.index):
            plan = make(inst, SelfEdit(rec.text, rec.items)) if rec.ok else None
            out.setdefault(iid, []).append((rec.index, plan))
    return out


def _cpt(cfg: SealConfig, domain: Domain, store: RunStore, student: Student, heldout: Sequence[Any], label: str,
         edits: dict[str, list[SelfEditRecord]], done: set, dist: Dist, key: str | None = None) -> None:
    """One adapter on every held-out instance's sequences, then every question; each rank trains every
    N-th seed. As the official CPT.py: the first eval.cpt_k self-edits of each instance, each plan with its
    own copy of the context (a passage with 5 self-edits appears 5 times), nothing deduplicated."""
    examples: list[Example] = []
    cpt_k = cfg.eval.cpt_k or cfg.eval.k
    plans = _plans(domain, heldout, label, edits, lambda inst, edit: domain.cpt_plan(inst, edit, cfg.eval.cpt_split))
    for inst in heldout:
        usable = [plan for j, plan in plans.get(domain.instance_id(inst), [])
                  if plan is not None and (j is None or j < cpt_k)]
        for plan in usable or [domain.cpt_plan(inst, None)]:  # no usable self-edit: the context alone
            examples += plan.examples
    merged = TrainingPlan(examples=examples, epochs=cfg.eval.cpt_epochs, lr=cfg.eval.cpt_lr,
                          batch_size=cfg.eval.cpt_batch_size)
    seeds = dist.shard([s for s in cfg.eval.seeds
                        if not all((label, "cpt", domain.instance_id(i), None, s) in done for i in heldout)])

    def record(seed: int, stats: AbsorbStats, scores: list | None, score_seconds: float) -> None:
        """A seed's cells in one append (a kill leaves all or none); a failed adapter (e.g. a NaN loss)
        scores 0 on every instance, as a failed single-instance cell, and is not retried on resume."""
        phase.update()
        if scores is None:
            log.warning("evaluation %s cpt seed %s failed: %s", label, seed, stats.error)
            checks = [len(student.baselines[(student.base_fingerprint, domain.instance_id(inst))].details) or None
                      for inst in heldout]  # each instance's questions (its baseline's), for the pooled figure
            cells = [EvalRecord(label, "cpt", domain.instance_id(inst), None, seed, 0.0, "failed", eval_key=key,
                                checks=n, reason=stats.error) for inst, n in zip(heldout, checks)]
        else:
            cells = [EvalRecord(label, "cpt", domain.instance_id(inst), None, seed, score.value, "ok", eval_key=key,
                                checks=len(score.details) or None, grades=grade_means(score.details),
                                seconds={"absorb": stats.seconds, "score": score_seconds}, train=_train(stats))
                     for inst, score in zip(heldout, scores)]
        store.append_many("eval_records", [cell for cell in cells if cell.key not in done])

    with Phase(f"evaluation: {label} CPT (one adapter on all {len(heldout)} instances)", len(seeds),
               dist.is_main) as phase:
        student.run_shared(merged, seeds, heldout, record)
