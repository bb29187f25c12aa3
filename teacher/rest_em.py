"""ReST-EM for the teacher: sample and reward a round of self-edits, keep the ones that helped, SFT the
teacher on them with TRL, continue from the merged checkpoint.

Selection is explicit (`best_of_k` is the paper's: the single best self-edit per instance, whatever
its sign). The SFT step is TRL's `SFTTrainer` on a prompt/completion dataset (conversational when
the teacher uses a chat template, so TRL applies it), with LoRA on all linear layers by default,
merged into a full checkpoint that the next round loads like any model (`teacher/checkpoints.py`).
Everything a round computes goes to the run store as it is computed (baselines, self-edits, one record
per (self-edit, seed)), and a restarted round skips whatever the store already holds.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from seal.shared.config import ConfigError, ModelConfig, OuterConfig, SealConfig
from seal.shared.dist import Dist
from seal.shared.domain import Domain, SelfEdit, round_instances
from seal.shared.models import free_memory, load_model, load_tokenizer, resolve, uses_chat_template
from seal.shared.records import RewardRecord, RoundRecord, SelfEditRecord, edit_rewards, edit_scores
from seal.shared.store import RunStore
from seal.shared.tracking import Phase, Tracker, quiet_trainer
from seal.student.inner_loop import Job, JobResult, Student
from seal.student.loading import load_student, make_student
from seal.teacher.checkpoints import (
    copy_checkpoint,
    is_complete,
    publish,
    remove_stale_staging,
    staging_area,
    teacher_checkpoint,
    teacher_config,
    teacher_peft_config,
)
from seal.teacher.records import finish_round, format_table, parse_record, reward_record, round_stats, summary_rows
from seal.teacher.rewards import absorb_and_score, load_baselines, record_baselines
from seal.teacher.sampling import Teacher, derive_seed
from seal.teacher.served import ServedTeacher
from seal.teacher.trl_args import precision, reentrant_checkpointing_for_peft_zero3, trainer_kwargs, update_model
from seal.teacher.vllm_sampling import VLLMTeacher

log = logging.getLogger("seal")


def select(rewards: dict[tuple[str, int], float], valid: set[tuple[str, int]], filter_: str,
           top_fraction: float = 0.25, scores: dict[tuple[str, int], float] | None = None) -> list[tuple[str, int]]:
    """The (instance, self-edit index) pairs to train the teacher on. Invalid self-edits are never kept.
    `rewards` are gains over the no-update score; `scores` (for all_solved) the adapted scores."""
    scored = sorted(((k, v) for k, v in rewards.items() if k in valid and math.isfinite(v)),
                    key=lambda kv: (kv[0][0], kv[0][1]))
    if filter_ == "all_positive":
        return [k for k, v in scored if v > 0]
    if filter_ == "all_solved":  # the official ARC reward: 1 when solved, whatever the untouched model does
        if scores is None:
            raise ValueError("filter all_solved needs the adapted scores")
        return [k for k, _ in scored if scores.get(k, 0.0) >= 1.0]
    if filter_ == "top_fraction":
        ranked = sorted(scored, key=lambda kv: -kv[1])  # stable: ties keep (instance, index) order
        return sorted(k for k, _ in ranked[: max(1, math.ceil(top_fraction * len(ranked)))]) if ranked else []
    best: dict[str, tuple[tuple[str, int], float]] = {}
    for k, v in scored:
        if k[0] not in best or v > best[k[0]][1]:
            best[k[0]] = (k, v)
    if filter_ == "best_of_k":
        return [k for k, _ in best.values()]
    if filter_ == "best_of_k_positive":
        return [k for k, v in best.values() if v > 0]
    raise ValueError(f"unknown filter {filter_!r}")


@dataclass
class TeacherUpdate:
    path: Path
    examples: int
    losses: list[float]


def sft_dataset(pairs: Sequence[tuple[str, str]], chat: bool):
    """(user prompt, self-edit) pairs as a TRL prompt/completion dataset."""
    from datasets import Dataset

    if chat:
        rows = [{"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
                for p, c in pairs]
    else:
        rows = [{"prompt": p, "completion": c} for p, c in pairs]
    return Dataset.from_list(rows)


def learn(teacher: ModelConfig, chat: bool, pairs: Sequence[tuple[str, str]], outer: OuterConfig, target: Path,
          seed: int, report_to: Sequence[str] = (), is_main: bool = True) -> TeacherUpdate:
    """SFT the teacher on the kept self-edits and write the merged model to `target` (atomically)."""
    import datasets
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    if not pairs:
        raise ValueError("no self-edits were kept: nothing to train the teacher on")
    started = time.perf_counter()
    # The adapter is initialised inside SFTTrainer before it seeds; seed first so a resumed run
    # (whose RNG has seen different work) trains the same teacher.
    set_seed(seed)
    datasets.disable_progress_bars()
    model, tokenizer = load_model(update_model(teacher, outer.lora))
    on_cpu = next(model.parameters()).device.type == "cpu"
    with staging_area(target, is_main) as scratch:
        try:
            args = SFTConfig(**trainer_kwargs("sft", outer, dict(
                output_dir=str(scratch / "trainer"), num_train_epochs=outer.epochs, learning_rate=outer.lr,
                per_device_train_batch_size=outer.batch_size, gradient_accumulation_steps=outer.grad_accum,
                lr_scheduler_type=outer.lr_scheduler, max_length=outer.max_length, completion_only_loss=True,
                logging_steps=1, save_strategy="no", report_to=list(report_to), seed=seed, data_seed=seed,
                **precision(teacher.dtype, on_cpu), use_cpu=on_cpu,
                disable_tqdm=True, dataloader_num_workers=0)))
        except (TypeError, ValueError) as err:  # a value SFTConfig refuses (outer.trl_args)
            raise ConfigError(f"outer.trl_args: {err}") from err
        reentrant_checkpointing_for_peft_zero3(args, outer.lora)
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(pairs, chat),
                             processing_class=tokenizer, peft_config=teacher_peft_config(outer))
        # TRL truncates each row to max_length and drops the rows left with no completion token (a prompt
        # that fills max_length alone; trl/trainer/sft_trainer.py): they are not trained on
        trained = len(pairs) if args.packing else len(trainer.train_dataset)  # packed rows are not pairs
        if not trained:
            raise ValueError(f"teacher SFT: every kept self-edit's prompt fills outer.max_length "
                             f"({outer.max_length}) alone: raise outer.max_length")
        if trained < len(pairs) and is_main:
            log.warning("teacher SFT: %d of %d kept self-edits are not trained on: their prompt fills "
                        "outer.max_length (%d) alone", len(pairs) - trained, len(pairs), outer.max_length)
        with quiet_trainer(trainer, "teacher SFT", is_main):
            trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if losses and not all(math.isfinite(x) for x in losses):
            raise FloatingPointError(f"teacher SFT loss became non-finite: {losses}")
        publish(trainer, tokenizer, teacher, outer.lora, scratch, target, trained, losses, started)
    del trainer, model  # the teacher and its optimizer state go before the next round loads its models
    free_memory()
    return TeacherUpdate(path=target, examples=trained, losses=losses)


@dataclass
class Session:
    """The models of one round: the teacher that samples and the student that absorbs."""

    domain: Domain
    teacher: Any
    """A `Teacher` (transformers), a `VLLMTeacher` or a `ServedTeacher` (an OpenAI-compatible endpoint)."""
    student: Student
    teacher_cfg: ModelConfig

    def release_teacher(self) -> None:
        """Hand the teacher's device memory to the inner loops once the round's self-edits are drawn: a
        vLLM engine sleeps, a transformers teacher beside the student (teacher_student) is freed (the
        teacher update reads the checkpoint from disk). In mode self a transformers teacher is the student
        and stays."""
        if isinstance(self.teacher, VLLMTeacher):
            self.teacher.release()
        elif isinstance(self.teacher, Teacher) and self.teacher.model is not self.student.model:
            self.teacher.model = None
            free_memory()


def build_session(cfg: SealConfig, domain: Domain, teacher_cfg: ModelConfig | None = None,
                  student: Student | None = None, dist: Dist | None = None, instances: Sequence[Any] = ()) -> Session:
    """Load the models. In self mode the teacher samples from the student's base weights; in
    teacher_student mode an existing (fixed) student can be passed in and is kept. With sampling.backend
    openai the teacher is a `ServedTeacher` (teacher_student mode only; no teacher weights are loaded)."""
    teacher_cfg = teacher_cfg or cfg.teacher
    backend = cfg.sampling.backend
    if backend == "openai":  # the server holds the teacher: no transformers copy, and it cannot be the student
        if cfg.mode == "self":  # refused by the config already
            raise ConfigError("sampling.backend openai needs mode teacher_student: in mode self the teacher is "
                              "the student")
        if student is None:
            student = load_student(cfg.inner, cfg.student, domain, dist)
        return Session(domain=domain, teacher=ServedTeacher(cfg.sampling, domain), student=student,
                       teacher_cfg=teacher_cfg)
    vllm_teacher = backend == "vllm"
    if cfg.mode == "self" or not vllm_teacher:
        teacher_model, teacher_tok = load_model(teacher_cfg)
    else:  # the vLLM engine holds the teacher: no transformers copy needed
        teacher_model, teacher_tok = None, load_tokenizer(teacher_cfg)
    teacher_chat = uses_chat_template(teacher_cfg, teacher_tok)
    if cfg.mode == "self":
        student = make_student(teacher_model, teacher_tok, cfg.inner, teacher_cfg, domain)
    elif student is None:
        student = load_student(cfg.inner, cfg.student, domain, dist)
    if vllm_teacher:
        teacher: Any = VLLMTeacher(resolve(teacher_cfg.name), teacher_tok, cfg.sampling, domain, teacher_chat,
                                   instances, revision=teacher_cfg.revision)
    else:
        # in self mode the student's model is the teacher's: its LoRA slots are off outside Student calls
        teacher = Teacher(student.model if cfg.mode == "self" else teacher_model, teacher_tok, cfg.sampling,
                          domain, teacher_chat)
    return Session(domain=domain, teacher=teacher, student=student, teacher_cfg=teacher_cfg)


def sample_round(cfg: SealConfig, session: Session, store: RunStore, instances: Sequence[Any], round_: int,
                 dist: Dist) -> None:
    """k self-edits for each of this rank's instances not yet sampled, appended as they are drawn (the
    seed depends on the run seed, round and instance only, so a resumed run draws the same texts)."""
    domain, mine = session.domain, dist.shard(instances)
    have = {r.key for r in store.iter("self_edits", SelfEditRecord) if r.round == round_}
    todo = [i for i in mine if not all((domain.instance_id(i), j) in have for j in range(cfg.sampling.k))]
    with Phase(f"round {round_}: sampling {cfg.sampling.k} self-edits per instance", len(todo),
               dist.is_main) as phase:
        for instance in todo:
            iid = domain.instance_id(instance)
            samples = session.teacher.sample([instance], cfg.sampling.k, round_)[0]
            for i, text in enumerate(samples.texts):
                if (iid, i) not in have:  # appended before a kill; the same seed drew the same text
                    store.append("self_edits", parse_record(domain, instance, text, i, round=round_,
                                                            sample_seconds=samples.seconds / len(samples.texts)))
            log.debug("round %d: sampled %s", round_, domain.describe(instance))
            phase.update()


def reward_round(cfg: SealConfig, session: Session, store: RunStore, instances: Sequence[Any], round_: int,
                 dist: Dist | None = None) -> list[RewardRecord]:
    """Sample, parse and reward k self-edits per instance; returns this round's records (old and new).

    Phase 1: each instance gets its baseline and its k self-edits. Phase 2: every pending (self-edit,
    seed) inner loop runs, `student.slots` at a time, each chunk's records appended as soon as it is
    scored. Under N processes each rank does every N-th instance, then every N-th inner loop; the
    barriers make every rank see the whole store before the next phase."""
    dist = dist or Dist()
    domain, student = session.domain, session.student
    load_baselines(store, student)
    record_baselines(store, student, dist.shard(instances), dist.is_main)
    sample_round(cfg, session, store, instances, round_, dist)
    dist.barrier()
    session.release_teacher()
    load_baselines(store, student)
    edits = {r.key: r for r in store.iter("self_edits", SelfEditRecord) if r.round == round_}
    done = {(r.instance, r.index, r.seed) for r in store.iter("records", RewardRecord) if r.round == round_}
    dist.barrier()  # every rank has read `done` before any appends to it: the same job list to shard
    jobs: list[Job] = []
    for instance in instances:
        iid = domain.instance_id(instance)
        base = student.baselines[(student.base_fingerprint, iid)].value
        for i in range(cfg.sampling.k):
            edit = edits[(iid, i)]
            if not edit.ok:
                if (iid, i, None) not in done and dist.is_main:
                    store.append("records", RewardRecord(round_, iid, i, None, "invalid", base, None, 0.0,
                                                         reason=edit.reason))
                continue
            plan = domain.plan(instance, SelfEdit(text=edit.text, items=edit.items))
            jobs += [Job(instance, plan, seed, key=(iid, i)) for seed in cfg.inner.seeds if (iid, i, seed) not in done]

    def record(results: list[JobResult]) -> None:
        store.append_many("records", [reward_record(result, round_) for result in results])

    absorb_and_score(student, store, dist.shard(jobs), record, f"round {round_}: inner loops", dist.is_main)
    dist.barrier()
    return sorted((r for r in store.iter("records", RewardRecord) if r.round == round_),
                  key=lambda r: (r.instance, r.index, -1 if r.seed is None else r.seed))


def run_rounds(cfg: SealConfig, domain: Domain, store: RunStore, train: Sequence[Any],
               tracker: Tracker | None = None, dist: Dist | None = None) -> list[RoundRecord]:
    """ReST-EM: per round, reward k self-edits per instance, keep the best, SFT the teacher, continue
    from the merged checkpoint. Finished rounds and finished teacher updates are read back, not redone.
    Under N processes the inner loops are sharded and the teacher SFT runs data-parallel on all ranks."""
    tracker, dist = tracker or Tracker.off(), dist or Dist()
    if dist.is_main:
        remove_stale_staging(store)
    dist.barrier()
    finished = {r.round: r for r in store.iter("rounds", RoundRecord)}
    student: Student | None = None
    for round_ in range(cfg.outer.rounds):
        if round_ in finished and is_complete(teacher_checkpoint(store, round_ + 1)):
            continue
        instances = round_instances(cfg.data.per_round, cfg.data.shuffle_seed, train, round_)
        session = build_session(cfg, domain, teacher_config(cfg, store, round_), student, dist, instances)
        student = session.student if cfg.mode == "teacher_student" else None
        records = reward_round(cfg, session, store, instances, round_, dist)
        if dist.is_main:
            summary = format_table(summary_rows(domain, instances, records))
            store.write_text(f"summary_round{round_}.md", summary + "\n")
            print(f"\nRound {round_}: baseline and reward per instance ({domain.name}, k={cfg.sampling.k}, "
                  f"seeds={cfg.inner.seeds})\n{summary}\n", flush=True)
        rewards = edit_rewards(records)
        keep = select(rewards, {r.key for r in records if r.ok}, cfg.outer.filter, cfg.outer.top_fraction,
                      edit_scores(records))
        texts = {r.key: r.text for r in store.iter("self_edits", SelfEditRecord) if r.round == round_}
        by_id = {domain.instance_id(i): i for i in instances}
        pairs = [(domain.teacher_prompt(by_id[iid]), texts[(iid, idx)]) for iid, idx in keep]
        stats = round_stats(round_, list(rewards.values()), len(pairs))
        target = teacher_checkpoint(store, round_ + 1)
        chat, teacher_cfg = session.teacher.chat, session.teacher_cfg
        if cfg.mode == "self":  # the next round's student is the updated teacher, with a scoring engine of its own
            session.student.close()
        del session  # free the round's models before the teacher update
        if not is_complete(target):
            if pairs:
                log.info("round %d: teacher update on %d kept self-edits", round_, len(pairs))
                learn(teacher_cfg, chat, pairs, cfg.outer, target, derive_seed(cfg.seed, "sft", round_),
                      report_to=["wandb"] if tracker.enabled else [], is_main=dist.is_main)
            elif dist.is_main:
                log.warning("round %d: the filter %s kept no self-edits; the teacher is carried over unchanged",
                            round_, cfg.outer.filter)
                copy_checkpoint(teacher_cfg, target)
        dist.barrier()
        if finish_round(store, finished, stats, target, dist):
            tracker.log_round(round_, stats, records,
                              [e for e in store.iter("self_edits", SelfEditRecord) if e.round == round_])
        log.info("round %d: mean reward %+.3f, %.0f%% positive, kept %d of %d self-edits", round_,
                 stats.mean_reward, 100 * stats.fraction_positive, stats.kept, stats.self_edits)
    if student is not None:  # teacher_student's fixed student: the evaluation loads its own
        student.close()
    return [finished[r] for r in sorted(finished)]


def completion_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """Sum of log p(completion tokens | prompt) under a causal LM (for checking that SFT moved the teacher)."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    positions = torch.arange(len(p_ids) - 1, ids.shape[1] - 1, device=model.device)
    return float(logp[positions, ids[0, len(p_ids):]].sum())
