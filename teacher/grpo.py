"""GRPO for the teacher: TRL's `GRPOTrainer`, with the student's downstream gain as the reward.

Each GRPO step samples `sampling.k` self-edits (a group) per training instance; `StudentReward` runs
the student inner loop for the whole batch at once (`Student.run`, K adapters per pass) and returns
exactly one gain per completion. A round is `outer.grpo_steps` steps; its LoRA is then merged into the
next round's teacher checkpoint, like a ReST-EM round.

What `self` mode means here: the student is a copy of the teacher *as it was at the start of the
round*. It stays fixed during the round — the teacher changes at every step, and a student that
changed inside a step would make the group's rewards incomparable — and it is refreshed from the
merged teacher between rounds. That costs a second copy of the weights in memory.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Sequence

from seal.shared.config import ConfigError, SealConfig
from seal.shared.dist import Dist
from seal.shared.domain import Domain, SelfEditError, round_instances
from seal.shared.models import free_memory, load_model, uses_chat_template
from seal.shared.records import GrpoRewardRecord, RoundRecord
from seal.shared.store import RunStore
from seal.shared.tracking import Tracker, quiet_trainer
from seal.student.inner_loop import Job, Student
from seal.student.loading import load_student, make_student
from seal.teacher.checkpoints import (
    is_complete,
    publish,
    remove_stale_staging,
    staging_area,
    teacher_checkpoint,
    teacher_config,
    teacher_peft_config,
)
from seal.teacher.records import finish_round, round_stats
from seal.teacher.rewards import absorb_and_score, load_baselines
from seal.teacher.sampling import derive_seed
from seal.teacher.trl_args import precision, reentrant_checkpointing_for_peft_zero3, trainer_kwargs, update_model

log = logging.getLogger("seal")


def completion_text(completion: Any) -> str:
    """A TRL completion as text: plain strings, or the assistant turn of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unexpected completion type {type(completion).__name__}")


class StudentReward:
    """A TRL reward function: each completion is a self-edit for the instance in its `instance_id` column."""

    __name__ = "seal_reward"  # TRL names the logged metric `rewards/<__name__>/mean`

    def __init__(self, domain: Domain, student: Student, instances: Sequence[Any], seeds: Sequence[int],
                 store: RunStore | None = None, round_: int = 0, attempt: str | None = None):
        self.domain, self.student, self.seeds, self.store, self.round = domain, student, list(seeds), store, round_
        self.by_id = {domain.instance_id(i): i for i in instances}
        self.calls = 0
        self.attempt = attempt or uuid.uuid4().hex[:8]  # tells this run's records from a killed earlier run's

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], instance_id: Sequence[str],
                 **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if len(instance_id) != len(texts):
            raise ValueError(f"got {len(texts)} completions but {len(instance_id)} instance ids")
        jobs: list[Job] = []
        reasons: list[str | None] = [None] * len(texts)
        for i, (text, iid) in enumerate(zip(texts, instance_id)):
            instance = self.by_id[iid]
            try:
                plan = self.domain.plan(instance, self.domain.parse(instance, text))
            except SelfEditError as err:
                reasons[i] = err.reason
                continue
            jobs += [Job(instance, plan, seed, key=i) for seed in self.seeds]
        gains: dict[int, list[float]] = {}
        for result in absorb_and_score(self.student, self.store, jobs, what="GRPO rewards", is_main=False):
            gains.setdefault(result.job.key, []).append(result.reward)
            if result.error:
                reasons[result.job.key] = result.error
        rewards = [sum(gains[i]) / len(gains[i]) if i in gains else 0.0 for i in range(len(texts))]
        if self.store is not None:
            for text, iid, reward, reason in zip(texts, instance_id, rewards, reasons):
                self.store.append("grpo_rewards", GrpoRewardRecord(self.round, self.attempt, self.calls, iid, text,
                                                                   reward, reason))
        self.calls += 1
        return rewards


def grpo_dataset(domain: Domain, instances: Sequence[Any], chat: bool):
    from datasets import Dataset

    rows = []
    for inst in instances:
        prompt = domain.teacher_prompt(inst)
        rows.append({"prompt": [{"role": "user", "content": prompt}] if chat else prompt,
                     "instance_id": domain.instance_id(inst)})
    return Dataset.from_list(rows)


