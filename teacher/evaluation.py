"""Held-out evaluation: the paper's conditions side by side, as a table with mean ± standard error.

Conditions (rows): no update; the instance's own context only (passage only); context + self-edits
from the base teacher; from each ReST-EM round's teacher; from a file written by any other model.
Settings (columns): *single* (one fresh adapter per instance, the paper's main table) and *cpt*
(one adapter trained on every held-out instance's sequences at once, then every question asked).
The student that absorbs is always the run's base student, so rows differ only in their self-edits.
Every sample and score goes to the run store; a restarted evaluation skips what it holds.
Under N processes each rank samples every N-th held-out instance and runs every N-th inner loop.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from seal.shared.config import SealConfig
from seal.shared.domain import Domain, Example, SelfEdit, TrainingPlan
from seal.shared.dist import Dist
from seal.shared.models import load_model, load_tokenizer, resolve, uses_chat_template
from seal.shared.store import RunStore
from seal.student.inner_loop import Job, JobResult, Student
from seal.teacher.outer import (load_baselines, load_student, make_student, parse_record, record_baselines,
                                teacher_checkpoint, teacher_config)
from seal.teacher.rest_em import is_complete
from seal.teacher.sampling import Teacher, derive_seed
from seal.teacher.vllm_sampling import VLLMTeacher

log = logging.getLogger("seal")


def condition_teachers(cfg: SealConfig, store: RunStore) -> list[tuple[str, Any]]:
    """(label, teacher model config) for every teacher condition requested."""
    out = []
    if "base_teacher" in cfg.eval.conditions:
        out.append(("base_teacher", teacher_config(cfg, store, 0)))
    if "round_teachers" in cfg.eval.conditions:
        for r in range(1, cfg.outer.rounds + 1):
            if is_complete(teacher_checkpoint(store, r)):
                out.append((f"round{r}_teacher", teacher_config(cfg, store, r)))
    return out


def _sample_condition(cfg: SealConfig, domain: Domain, store: RunStore, instances: Sequence[Any], label: str,
                      teacher_cfg, have: set[tuple[str, str, int]], shared_model=None) -> None:
    missing = [i for i in instances if not all((label, domain.instance_id(i), j) in have for j in range(cfg.eval.k))]
    if not missing:
        return
    sampling = replace(cfg.sampling, seed=derive_seed(cfg.sampling.seed, "eval", label),
                       temperature=cfg.eval.temperature if cfg.eval.temperature is not None
                       else cfg.sampling.temperature)
    teacher: Any
    if cfg.sampling.backend == "vllm":
        tok = load_tokenizer(teacher_cfg)
        teacher = VLLMTeacher(resolve(teacher_cfg.name), tok, sampling, domain, uses_chat_template(teacher_cfg, tok))
    else:
        model, tok = shared_model if shared_model is not None else load_model(teacher_cfg)
        teacher = Teacher(model, tok, sampling, domain, uses_chat_template(teacher_cfg, tok))
    for inst in missing:
        samples = teacher.sample([inst], cfg.eval.k)[0]
        iid = domain.instance_id(inst)
        for j, text in enumerate(samples.texts):
            if (label, iid, j) not in have:
                store.append("eval_self_edits", {"condition": label, "instance": iid, "index": j,
                                                 **parse_record(domain, inst, text)})
                have.add((label, iid, j))


def _file_edits(cfg: SealConfig, domain: Domain, heldout: Sequence[Any]) -> dict[tuple[str, int], str]:
    path = Path(cfg.eval.self_edits_file or "")
    if not path.is_file():
        raise FileNotFoundError(f"eval.self_edits_file not found: {path}")
    by_key: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            by_key.setdefault(str(row.get("instance") or row["title"]), []).append(str(row["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{n}: expected JSON with 'instance' or 'title' and 'text' ({err})") from err
    out = {}
    for inst in heldout:
        texts = by_key.get(domain.instance_id(inst)) or by_key.get(domain.describe(inst)) or []
        for j, text in enumerate(texts[: cfg.eval.k]):
            out[(domain.instance_id(inst), j)] = text
    return out


def evaluate(cfg: SealConfig, domain: Domain, store: RunStore, heldout: Sequence[Any],
             dist: Dist = Dist()) -> list[dict[str, Any]]:
    """Run (or resume) the evaluation and return one row per condition (every rank calls this)."""
    conditions = cfg.eval.conditions
    file_edits = _file_edits(cfg, domain, heldout) if "file" in conditions else {}  # a bad file fails first
    if cfg.mode == "teacher_student":
        student = load_student(cfg, domain, dist)
        shared = None
    else:  # the base student is the base teacher: its model also samples the base_teacher condition
        model, tok = load_model(cfg.teacher)
        student = make_student(model, tok, cfg, domain, cfg.teacher)
        shared = (model, tok)

    # 1. Self-edits for every teacher condition (one teacher in memory at a time).
    have = {(r["condition"], r["instance"], r["index"]) for r in store.iter("eval_self_edits")}
    for label, teacher_cfg in condition_teachers(cfg, store):
        log.info("evaluation: sampling %d self-edit(s) per held-out instance from %s", cfg.eval.k, label)
        _sample_condition(cfg, domain, store, dist.shard(heldout), label, teacher_cfg, have,
                          shared if label == "base_teacher" else None)
    if dist.is_main and "oracle" in conditions:
        for inst in heldout:
            iid = domain.instance_id(inst)
            for j, text in enumerate(domain.oracle_self_edits(inst)):
                if ("oracle", iid, j) not in have:
                    store.append("eval_self_edits", {"condition": "oracle", "instance": iid, "index": j,
                                                     **parse_record(domain, inst, text)})
    if dist.is_main:
        for (iid, j), text in file_edits.items():
            if ("file", iid, j) not in have:
                inst = next(i for i in heldout if domain.instance_id(i) == iid)
                store.append("eval_self_edits", {"condition": "file", "instance": iid, "index": j,
                                                 **parse_record(domain, inst, text)})
    load_baselines(store, student)
    record_baselines(store, student, dist.shard(heldout))
    dist.barrier()

    edits: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in store.iter("eval_self_edits"):
        edits.setdefault(r["condition"], {}).setdefault(r["instance"], []).append(r)
    load_baselines(store, student)

    # 2. The base student absorbs each condition's plans.
    done = {(r["condition"], r["setting"], r["instance"], r["index"], r["seed"]) for r in store.iter("eval_records")}
    labels = ["no_update"] if "no_update" in conditions else []
    labels += ["context_only"] if "context_only" in conditions else []
    labels += [label for label, _ in condition_teachers(cfg, store)]
    labels += ["file"] if "file" in conditions else []
    labels += ["oracle"] if "oracle" in conditions else []
    for label in labels:
        plans = _plans(domain, heldout, label, edits.get(label, {}))
        log.info("evaluation: %s", label)
        jobs: list[tuple[Job, dict[str, Any]]] = []
        for inst in heldout:
            iid = domain.instance_id(inst)
            base = student.baselines[(student.base_fingerprint, iid)].value
            if label == "no_update":
                if ("no_update", "single", iid, None, None) not in done and dist.is_main:
                    store.append("eval_records", {"condition": label, "setting": "single", "instance": iid,
                                                  "index": None, "seed": None, "score": base, "status": "ok"})
                continue
            for j, plan in plans.get(iid, []):
                for seed in cfg.eval.seeds:
                    meta = {"condition": label, "setting": "single", "instance": iid, "index": j, "seed": seed}
                    if (label, "single", iid, j, seed) in done:
                        continue
                    if plan is None:
                        if dist.is_main:
                            store.append("eval_records", {**meta, "score": base, "status": "invalid"})
                    else:
                        jobs.append((Job(inst, plan, seed), meta))
        mine = dist.shard(jobs)
        meta_of = {id(job): meta for job, meta in mine}

        def record(results: list[JobResult]) -> None:
            for result in results:
                outcome = ({"score": 0.0, "status": "failed", "reason": result.error} if result.error
                           else {"score": result.score.value, "status": "ok"})
                store.append("eval_records", {**meta_of[id(result.job)], **outcome})

        student.run([job for job, _ in mine], done=record)
        if cfg.eval.cpt and label not in ("no_update", "oracle"):
            _cpt(cfg, domain, store, student, heldout, label, plans, done, dist)
    dist.barrier()
    return table_rows(store, labels, cfg.eval.cpt)


def _plans(domain: Domain, heldout: Sequence[Any], label: str,
           edits: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[int | None, TrainingPlan | None]]]:
    """Per instance, (self-edit index, plan) — plan None for an unusable self-edit, which leaves the
    student as it was (scored as the no-update baseline, as its reward is 0 in a round)."""
    out: dict[str, list[tuple[int | None, TrainingPlan | None]]] = {}
    for inst in heldout:
        iid = domain.instance_id(inst)
        if label == "context_only":
            out[iid] = [(None, domain.plan(inst, None))]
            continue
        for rec in sorted(edits.get(iid, []), key=lambda r: r["index"]):
            plan = domain.plan(inst, SelfEdit(rec["text"], rec["items"])) if rec["status"] == "ok" else None
            out.setdefault(iid, []).append((rec["index"], plan))
    return out


def _cpt(cfg: SealConfig, domain: Domain, store: RunStore, student: Student, heldout: Sequence[Any], label: str,
         plans: dict[str, list[tuple[int | None, TrainingPlan]]], done: set, dist: Dist) -> None:
    """One adapter on every held-out instance's sequences (all of its self-edits), then every question;
    each rank trains every N-th seed."""
    examples: list[Example] = []
    for iid, items in plans.items():
        for _, plan in items:
            examples += plan.examples if plan is not None else []
    merged = TrainingPlan(examples=list(dict.fromkeys(examples)), epochs=cfg.eval.cpt_epochs)
    seeds = dist.shard([s for s in cfg.eval.seeds
                        if not all((label, "cpt", domain.instance_id(i), None, s) in done for i in heldout)])
    slots = student.slots
    for n in range(student.agree(math.ceil(len(seeds) / slots))):
        chunk = seeds[n * slots: (n + 1) * slots]
        stats = student.absorb_many([merged] * len(chunk), chunk)
        for slot, (seed, st) in enumerate(zip(chunk, stats)):
            if st.error:
                log.warning("evaluation %s cpt seed %s failed: %s", label, seed, st.error)
        trained = [slot for slot, st in enumerate(stats) if not st.error]
        for m in range(student.agree(len(trained))):
            if m >= len(trained):
                student.score_many([])  # another rank is still scoring
                continue
            slot, seed = trained[m], chunk[trained[m]]
            scores = student.score_many(heldout, [slot] * len(heldout))
            for inst, score in zip(heldout, scores):
                iid = domain.instance_id(inst)
                if (label, "cpt", iid, None, seed) not in done:
                    store.append("eval_records", {"condition": label, "setting": "cpt", "instance": iid,
                                                  "index": None, "seed": seed, "score": score.value, "status": "ok"})


def _mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, 1
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n), n


def table_rows(store: RunStore, labels: Sequence[str], cpt: bool) -> list[dict[str, Any]]:
    """Per condition and setting: mean ± SE over (instance, seed), each averaged over that instance's
    self-edits (the oracle takes the best of them instead)."""
    cells: dict[tuple[str, str], dict[tuple[str, Any], list[float]]] = {}
    for r in store.iter("eval_records"):
        cells.setdefault((r["condition"], r["setting"]), {}).setdefault((r["instance"], r["seed"]), []).append(
            r["score"])
    rows = []
    for label in labels:
        row: dict[str, Any] = {"condition": label}
        for setting in ("single", "cpt") if cpt else ("single",):
            source = ("no_update", "single") if label == "no_update" else (label, setting)
            pick = max if label == "oracle" else (lambda v: sum(v) / len(v))
            values = [pick(v) for v in cells.get(source, {}).values()]
            row[f"{setting}_mean"], row[f"{setting}_se"], row[f"{setting}_n"] = _mean_se(values)
        rows.append(row)
    return rows


def _cell(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if math.isnan(se) else f" ± {100 * se:.1f}")


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    cpt = any("cpt_mean" in r for r in rows)
    head = "| condition | single-instance acc. % | n |" + (" CPT acc. % | n |" if cpt else "")
    sep = "|---|---:|---:|" + ("---:|---:|" if cpt else "")
    lines = [head, sep]
    for r in rows:
        line = f"| {r['condition']} | {_cell(r['single_mean'], r['single_se'])} | {r['single_n']} |"
        if cpt:
            line += f" {_cell(r['cpt_mean'], r['cpt_se'])} | {r['cpt_n']} |"
        lines.append(line)
    return "\n".join(lines)


def format_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()

