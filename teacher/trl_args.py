"""`outer.trl_args`: extra arguments for TRL's trainer config (`SFTConfig` for ReST-EM, `GRPOConfig` for GRPO).

They are checked when the run starts (`check_trl_args`), before any model loads: a name the trainer
config does not have is an error that suggests the nearest ones, and a name SEAL derives from its own
config (the learning rate, the seed, the output folder, ...) is refused with the SEAL key to set
instead, so one value never has two sources. Everything else (`gradient_checkpointing`, `packing`,
`use_vllm`, `loss_type`, ...) reaches the trainer config as given, and TRL validates its value.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

from seal.shared.config import ConfigError, ModelConfig, OuterConfig, SealConfig

# TRL argument -> the SEAL key it is derived from (None: SEAL's own plumbing, not a user setting)
_DERIVED_COMMON = {"learning_rate": "outer.lr", "seed": "seed", "output_dir": None, "report_to": "report_to",
                   "save_strategy": None, "logging_steps": None, "disable_tqdm": None, "use_cpu": "teacher.device",
                   "bf16": "accelerate launch --mixed_precision (or teacher.dtype)",
                   "fp16": "accelerate launch --mixed_precision", "dataloader_num_workers": None}
DERIVED = {
    "sft": {**_DERIVED_COMMON, "num_train_epochs": "outer.epochs", "per_device_train_batch_size": "outer.batch_size",
            "gradient_accumulation_steps": "outer.grad_accum", "lr_scheduler_type": "outer.lr_scheduler",
            "max_length": "outer.max_length", "data_seed": "seed", "completion_only_loss": None},
    "grpo": {**_DERIVED_COMMON, "num_generations": "sampling.k", "per_device_train_batch_size":
             "outer.grpo_prompts_per_step", "max_steps": "outer.grpo_steps", "beta": "outer.grpo_beta",
             "max_completion_length": "sampling.max_new_tokens", "temperature": "sampling.temperature",
             "top_p": "sampling.top_p"},
}


def trainer_config_class(kind: str):
    if kind == "sft":
        from trl import SFTConfig

        return SFTConfig
    from trl import GRPOConfig

    return GRPOConfig


def check_trl_args(cfg: SealConfig) -> None:
    """Refuse `outer.trl_args` that the chosen algorithm's TRL config would reject or that SEAL sets."""
    if not cfg.outer.trl_args:
        return
    kind = "grpo" if cfg.outer.algorithm == "grpo" else "sft"
    cls = trainer_config_class(kind)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in cfg.outer.trl_args:
        if key in DERIVED[kind]:
            seal_key = DERIVED[kind][key]
            hint = f"set {seal_key} instead" if seal_key else "SEAL sets it"
            raise ConfigError(f"outer.trl_args.{key}: {cls.__name__}.{key} is derived from the SEAL config ({hint})")
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3)
            raise ConfigError(f"outer.trl_args.{key}: {cls.__name__} has no argument {key!r}"
                              + (f" (did you mean {', '.join(close)}?)" if close else ""))


def trainer_kwargs(kind: str, outer: OuterConfig, derived: dict[str, Any]) -> dict[str, Any]:
    """SEAL's arguments for the trainer config, plus `outer.trl_args` (checked at start-up).

    TRL's configs default `gradient_checkpointing` to True under that name, which transformers 5 has
    deprecated in favour of `activation_checkpointing` (transformers/training_args.py warns when only the old
    name is set): the same setting is passed under the new name, taking the user's value under either."""
    kwargs = {**derived, **outer.trl_args}
    checkpointing = kwargs.pop("gradient_checkpointing", True)
    kwargs.setdefault("activation_checkpointing", checkpointing)
    return kwargs


def reentrant_checkpointing_for_peft_zero3(args: Any, lora: bool) -> Any:
    """TRL forces reentrant activation checkpointing for a PEFT model under DeepSpeed ZeRO-3, which it
    needs for correct gradients (trl/trainer/sft_trainer.py, grpo_trainer.py; trl#2514), but writes it
    under transformers' deprecated name `gradient_checkpointing_kwargs` into a new dict after the training
    arguments resolved the aliases, so transformers 5's Trainer, which reads
    `activation_checkpointing_kwargs` (transformers/trainer.py), checkpoints non-reentrantly. Set where it
    is read; both names then hold one dict, which TRL's own write updates too. `args`: the SFTConfig or
    GRPOConfig, returned."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if lora and args.activation_checkpointing and plugin is not None and plugin.zero_stage == 3:
        kwargs = {**(args.activation_checkpointing_kwargs or {}), "use_reentrant": True}
        args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs = kwargs
    return args


def update_model(teacher: ModelConfig, lora: bool) -> ModelConfig:
    """The teacher as its update loads it. A full finetune (`outer.lora: false`) outside DeepSpeed steps
    AdamW on the weights themselves, and in bfloat16/float16 every update below the weights' resolution
    (about 0.4 % of a bfloat16 weight) is rounded away; TRL loads a model it is given by name in float32
    for that reason (trl/trainer/sft_trainer.py). Float32 then, with the launch's mixed precision as
    autocast (`precision`); the next round loads the checkpoint in `teacher.dtype` again. A LoRA update
    trains float32 adapters (peft) and DeepSpeed keeps float32 master weights: those load as configured."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    if lora or deepspeed or teacher.dtype not in ("bfloat16", "float16"):
        return teacher
    return dataclasses.replace(teacher, dtype="float32")


def precision(teacher_dtype: str, on_cpu: bool) -> dict[str, bool]:
    """`bf16` / `fp16` of the teacher update's trainer config. A launch that sets mixed precision
    (`accelerate launch --mixed_precision`, or its config file's `mixed_precision`, as every GPU config in
    recipes/accelerate/ does) decides it: transformers reads ACCELERATE_MIXED_PRECISION whenever neither
    flag is set (transformers/training_args.py), and under DeepSpeed the plugin enables that precision
    while a differing flag is refused (transformers/integrations/deepspeed.py fill_match), so a float32
    teacher under a bf16 launch stopped at the first teacher update. Without one: bf16 for a bfloat16
    teacher on GPU."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched == "fp16" and teacher_dtype == "bfloat16":
        raise ConfigError("the launch's mixed precision fp16 with teacher.dtype bfloat16: launch with "
                          "--mixed_precision bf16 (or no), or load the teacher in float32")
    if launched in ("bf16", "fp16"):
        return {"bf16": launched == "bf16", "fp16": launched == "fp16"}
    return {"bf16": not on_cpu and teacher_dtype == "bfloat16", "fp16": False}