def grpo_args(cfg: SealConfig, output_dir: str, on_cpu: bool, seed: int, report_to: Sequence[str]):
    from trl import GRPOConfig

    outer, k = cfg.outer, cfg.sampling.k
    kwargs = trainer_kwargs("grpo", outer, dict(
        output_dir=output_dir, learning_rate=outer.lr, beta=outer.grpo_beta, num_generations=k,
        per_device_train_batch_size=k * outer.grpo_prompts_per_step, max_steps=outer.grpo_steps,
        max_completion_length=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
        top_p=cfg.sampling.top_p, logging_steps=1, save_strategy="no", report_to=list(report_to),
        seed=seed, use_cpu=on_cpu, **precision(cfg.teacher.dtype, on_cpu),
        use_vllm=False, disable_tqdm=True, dataloader_num_workers=0))
    try:
        args = GRPOConfig(**kwargs)
    except (TypeError, ValueError) as err:  # a value GRPOConfig.__post_init__ refuses (outer.trl_args)
        raise ConfigError(f"outer.trl_args: {err}") from err
    return reentrant_checkpointing_for_peft_zero3(args, outer.lora)


def run_grpo(cfg: SealConfig, domain: Domain, store: RunStore, train: Sequence[Any],
             tracker: Tracker | None = None, dist: Dist | None = None) -> list[RoundRecord]:
    """GRPO rounds; each writes the merged teacher for the next. Finished rounds are read back."""
    import datasets
    from transformers import set_seed
    from trl import GRPOTrainer

    tracker, dist = tracker or Tracker.off(), dist or Dist()
    datasets.disable_progress_bars()
    if dist.is_main:
        remove_stale_staging(store)
    dist.barrier()
    finished = {r.round: r for r in store.iter("rounds", RoundRecord)}
    fixed_student: Student | None = None
    for round_ in range(cfg.outer.rounds):
        target = teacher_checkpoint(store, round_ + 1)
        if round_ in finished and is_complete(target):
            continue
        teacher_cfg = teacher_config(cfg, store, round_)
        instances = round_instances(cfg.data.per_round, cfg.data.shuffle_seed, train, round_)
        logged: list[float] = []
        attempt = None
        if not is_complete(target):
            started = time.perf_counter()
            # the teacher first: an unset inner.parallel_adapters sizes K from the memory left beside it (the
            # inner loops run inside its reward calls)
            model, tok = load_model(update_model(teacher_cfg, cfg.outer.lora))
            if cfg.mode == "self":  # a frozen copy of this round's teacher
                s_model, s_tok = load_model(teacher_cfg)
                student = make_student(s_model, s_tok, cfg.inner, teacher_cfg, domain)
            else:
                if fixed_student is None:
                    fixed_student = load_student(cfg.inner, cfg.student, domain, dist)
                student = fixed_student
            load_baselines(store, student)
            reward = StudentReward(domain, student, instances, cfg.inner.seeds, store, round_,
                                   attempt=dist.share(uuid.uuid4().hex[:8]))  # one attempt id for all ranks
            attempt = reward.attempt
            # a killed GRPO round restarts from its first step (TRL state is not checkpointed mid-round)
            seed = derive_seed(cfg.seed, "grpo", round_)
            set_seed(seed)
            chat = uses_chat_template(teacher_cfg, tok)
            on_cpu = next(model.parameters()).device.type == "cpu"
            with staging_area(target, dist.is_main) as scratch:
                args = grpo_args(cfg, str(scratch / "trainer"), on_cpu, seed, ["wandb"] if tracker.enabled else [])
                trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                                      train_dataset=grpo_dataset(domain, instances, chat), processing_class=tok,
                                      peft_config=teacher_peft_config(cfg.outer))
                with quiet_trainer(trainer, f"GRPO round {round_}", dist.is_main):
                    trainer.train()
                losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
                publish(trainer, tok, teacher_cfg, cfg.outer.lora, scratch, target, examples=reward.calls,
                        losses=losses, started=started)
                key = f"rewards/{reward.__name__}/mean"
                logged = [h[key] for h in trainer.state.log_history if key in h]
            if cfg.mode == "self":  # the next round's frozen copy gets a scoring engine of its own
                student.close()
                del student, s_model, s_tok  # this round's frozen copy goes with the teacher
            del model, trainer, reward
            free_memory()  # the trainer's cycles hold the teacher and its optimizer state
        rows = [r for r in store.iter("grpo_rewards", GrpoRewardRecord) if r.round == round_]
        if attempt is None:  # finished by an earlier process: its records are the last attempt's
            attempt = rows[-1].attempt if rows else None
        values = [r.reward for r in rows if r.attempt == attempt]  # a killed attempt's rows don't count
        stats = round_stats(round_, values, len(values), algorithm="grpo",
                            steps=len({r.call for r in rows if r.attempt == attempt}), logged_rewards=logged)
        finish_round(store, finished, stats, target, dist)
        log.info("GRPO round %d: %d steps, mean reward %+.3f, %.0f%% positive", round_, stats.steps,
                 stats.mean_reward, 100 * stats.fraction_positive)
    if fixed_student is not None:  # teacher_student's fixed student: the evaluation loads its own
        fixed_student.close()
    return [finished[r] for r in sorted(finished)]
