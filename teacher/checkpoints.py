"""Where each round's teacher lives, and how a teacher update is published there atomically.

Round r's teacher is the configured model for r = 0 and `RUN/teachers/round{r}/` after that: a full,
merged checkpoint that loads like any model. An update trains in a scratch folder beside its target,
writes the completion marker last and renames into place, so a killed update leaves no checkpoint that
looks finished (`is_complete`), and a restarted run redoes only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from seal.shared.config import ModelConfig, OuterConfig, SealConfig
from seal.shared.models import load_model
from seal.shared.store import RunStore
from seal.shared.tracking import heartbeat

DONE_MARKER = "seal_teacher_update.json"


def teacher_checkpoint(store: RunStore, round_: int) -> Path:
    return store.path / "teachers" / f"round{round_}"


def remove_stale_staging(store: RunStore) -> None:
    """Scratch folders (`teachers/.roundN-*`) left by updates killed before their clean-up; call on the
    main process before any update of this run starts."""
    for stale in (store.path / "teachers").glob(".round*"):
        shutil.rmtree(stale, ignore_errors=True)


def teacher_config(cfg: SealConfig, store: RunStore, round_: int) -> ModelConfig:
    """The teacher of round r: the configured model for r=0, else the checkpoint written by round r-1."""
    if round_ == 0:
        return cfg.teacher
    return dataclasses.replace(cfg.teacher, name=str(teacher_checkpoint(store, round_)))


def write_update_marker(model_dir: Path, examples: int, losses: list[float], seconds: float | None = None) -> None:
    """Written last, inside the staging folder: a checkpoint without it is incomplete. `seconds`: how long
    the update took (a resumed run reports it from here)."""
    marker = {"examples": examples, "losses": losses} | ({"seconds": seconds} if seconds is not None else {})
    (model_dir / DONE_MARKER).write_text(json.dumps(marker))


def is_complete(path: Path) -> bool:
    return (path / DONE_MARKER).is_file()


def read_update(path: Path) -> dict[str, Any]:
    return json.loads((path / DONE_MARKER).read_text())


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
            losses: list[float], started: float | None = None) -> None:
    """Save through the trainer — every rank calls it, so ZeRO-3 gathers its partitioned weights — then,
    on the main process, merge a LoRA adapter into a fresh copy of the base weights (merging the trained
    model in place is wrong under ZeRO-3, whose local tensors are empty shards), write the completion
    marker (with the seconds since `started`, a `time.perf_counter()`) and rename into place."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    saved = scratch / ("adapter" if lora else "model")
    with heartbeat(f"saving the teacher update to {target}"):  # minutes for a large teacher
        trainer.save_model(str(saved))
        # Under a ZeRO-3 launch the trainer's arguments turned transformers' ZeRO-3 switch on for the process
        # (TrainingArguments -> DeepSpeedPlugin.set_deepspeed_weakref, kept alive by accelerate's state).
        # Off on every rank once the weights are saved: the merge below loads the base weights on the main
        # process only (inside deepspeed.zero.Init its collectives would need every rank: a deadlock), and
        # the next round's models must load the same way on every rank (whole on rank 0 and partitioned on
        # the others, round 2 hung). The next trainer turns it on again.
        unset_hf_deepspeed_config()
        if trainer.accelerator.is_main_process:
            if lora:
                weights = load_file(str(saved / "adapter_model.safetensors"))
                if not weights or not all(t.numel() for t in weights.values()):
                    raise RuntimeError(f"the saved teacher adapter in {saved} is empty: the trainer did not gather "
                                       "its weights (DeepSpeed ZeRO-3 needs the trainer's own save_model)")
                base, _ = load_model(dataclasses.replace(teacher, device="cpu"))
                merged = PeftModel.from_pretrained(base, saved).merge_and_unload()
                staging = scratch / "model"
                merged.save_pretrained(staging)  # safetensors: transformers 5 writes nothing else
            else:
                staging = saved
            tokenizer.save_pretrained(staging)
            seconds = time.perf_counter() - started if started is not None else None
            write_update_marker(staging, examples=examples, losses=losses, seconds=seconds)
            if target.exists():  # an incomplete copy from a killed run
                shutil.rmtree(target)
            staging.rename(target)
    trainer.accelerator.wait_for_everyone()


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
