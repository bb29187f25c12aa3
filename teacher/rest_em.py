"""ReST-EM for the teacher: keep the self-edits that helped, then SFT the teacher on them with TRL.

Selection is explicit (`best_of_k` is the paper's: the single best self-edit per instance, whatever
its sign). The SFT step is TRL's `SFTTrainer` on a prompt/completion dataset (conversational when
the teacher uses a chat template, so TRL applies it), with LoRA on all linear layers by default,
merged into a full checkpoint that the next round loads like any model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from seal.shared.config import ModelConfig, OuterConfig
from seal.shared.models import load_model

DONE_MARKER = "seal_teacher_update.json"


def select(rewards: dict[tuple[str, int], float], valid: set[tuple[str, int]], filter_: str,
           top_fraction: float = 0.25) -> list[tuple[str, int]]:
    """The (instance, self-edit index) pairs to train the teacher on. Invalid self-edits are never kept."""
    scored = sorted(((k, v) for k, v in rewards.items() if k in valid and math.isfinite(v)),
                    key=lambda kv: (kv[0][0], kv[0][1]))
    if filter_ == "all_positive":
        return [k for k, v in scored if v > 0]
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


def teacher_peft_config(outer: OuterConfig):
    """LoRA for the teacher update (None: full finetuning)."""
    from peft import LoraConfig

    if not outer.lora:
        return None
    targets: Any = outer.target_modules
    return LoraConfig(r=outer.lora_r, lora_alpha=outer.lora_alpha, lora_dropout=outer.lora_dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")


@contextlib.contextmanager
def staging_area(target: Path, is_main: bool = True) -> Iterator[Path]:
    """A scratch folder beside `target` on the main process (stale ones from killed updates are removed
    first); a private temporary folder on the other ranks, which never publish."""
    if is_main:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="seal-rank-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def publish(trainer, tokenizer, teacher: ModelConfig, lora: bool, scratch: Path, target: Path, examples: int,
            losses: list[float]) -> None:
    """Save through the trainer — every rank calls it, so ZeRO-3 gathers its partitioned weights — then,
    on the main process, merge a LoRA adapter into a fresh copy of the base weights (merging the trained
    model in place is wrong under ZeRO-3, whose local tensors are empty shards), write the completion
    marker and rename into place."""
    from peft import PeftModel
    from safetensors.torch import load_file

    saved = scratch / ("adapter" if lora else "model")
    trainer.save_model(str(saved))
    if trainer.accelerator.is_main_process:
        if lora:
            weights = load_file(str(saved / "adapter_model.safetensors"))
            if not weights or not all(t.numel() for t in weights.values()):
                raise RuntimeError(f"the saved teacher adapter in {saved} is empty: the trainer did not gather "
                                   "its weights (DeepSpeed ZeRO-3 needs the trainer's own save_model)")
            base = _load_unpartitioned(teacher, trainer)
            merged = PeftModel.from_pretrained(base, saved).merge_and_unload()
            staging = scratch / "model"
            merged.save_pretrained(staging, safe_serialization=True)
        else:
            staging = saved
        tokenizer.save_pretrained(staging)
        write_update_marker(staging, examples=examples, losses=losses)
        if target.exists():  # an incomplete copy from a killed run
            shutil.rmtree(target)
        staging.rename(target)
    trainer.accelerator.wait_for_everyone()


def _load_unpartitioned(teacher: ModelConfig, trainer):
    """The base weights as a plain CPU model. Under ZeRO-3, transformers would build it inside
    `deepspeed.zero.Init`, whose collectives need every rank — while only the main process merges (a
    deadlock seen on gloo): switch the global ZeRO-3 config off for this load and back on after it."""
    from transformers.integrations.deepspeed import (is_deepspeed_zero3_enabled, set_hf_deepspeed_config,
                                                     unset_hf_deepspeed_config)

    zero3 = is_deepspeed_zero3_enabled()
    if zero3:
        unset_hf_deepspeed_config()
    try:
        model, _ = load_model(dataclasses.replace(teacher, device="cpu"))
    finally:
        if zero3 and getattr(trainer.args, "hf_deepspeed_config", None) is not None:
            set_hf_deepspeed_config(trainer.args.hf_deepspeed_config)
    return model


def learn(teacher: ModelConfig, chat: bool, pairs: Sequence[tuple[str, str]], outer: OuterConfig, target: Path,
          seed: int, report_to: Sequence[str] = ()) -> TeacherUpdate:
    """SFT the teacher on the kept self-edits and write the merged model to `target` (atomically)."""
    import datasets
    from accelerate import PartialState
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    if not pairs:
        raise ValueError("no self-edits were kept: nothing to train the teacher on")
    # The adapter is initialised inside SFTTrainer before it seeds; seed first so a resumed run
    # (whose RNG has seen different work) trains the same teacher.
    set_seed(seed)
    datasets.disable_progress_bars()
    model, tokenizer = load_model(teacher)
    on_cpu = next(model.parameters()).device.type == "cpu"
    with staging_area(target, PartialState().is_main_process) as scratch:
        args = SFTConfig(
            output_dir=str(scratch / "trainer"), num_train_epochs=outer.epochs, learning_rate=outer.lr,
            per_device_train_batch_size=outer.batch_size, gradient_accumulation_steps=outer.grad_accum,
            lr_scheduler_type=outer.lr_scheduler, max_length=outer.max_length, completion_only_loss=True,
            logging_steps=1, save_strategy="no", report_to=list(report_to), seed=seed, data_seed=seed,
            bf16=(not on_cpu) and teacher.dtype == "bfloat16", fp16=False, use_cpu=on_cpu,
            disable_tqdm=True, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(pairs, chat),
                             processing_class=tokenizer, peft_config=teacher_peft_config(outer))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if losses and not all(math.isfinite(x) for x in losses):
            raise FloatingPointError(f"teacher SFT loss became non-finite: {losses}")
        publish(trainer, tokenizer, teacher, outer.lora, scratch, target, len(pairs), losses)
    return TeacherUpdate(path=target, examples=len(pairs), losses=losses)


def write_update_marker(model_dir: Path, examples: int, losses: list[float]) -> None:
    """Written last, inside the staging folder: a checkpoint without it is incomplete."""
    (model_dir / DONE_MARKER).write_text(json.dumps({"examples": examples, "losses": losses}))


def is_complete(path: Path) -> bool:
    return (path / DONE_MARKER).is_file()


def read_update(path: Path) -> dict[str, Any]:
    return json.loads((path / DONE_MARKER).read_text())


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
