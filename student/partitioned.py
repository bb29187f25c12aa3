"""A student too large for one device: DeepSpeed ZeRO-3 partitions its frozen base weights across ranks.

Asked for with `inner.deepspeed: true` in teacher_student mode, and launched with a ZeRO-3 config:

    accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml recipes/seal.py \\
        --config recipes/knowledge/qwen2.5-7b-teaches-72b.yaml

The ZeRO-3 settings (parameter offload included) come from accelerate's launch config through its
`DeepSpeedPlugin`. transformers builds the model inside `deepspeed.zero.Init`, so no rank ever holds
all the weights, and `deepspeed.initialize` without an optimizer (DeepSpeed's ZeRO-Inference engine)
installs the hooks that gather a layer's weights for its forward and backward pass. The LoRA slots stay
outside DeepSpeed: every rank trains different self-edits, so nothing about them is averaged or
partitioned. Because each pass gathers from every rank, the student runs in lockstep (`Student.sync`).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

from seal.shared.config import InnerConfig, ModelConfig
from seal.shared.dist import Dist
from seal.shared.domain import Domain
from seal.shared.models import ModelLoadError, load_model, resolve, uses_chat_template
from seal.student.inner_loop import Student, lora_bank

log = logging.getLogger("seal")
LAUNCH = "accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml recipes/seal.py ..."


def zero3_config(model_cfg: ModelConfig, world: int) -> dict[str, Any]:
    """The launch's DeepSpeed config, completed for a frozen model that only runs forward and backward."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        raise ModelLoadError(f"inner.deepspeed: true needs a DeepSpeed ZeRO-3 launch: {LAUNCH}")
    from accelerate.utils import DeepSpeedPlugin
    from transformers import AutoConfig

    plugin = DeepSpeedPlugin()
    if plugin.zero_stage != 3:
        raise ModelLoadError(f"inner.deepspeed partitions the student's weights, which needs ZeRO stage 3; the "
                             f"launch config sets stage {plugin.zero_stage}: {LAUNCH}")
    text = AutoConfig.from_pretrained(resolve(model_cfg.name), revision=model_cfg.revision).get_text_config()
    hidden = text.hidden_size
    # the values transformers' Trainer would put in for "auto" (its sizes follow the hidden size)
    plugin.deepspeed_config_process(must_match=False, **{
        "train_batch_size": world, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden})
    config = copy.deepcopy(plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):  # no DeepSpeed optimizer: the LoRA slots have their own
        config.pop(key, None)
    # the weights keep the student's dtype (DeepSpeed would cast the module for bf16/fp16)
    config["bf16"] = {"enabled": model_cfg.dtype == "bfloat16"}
    config["fp16"] = {"enabled": model_cfg.dtype == "float16"}
    return config


def load_partitioned_student(inner: InnerConfig, model_cfg: ModelConfig, domain: Domain, dist: Dist) -> Student:
    """The student with its weights partitioned over all ranks; every rank must call this together."""
    import deepspeed
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    config = zero3_config(model_cfg, dist.world)
    deepspeed.init_distributed()  # reuses accelerate's process group
    hf_config = HfDeepSpeedConfig(config)  # transformers holds it weakly: only this load is partitioned
    try:
        model, tokenizer = load_model(model_cfg)
    finally:
        unset_hf_deepspeed_config()
        del hf_config
    # the LoRA slots wrap the linear layers first, so the gathering hooks sit on the wrapped modules too
    bank = lora_bank(model, inner)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    student = Student(model, tokenizer, inner, domain, uses_chat_template(model_cfg, tokenizer), bank=bank,
                      sync=dist, engine=engine)
    here = sum(p.ds_tensor.numel() for p in model.parameters() if hasattr(p, "ds_tensor"))
    total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    log.info("student %s partitioned across %d ranks by DeepSpeed ZeRO-3: %s of its %s weights on this rank",
             model_cfg.name, dist.world, f"{here:,}", f"{total:,}")
    return student
