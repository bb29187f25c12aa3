"""One SEAL round: the teacher samples self-edits, the student absorbs each, the gain is the reward.

Everything a round computes goes to the run store as it is computed (baselines, self-edits, one record
per (self-edit, seed)), and a restarted round skips whatever the store already holds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from seal.shared.config import ModelConfig, SealConfig
from seal.shared.domain import Domain, Score, SelfEdit, SelfEditError
from seal.shared.models import load_model, load_tokenizer, resolve, uses_chat_template
from seal.shared.dist import Dist
from seal.shared.store import RunStore
from seal.shared.tracking import Tracker, progress
from seal.student.inner_loop import Job, JobResult, Student
from seal.teacher.rest_em import learn, read_update, select, write_update_marker
from seal.teacher.rest_em import is_complete as teacher_complete
from seal.teacher.sampling import Teacher, derive_seed
from seal.teacher.vllm_sampling import VLLMTeacher

log = logging.getLogger("seal")


@dataclass
class Session:
    cfg: SealConfig
    domain: Domain
    teacher: Teacher
    student: Student
    teacher_cfg: ModelConfig


def build_session(cfg: SealConfig, domain: Domain, teacher_cfg: ModelConfig | None = None,
                  student: Student | None = None, dist: Dist = Dist()) -> Session:
    """Load the models. In self mode the teacher samples from the student's base weights; in
    teacher_student mode an existing (fixed) student can be passed in and is kept."""
    teacher_cfg = teacher_cfg or cfg.teacher
    vllm_teacher = cfg.sampling.backend == "vllm"
    if cfg.mode == "self" or not vllm_teacher:
        teacher_model, teacher_tok = load_model(teacher_cfg)
    else:  # the vLLM engine holds the teacher: no transformers copy needed
        teacher_model, teacher_tok = None, load_tokenizer(teacher_cfg)
    teacher_chat = uses_chat_template(teacher_cfg, teacher_tok)
    if cfg.mode == "self":
        student = make_student(teacher_model, teacher_tok, cfg, domain, teacher_cfg)
    elif student is None:
        student = load_student(cfg, domain, dist)
    if vllm_teacher:
        teacher: Any = VLLMTeacher(resolve(teacher_cfg.name), teacher_tok, cfg.sampling, domain, teacher_chat)
    else:
        # in self mode the student's model is the teacher's: its LoRA slots are off outside Student calls
        teacher = Teacher(student.model if cfg.mode == "self" else teacher_model, teacher_tok, cfg.sampling,
                          domain, teacher_chat)
    return Session(cfg=cfg, domain=domain, teacher=teacher, student=student, teacher_cfg=teacher_cfg)


def load_student(cfg: SealConfig, domain: Domain, dist: Dist = Dist()) -> Student:
    """teacher_student mode's fixed student: whole on every rank, or partitioned by DeepSpeed ZeRO-3
    across them (`inner.deepspeed`)."""
    if cfg.inner.deepspeed:
        from seal.student.partitioned import load_partitioned_student

        return load_partitioned_student(cfg, domain, cfg.student, dist)
    model, tokenizer = load_model(cfg.student)
    return make_student(model, tokenizer, cfg, domain, cfg.student)


def make_student(model, tokenizer, cfg: SealConfig, domain: Domain, model_cfg: ModelConfig) -> Student:
    """A Student on `model`, scoring through vLLM when `inner.score_backend: vllm`."""
    chat = uses_chat_template(model_cfg, tokenizer)
    student = Student(model, tokenizer, cfg.inner, domain, chat)
    if cfg.inner.score_backend == "vllm":
        from seal.student.vllm_scoring import VLLMScorer

        student.scorer = VLLMScorer(resolve(model_cfg.name), tokenizer, domain, chat, cfg.inner.lora_r,
                                    student.slots, cfg.inner.vllm)
    return student


def load_baselines(store: RunStore, student: Student) -> None:
    for rec in store.iter("baselines"):
        student.baselines[(rec["student"], rec["instance"])] = Score(rec["score"], rec["details"])


def record_baselines(store: RunStore | None, student: Student, instances: Sequence[Any]) -> list[float]:
    """The student's no-update score on each instance; each newly measured one is appended to the store
    at once."""
    def measured(instance: Any, score: Score) -> None:
        if store is not None:
            store.append("baselines", {"student": student.base_fingerprint,
                                       "instance": student.domain.instance_id(instance),
                                       "score": score.value, "details": score.details})

    return [score.value for score in student.baseline_many(instances, measured)]


def reward_round(session: Session, store: RunStore, instances: Sequence[Any], round_: int,
                 tracker: Tracker | None = None, dist: Dist = Dist()) -> list[dict[str, Any]]:
    """Sample, parse and reward k self-edits per instance; returns this round's records (old and new).

    Phase 1: each instance gets its baseline and its k self-edits. Phase 2: every pending (self-edit,
    seed) inner loop runs, `student.slots` at a time, each chunk's records appended as soon as it is
    scored. Under N processes each rank does every N-th instance, then every N-th inner loop; the
    barriers make every rank see the whole store before the next phase."""
    cfg, domain, student = session.cfg, session.domain, session.student
    load_baselines(store, student)
    record_baselines(store, student, dist.shard(instances))
    edits = {(r["instance"], r["index"]): r for r in store.iter("self_edits") if r["round"] == round_}
    for n, instance in enumerate(dist.shard(instances), 1):
        iid = domain.instance_id(instance)
        if all((iid, i) in edits for i in range(cfg.sampling.k)):
            continue
        samples = session.teacher.sample([instance], cfg.sampling.k, round_)[0]
        for i, text in enumerate(samples.texts):
            if (iid, i) in edits:  # appended before a kill; the same seed drew the same text
                continue
            rec = parse_record(domain, instance, text)
            rec.update(round=round_, instance=iid, index=i, sample_seconds=samples.seconds / len(samples.texts))
            store.append("self_edits", rec)
        log.info("round %d: sampled %d/%d (%s)", round_, n, len(dist.shard(instances)), domain.describe(instance))
    dist.barrier()
    load_baselines(store, student)
    edits = {(r["instance"], r["index"]): r for r in store.iter("self_edits") if r["round"] == round_}
    done = {(r["instance"], r["index"], r["seed"]) for r in store.iter("records") if r["round"] == round_}
    jobs: list[tuple[Job, dict[str, Any]]] = []
    for instance in instances:
        iid = domain.instance_id(instance)
        base = student.baselines[(student.base_fingerprint, iid)].value
        for i in range(cfg.sampling.k):
            edit = edits[(iid, i)]
            meta = {"round": round_, "instance": iid, "index": i, "baseline": base}
            if edit["status"] != "ok":
                if (iid, i, None) not in done and dist.is_main:
                    store.append("records", {"status": "invalid", "reason": edit["reason"], "score": None,
                                             "reward": 0.0, **meta, "seed": None})
                continue
            plan = domain.plan(instance, SelfEdit(text=edit["text"], items=edit["items"]))
            jobs += [(Job(instance, plan, seed), {**meta, "seed": seed}) for seed in cfg.inner.seeds
                     if (iid, i, seed) not in done]
    mine = dist.shard(jobs)
    meta_of = {id(job): meta for job, meta in mine}
    with progress(len(mine), f"round {round_} inner loops", dist.is_main) as bar:
        def record(results: list[JobResult]) -> None:
            for result in results:
                meta = meta_of[id(result.job)]
                store.append("records", {**_reward_record(result, meta["baseline"]), **meta})
            bar.update(len(results))

        student.run([job for job, _ in mine], done=record)
    dist.barrier()
    return sorted((r for r in store.iter("records") if r["round"] == round_),
                  key=lambda r: (r["instance"], r["index"], -1 if r["seed"] is None else r["seed"]))


def parse_record(domain: Domain, instance: Any, text: str) -> dict[str, Any]:
    try:
        edit = domain.parse(instance, text)
    except SelfEditError as err:
        return {"text": text, "status": "invalid", "reason": err.reason, "items": []}
    return {"text": text, "status": "ok", "reason": None, "items": edit.items}


def _reward_record(result: JobResult, base: float) -> dict[str, Any]:
    if result.error:
        return {"status": "failed", "reason": result.error, "score": None, "reward": 0.0}
    a = result.stats
    return {"status": "ok", "reason": None, "score": result.score.value, "reward": result.score.value - base,
            "train": {"steps": a.steps, "tokens": a.tokens, "first_loss": a.first_loss, "last_loss": a.last_loss},
            "seconds": {"absorb": a.seconds, "score": result.score_seconds},
            "answers": [d["prediction"] for d in result.score.details]}


def edit_rewards(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """Mean reward over seeds for each (instance, self-edit index); invalid edits count as 0."""
    sums: dict[tuple[str, int], list[float]] = {}
    for r in records:
        sums.setdefault((r["instance"], r["index"]), []).append(r["reward"] if r["reward"] is not None else 0.0)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def summary_rows(domain: Domain, instances: Sequence[Any], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rewards = edit_rewards(records)
    base = {r["instance"]: r["baseline"] for r in records}
    valid = {(r["instance"], r["index"]) for r in records if r["status"] == "ok"}
    rows = []
    for inst in instances:
        iid = domain.instance_id(inst)
        mine = [v for (i, _), v in rewards.items() if i == iid]
        rows.append({"instance": iid, "name": domain.describe(inst), "baseline": base.get(iid, math.nan),
                     "mean_reward": sum(mine) / len(mine) if mine else math.nan,
                     "best_reward": max(mine) if mine else math.nan,
                     "valid": sum(1 for (i, _) in valid if i == iid), "edits": len(mine)})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| instance | baseline | mean reward | best reward | valid/k |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name'][:40]} | {r['baseline']:.3f} | {r['mean_reward']:+.3f} | "
                     f"{r['best_reward']:+.3f} | {r['valid']}/{r['edits']} |")
    finite = [r for r in rows if not math.isnan(r["mean_reward"])]
    if finite:
        n = len(finite)
        lines.append(f"| **mean over {n}** | {sum(r['baseline'] for r in finite) / n:.3f} | "
                     f"{sum(r['mean_reward'] for r in finite) / n:+.3f} | "
                     f"{sum(r['best_reward'] for r in finite) / n:+.3f} | |")
    return "\n".join(lines)


def teacher_checkpoint(store: RunStore, round_: int) -> Path:
    return store.path / "teachers" / f"round{round_}"


def teacher_config(cfg: SealConfig, store: RunStore, round_: int) -> ModelConfig:
    """The teacher of round r: the configured model for r=0, else the checkpoint written by round r-1."""
    if round_ == 0:
        return cfg.teacher
    return dataclasses.replace(cfg.teacher, name=str(teacher_checkpoint(store, round_)))


def round_stats(records: Sequence[dict[str, Any]], kept: int) -> dict[str, Any]:
    rewards = list(edit_rewards(records).values())
    return {"mean_reward": sum(rewards) / len(rewards) if rewards else math.nan,
            "fraction_positive": sum(r > 0 for r in rewards) / len(rewards) if rewards else math.nan,
            "self_edits": len(rewards), "kept": kept}


def run_rounds(cfg: SealConfig, domain: Domain, store: RunStore, train: Sequence[Any],
               tracker: Tracker | None = None, dist: Dist = Dist()) -> list[dict[str, Any]]:
    """ReST-EM: per round, reward k self-edits per instance, keep the best, SFT the teacher, continue
    from the merged checkpoint. Finished rounds and finished teacher updates are read back, not redone.
    Under N processes the inner loops are sharded and the teacher SFT runs data-parallel on all ranks."""
    finished = {r["round"]: r for r in store.iter("rounds")}
    student: Student | None = None
    for round_ in range(cfg.outer.rounds):
        if round_ in finished and teacher_complete(teacher_checkpoint(store, round_ + 1)):
            continue
        session = build_session(cfg, domain, teacher_config(cfg, store, round_), student, dist)
        student = session.student if cfg.mode == "teacher_student" else None
        records = reward_round(session, store, train, round_, tracker, dist)
        if dist.is_main:
            summary = format_table(summary_rows(domain, train, records))
            store.write_text(f"summary_round{round_}.md", summary + "\n")
            print(f"\nRound {round_}: baseline and reward per instance ({domain.name}, k={cfg.sampling.k}, "
                  f"seeds={cfg.inner.seeds})\n{summary}\n", flush=True)
        rewards = edit_rewards(records)
        valid = {(r["instance"], r["index"]) for r in records if r["status"] == "ok"}
        keep = select(rewards, valid, cfg.outer.filter, cfg.outer.top_fraction)
        texts = {(r["instance"], r["index"]): r["text"] for r in store.iter("self_edits") if r["round"] == round_}
        by_id = {domain.instance_id(i): i for i in train}
        pairs = [(domain.teacher_prompt(by_id[iid]), texts[(iid, idx)]) for iid, idx in keep]
        stats = round_stats(records, len(pairs))
        target = teacher_checkpoint(store, round_ + 1)
        chat, teacher_cfg = session.teacher.chat, session.teacher_cfg
        del session  # free the round's models before the teacher update
        if not teacher_complete(target):
            if pairs:
                log.info("round %d: teacher update on %d kept self-edits", round_, len(pairs))
                learn(teacher_cfg, chat, pairs, cfg.outer, target, derive_seed(cfg.seed, "sft", round_),
                      report_to=["wandb"] if tracker is not None and tracker.enabled else [])
            elif dist.is_main:
                log.warning("round %d: the filter %s kept no self-edits; the teacher is carried over unchanged",
                            round_, cfg.outer.filter)
                copy_checkpoint(teacher_cfg, target)
        dist.barrier()
        if finish_round(store, finished, round_, stats, target, dist) and tracker is not None:
            tracker.log_round(round_, stats, records, [e for e in store.iter("self_edits") if e["round"] == round_])
        log.info("round %d: mean reward %+.3f, %.0f%% positive, kept %d of %d self-edits", round_,
                 stats["mean_reward"], 100 * stats["fraction_positive"], stats["kept"], stats["self_edits"])
    return [finished[r] for r in sorted(finished)]


def finish_round(store: RunStore, finished: dict[int, dict[str, Any]], round_: int, stats: dict[str, Any],
                 target: Path, dist: Dist) -> bool:
    """Add the teacher update's losses (from its checkpoint) to the round's stats and record the round
    once (on the main process). True when it was recorded now."""
    losses = read_update(target)["losses"]
    stats.update(sft_steps=len(losses), sft_first_loss=losses[0] if losses else None,
                 sft_last_loss=losses[-1] if losses else None)
    if round_ in finished:
        return False
    if dist.is_main:
        store.append("rounds", {"round": round_, **stats})
    finished[round_] = {"round": round_, **stats}
    return True


def copy_checkpoint(teacher_cfg: ModelConfig, target: Path) -> None:
    """Write the unchanged teacher as the next round's checkpoint (so every round has one to load)."""
    model, tokenizer = load_model(teacher_cfg)
    staging = target.with_name(f".{target.name}-copy")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_update_marker(staging, examples=0, losses=[])
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def format_rounds(rounds: Sequence[dict[str, Any]]) -> str:
    lines = ["| round | mean reward | positive | kept / self-edits | teacher loss (first → last) |",
             "|---:|---:|---:|---:|---|"]
    for r in rounds:
        loss = (f"{r['sft_first_loss']:.3f} → {r['sft_last_loss']:.3f}" if r.get("sft_first_loss") is not None
                else "no update")
        lines.append(f"| {r['round']} | {r['mean_reward']:+.3f} | {100 * r['fraction_positive']:.0f}% | "
                     f"{r['kept']} / {r['self_edits']} | {loss} |")
    return "\n".join(lines)
